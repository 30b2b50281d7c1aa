#!/usr/bin/env bash
# Build what a hospital installs (docs/部署指南.md), into dist/ unless --out:
#   dicomproxy_VERSION-REV_ARCH.deb           Debian 12/13, Ubuntu 22.04/24.04 (dpkg-deb)
#   dicomproxy-VERSION-offline-ARCH.tar       wheels + install.sh, for a machine without the .deb
#
#   dicomproxy-deps-SUITE/                    with --deps SUITE: the Debian packages the .deb needs
#                                             that a minimal SUITE system lacks (offline install:
#                                             apt install ./dicomproxy-deps-SUITE/*.deb ./dicomproxy_*.deb)
#
#   scripts/package.sh [--deb] [--bundle] [--deps SUITE] [--version V] [--revision N]
#                      [--python X.Y]... [--arch amd64|arm64] [--out DIR]
#
# Neither installs a compiler or needs the network on the target: both carry every wheel dicomproxy
# and its database drivers (pyodbc for SQL Server, oracledb thin, psycopg2, PyMySQL) need, for each
# --python (default 3.10 3.11 3.12 3.13: Ubuntu 22.04, Debian 12, Ubuntu 24.04, Debian 13), built
# for the oldest glibc the wheels allow (printed; 2.31 now). The target's own Python (Debian's python3 + python3-venv) runs them;
# the .deb's postinst builds /opt/dicomproxy/venv with `pip install --no-index --find-links`.
# Building needs PyPI (pip download); wheels are cached in $DICOMPROXY_PACKAGE_CACHE
# (default ~/.cache/dicomproxy-package), a rebuild with the cache is offline.
# --version sets the Python package's version (default: pyproject.toml's), --revision the Debian
# revision (default 1). With neither --deb nor --bundle, both are built.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

want_deb=false
want_bundle=false
deps_suite=""
version=""
revision=1
pythons=()
arch=amd64
out="$repo/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) want_deb=true; shift ;;
        --bundle) want_bundle=true; shift ;;
        --deps) deps_suite=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --revision) revision=$2; shift 2 ;;
        --python) pythons+=("$2"); shift 2 ;;
        --arch) arch=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "package: unknown argument '$1' (--help)" >&2; exit 2 ;;
    esac
done
if ! $want_deb && ! $want_bundle; then want_deb=true; want_bundle=true; fi
if [ -n "$deps_suite" ] && ! $want_deb; then want_deb=true; fi
[ "${#pythons[@]}" -gt 0 ] || pythons=(3.10 3.11 3.12 3.13)
case "$arch" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "package: --arch must be amd64 or arm64" >&2; exit 2 ;;
esac
[ -n "$version" ] || version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
# Debian orders a pre-release after its release unless it is marked with "~" (0.2.0~rc1 < 0.2.0).
deb_version="$(echo "$version" | sed -E 's/(a|b|rc|\.dev)([0-9]+)/~\1\2/')-$revision"
extras="mssql,oracle,postgresql,mariadb"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
pip=("$PY" -m pip --disable-pip-version-check)
cache="${DICOMPROXY_PACKAGE_CACHE:-$HOME/.cache/dicomproxy-package}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$cache"

# 1. dicomproxy's own wheel, from a copy of the source with the version set.
mkdir -p "$work/src"
# conf/: dicomproxy/handover/example.toml (init's template) is a link to conf/dicomproxy.example.toml.
cp -r pyproject.toml README.md conf dicomproxy "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
sed -i "s/^version = \".*\"/version = \"$version\"/" "$work/src/pyproject.toml"
"${pip[@]}" wheel -q --no-deps -w "$work/dist" "$work/src" >"$work/wheel.log" 2>&1 || {
    cat "$work/wheel.log" >&2
    exit 1
}
own_wheel=$(ls "$work"/dist/dicomproxy-*.whl)

# 2. Every dependency as a binary wheel for each target Python; the cache answers first (offline).
platforms=()
[ "$arch" = amd64 ] && platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
[ "$arch" = arm64 ] && platforms+=(--platform manylinux2014_aarch64)
for minor in $(seq 17 35); do platforms+=(--platform "manylinux_2_${minor}_${machine}"); done
mkdir -p "$work/wheels"
for py in "${pythons[@]}"; do
    tag="cp${py/./}"
    dest="$cache/wheels-$arch-$tag"
    mkdir -p "$dest"
    rm -f "$dest"/dicomproxy-*.whl
    args=(download -q --only-binary=:all: --python-version "$py" --implementation cp --abi "$tag"
        "${platforms[@]}" "$own_wheel[$extras]")
    # Resolved from the cache alone, pip copies exactly the wheels this resolution uses (the cache
    # may hold older ones); only when that fails (first build, new dependency) ask PyPI.
    if ! "${pip[@]}" "${args[@]}" --no-index --find-links "$dest" -d "$work/wheels" >/dev/null 2>&1; then
        echo "package: downloading the wheels for Python $py ($arch) from PyPI"
        "${pip[@]}" "${args[@]}" -d "$dest" >"$work/download.log" 2>&1 || {
            cat "$work/download.log" >&2
            exit 1
        }
        "${pip[@]}" "${args[@]}" --no-index --find-links "$dest" -d "$work/wheels" >/dev/null
    fi
