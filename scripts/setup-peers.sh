#!/usr/bin/env bash
# Install the real DICOM peers the tests and the demo use (Debian packages), if missing:
#   dcmtk (storescp, findscu, movescu, getscu, echoscu, dcmqrscp, dcmdjpeg, dcmdjpls),
#   orthanc (the test PACS), orthanc-dicomweb (its DICOMweb plugin: the STOW-RS cloud of
#   tests/test_stow_orthanc.py), dicom3tools (dciodvfy validator),
#   libgdcm-tools (gdcmconv: second JPEG 2000 decoder in the transcode tests and benchmark),
#   chromium + chromium-driver (the status page tested in a real headless browser, via selenium),
#   fonts-wqy-zenhei (Chinese glyphs for the status page in headless chromium and its screenshot),
#   rsyslog + rsyslog-openssl (the ATNA audit messages received by a real syslog daemon the test
#   starts, over UDP, TCP and TLS).
# With --with-package-tools also mmdebstrap (the clean Debian root tests/test_package.py installs the
# .deb into). Start PostgreSQL / MariaDB if they are installed but stopped (--with-databases). Idempotent.
set -euo pipefail

with_databases=false
with_package_tools=false
for arg in "$@"; do
    case "$arg" in
        --with-databases) with_databases=true ;;
        --with-package-tools) with_package_tools=true ;;
        *) echo "setup-peers: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need=()
command -v storescp >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -n "$(find /usr/share/orthanc/plugins /usr/lib/orthanc -name 'libOrthancDicomWeb.so*' -print -quit 2>/dev/null)" ] ||
    need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v gdcmconv >/dev/null 2>&1 || need+=(libgdcm-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v tmux >/dev/null 2>&1 || need+=(tmux)  # tests/test_init_cli.py: init in a real terminal
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || need+=(fonts-wqy-zenhei)
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
[ -n "$(find /usr/lib -name lmnsd_ossl.so -print -quit 2>/dev/null)" ] || need+=(rsyslog-openssl)
if $with_package_tools; then
    command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
fi
if [ "${#need[@]}" -gt 0 ]; then
    echo "setup-peers: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    # --no-install-recommends keeps Orthanc from pulling in its plugins' servers.
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's orthanc package may start a system service on port 4242/8042; we run our own. Only that
# service is stopped (its pid file): the init script's fallback would kill every Orthanc on the
# machine, including those of a test run going on beside this set-up.
if [ -f /run/orthanc.pid ] && [ -f /etc/init.d/orthanc ] && kill -0 "$(cat /run/orthanc.pid)" 2>/dev/null; then
    $SUDO start-stop-daemon --stop --quiet --retry=TERM/30/KILL/5 --pidfile /run/orthanc.pid || true
fi

if $with_databases; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        echo "setup-peers: starting PostgreSQL"
        for v in $(ls /etc/postgresql 2>/dev/null); do
            $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
        done
    fi
    if [ -x /usr/sbin/mariadbd ] && ! mariadb-admin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
        echo "setup-peers: starting MariaDB"
        $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
        for _ in $(seq 1 50); do
            mariadb-admin -uroot -h127.0.0.1 ping >/dev/null 2>&1 && break
            sleep 0.2
        done
    fi
fi
