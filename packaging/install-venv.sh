#!/bin/sh
# Build the dicomproxy runtime from the wheels beside this script, with no network:
#   install-venv.sh [--prefix DIR] [--python PYTHON]
# A new DIR/venv-VERSION.XXXXXX is created with PYTHON (default python3, >= 3.10), dicomproxy and every database
# driver are installed into it by `pip install --no-index --find-links`, then the link DIR/venv is
# switched to it and older DIR/venv-* are removed. Run it again
# after the system's Python changed, e.g. after a release upgrade.
# The Debian package runs it from its postinst (/opt/dicomproxy/install-venv.sh); the offline
# bundle ships it as install.sh.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/dicomproxy
python=python3
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install-venv: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
wheels="$here/wheels"
version=$(cat "$here/VERSION")
extras=$(cat "$here/EXTRAS")

if ! command -v "$python" >/dev/null 2>&1; then
    echo "install-venv: $python not found (Debian/Ubuntu: apt install python3 python3-venv)" >&2
    exit 1
fi
tag=$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2]) if sys.version_info >= (3, 10) else sys.exit(1)') || {
    echo "install-venv: $python is $("$python" --version 2>&1); dicomproxy needs Python >= 3.10" >&2
    exit 1
}
if ! ls "$wheels"/numpy-*-"$tag"-*.whl >/dev/null 2>&1; then
    built=$(ls "$wheels" | sed -n 's/^numpy-[^-]*-\(cp[0-9]*\)-.*/\1/p' | sort -u | tr '\n' ' ')
    echo "install-venv: this package has no wheels for $("$python" --version 2>&1) ($tag); it has: $built" >&2
    exit 1
fi

mkdir -p "$prefix"
# A fresh folder each time: the running venv stays whole until the link is switched.
target=$(mktemp -d "$prefix/venv-$version.XXXXXX")
chmod 0755 "$target"
if ! "$python" -m venv "$target"; then
    echo "install-venv: '$python -m venv' failed (Debian/Ubuntu: apt install python3-venv)" >&2
    rm -rf "$target"
    exit 1
fi
# No index, no network, no pip.conf of this machine (a mirror, constraints) and no pip cache: only
# the wheels shipped here.
if ! PIP_CONFIG_FILE=/dev/null "$target/bin/python" -m pip install --quiet --no-index \
    --find-links "$wheels" --no-cache-dir --disable-pip-version-check \
    "dicomproxy[$extras]==$version"; then
    rm -rf "$target"
    echo "install-venv: pip install failed; $prefix/venv is unchanged" >&2
    exit 1
fi
ln -sfn "$(basename "$target")" "$prefix/venv.new"
mv -T "$prefix/venv.new" "$prefix/venv"
for old in "$prefix"/venv-*; do
    [ "$old" = "$target" ] || rm -rf "$old"
done
echo "install-venv: dicomproxy $version in $prefix/venv ($("$target/bin/python" --version))"
