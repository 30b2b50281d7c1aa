#!/bin/sh
# /usr/bin/dicomproxy of the Debian package: the runtime in /opt/dicomproxy/venv with the packaged
# config (/etc/dicomproxy/dicomproxy.toml unless -c or $DICOMPROXY_CONFIG names another).
# Run by root it reads the secrets in /etc/dicomproxy/dicomproxy.env and runs the command as the
# dicomproxy user, as the service does: a journal or spool file it creates stays the service's.
# `dicomproxy init` alone runs as root: it writes /etc/dicomproxy (docs/init.md).
set -e
: "${DICOMPROXY_CONFIG:=/etc/dicomproxy/dicomproxy.toml}"
export DICOMPROXY_CONFIG
if [ ! -x /opt/dicomproxy/venv/bin/dicomproxy ]; then
    echo "dicomproxy: the runtime /opt/dicomproxy/venv is missing; rebuild it: /opt/dicomproxy/install-venv.sh --python /usr/bin/python3" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    if [ "${1:-}" = init ]; then
        # init writes /etc/dicomproxy (root's) and gives what its checks create in data_dir to dicomproxy.
        exec /opt/dicomproxy/venv/bin/dicomproxy "$@"
    fi
    if [ -r /etc/dicomproxy/dicomproxy.env ]; then
        set -a
        . /etc/dicomproxy/dicomproxy.env
        set +a
    fi
    exec setpriv --reuid=dicomproxy --regid=dicomproxy --init-groups -- /opt/dicomproxy/venv/bin/dicomproxy "$@"
fi
exec /opt/dicomproxy/venv/bin/dicomproxy "$@"
