#!/usr/bin/env bash
# The Debian packages a .deb needs that a minimal system of SUITE lacks, for an install without any
# package source (docs/部署指南.md 2.3):
#   scripts/package-deps.sh SUITE DEB OUTDIR
# mmdebstrap makes a minimal SUITE root from deb.debian.org (Essential + Priority required, what
# every Debian system has), asks its apt to download what `apt install DEB` would install there
# (Recommends too, as apt does by default) and copies out those not installed: OUTDIR gets them.
# Cached in $DICOMPROXY_PACKAGE_CACHE/deps-SUITE-KEY (KEY: the suite and DEB's Depends): building
# again is offline. The DEB's architecture must be this machine's.
set -euo pipefail
suite=$1
deb=$(realpath "$2")
outdir=$3
mirror="${DICOMPROXY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "package-deps: mmdebstrap is missing (apt install mmdebstrap, or scripts/setup.sh test package)" >&2
    exit 1
fi
arch=$(dpkg-deb --field "$deb" Architecture)
if [ "$arch" != all ] && [ "$arch" != "$(dpkg --print-architecture)" ]; then
    echo "package-deps: $deb is $arch, this machine $(dpkg --print-architecture)" >&2
    exit 1
fi
key=$(printf '%s %s %s' "$suite" "$mirror" "$(dpkg-deb --field "$deb" Depends)" | sha1sum | cut -c1-12)
cache="${DICOMPROXY_PACKAGE_CACHE:-$HOME/.cache/dicomproxy-package}/deps-$suite-$key"
if [ ! -d "$cache" ]; then
    name=$(basename "$deb")
    pick='mkdir /tmp/deps && for f in /var/cache/apt/archives/*.deb; do
        dpkg -s "$(dpkg-deb -f "$f" Package)" >/dev/null 2>&1 || cp "$f" /tmp/deps/; done'
    rm -rf "$cache.part"
    mkdir -p "$cache.part"
    mmdebstrap --variant=minbase --format=null --skip=cleanup/apt/cache \
        --customize-hook="copy-in $deb /tmp" \
        --customize-hook="chroot \"\$1\" apt-get install --download-only -y -q -o APT::Install-Recommends=true /tmp/$name" \
        --customize-hook="chroot \"\$1\" sh -c '$pick'" \
        --customize-hook="sync-out /tmp/deps $cache.part" \
        "$suite" /dev/null "$mirror" >"$cache.part.log" 2>&1 || {
        cat "$cache.part.log" >&2
        exit 1
    }
    rm -f "$cache.part.log"
    mv "$cache.part" "$cache"
fi
rm -rf "$outdir"
mkdir -p "$outdir"
cp "$cache"/*.deb "$outdir/"