done
# The oldest glibc every wheel runs on (manylinux tags, PEP 600): the bundle's minimum system.
glibc=$("$PY" - "$work/wheels" <<'EOF'
import os, re, sys
need = (2, 5)
legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
for name in os.listdir(sys.argv[1]):
    found = []
    for tag in name[: -len(".whl")].split("-")[-1].split("."):
        m = re.match(r"manylinux_(\d+)_(\d+)_", tag)
        if m:
            found.append((int(m[1]), int(m[2])))
        elif tag.split("_")[0] in legacy:
            found.append(legacy[tag.split("_")[0]])
    if found:
        need = max(need, min(found))
print("%d.%d" % need)
EOF
)
py_min=$(printf '%s\n' "${pythons[@]}" | sort -V | head -1)
py_max=$(printf '%s\n' "${pythons[@]}" | sort -V | tail -1)
py_next="${py_max%%.*}.$((${py_max#*.} + 1))"

# The runtime folder both artefacts share: wheels, VERSION, EXTRAS, the venv builder.
runtime="$work/runtime"
mkdir -p "$runtime"
cp -r "$work/wheels" "$runtime/wheels"
echo "$version" >"$runtime/VERSION"
echo "$extras" >"$runtime/EXTRAS"
echo "package: $(ls "$work/wheels" | wc -l) wheels for Python ${pythons[*]} ($arch), glibc >= $glibc"
install -m 0755 packaging/install-venv.sh "$runtime/install-venv.sh"

# The packaged config: the example with the package's paths.
packaged_config() {
    sed -e '1s/.*/# dicomproxy configuration (Debian package) — every key, with its default; docs\/部署指南.md./' \
        -e 's|^data_dir = "var"            |data_dir = "/var/lib/dicomproxy"|' \
        -e 's|^file = ""                     # rotating log file (relative to this file.s folder); empty = stderr only|file = "/var/log/dicomproxy/dicomproxy.log"  # rotating log file; stderr (the systemd journal) always|' \
        conf/dicomproxy.example.toml
}
packaged_config >"$work/dicomproxy.toml"
for expect in '^data_dir = "/var/lib/dicomproxy"' '^file = "/var/log/dicomproxy/dicomproxy.log"' '\${DB_PASSWORD}'; do
    grep -q "$expect" "$work/dicomproxy.toml" || {
        echo "package: conf/dicomproxy.example.toml changed; the packaged config lacks $expect" >&2
        exit 1
    }
done

if $want_deb; then
    root="$work/deb"
    install -d "$root/DEBIAN" "$root/opt" "$root/etc/dicomproxy" "$root/lib/systemd/system" "$root/usr/bin" \
        "$root/usr/share/doc/dicomproxy"
    cp -r "$runtime" "$root/opt/dicomproxy"
    install -m 0640 "$work/dicomproxy.toml" "$root/etc/dicomproxy/dicomproxy.toml"
    install -m 0600 packaging/dicomproxy.env "$root/etc/dicomproxy/dicomproxy.env"
    install -m 0644 packaging/dicomproxy.service "$root/lib/systemd/system/dicomproxy.service"
    install -m 0755 packaging/dicomproxy-cli.sh "$root/usr/bin/dicomproxy"
    install -m 0644 packaging/debian/copyright README.md docs/部署指南.md conf/dicomproxy.example.toml \
        "$root/usr/share/doc/dicomproxy/"
    install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
    install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
    sed -e "s/@DEB_VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" \
        -e "s/@INSTALLED_SIZE@/$(du -sk --exclude=DEBIAN "$root" | cut -f1)/" \
        -e "s/@PYTHON_DEPENDS@/python3 (>= $py_min), python3 (<< $py_next)/" \
        -e "s/@PYTHONS@/${pythons[*]}/" packaging/debian/control.in >"$root/DEBIAN/control"
    (cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
        xargs -0 md5sum >DEBIAN/md5sums)
    deb="$out/dicomproxy_${deb_version}_${arch}.deb"
    # Wheels are compressed already: gzip or xz would save about 1 % for 10-60 s. Every dpkg reads
    # an uncompressed data.tar.
    dpkg-deb --root-owner-group -Znone --build "$root" "$deb" >/dev/null
    echo "package: $deb ($(du -h "$deb" | cut -f1))"
fi

if [ -n "$deps_suite" ]; then
    deps="$out/dicomproxy-deps-$deps_suite"
    "$repo/scripts/package-deps.sh" "$deps_suite" "$deb" "$deps"
    echo "package: $deps ($(ls "$deps" | wc -l) packages, $(du -sh "$deps" | cut -f1))"
fi

if $want_bundle; then
    name="dicomproxy-$version-offline-$arch"
    mkdir -p "$work/$name"
    cp -r "$runtime"/. "$work/$name/"
    mv "$work/$name/install-venv.sh" "$work/$name/install.sh"
    install -m 0644 conf/dicomproxy.example.toml packaging/dicomproxy.service docs/部署指南.md "$work/$name/"
    cat >"$work/$name/README.txt" <<EOF
dicomproxy $version offline bundle ($arch, Python ${pythons[*]}, glibc >= $glibc)
  ./install.sh [--prefix /opt/dicomproxy] [--python python3]
builds PREFIX/venv from wheels/ with no network; then run PREFIX/venv/bin/dicomproxy.
dicomproxy.service is the Debian package's unit (user dicomproxy, /etc/dicomproxy): adapt it.
See 部署指南.md (2.4).
EOF
    bundle="$out/$name.tar"  # not compressed, as the .deb
    tar -C "$work" -cf "$bundle" "$name"
    echo "package: $bundle ($(du -h "$bundle" | cut -f1))"
fi
