#!/usr/bin/env bash
# Idempotent set-up: system peers (setup-peers.sh), a virtualenv in .venv, the package.
#   scripts/setup.sh           runtime only
#   scripts/setup.sh test      with the test extras, and databases started
#   scripts/setup.sh test package   also the package test's tools (mmdebstrap; tests/test_package.py)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
peers_args=()
for arg in "$@"; do
    case "$arg" in
        test) extras="[test,bench]"; peers_args+=(--with-databases) ;;
        package) peers_args+=(--with-package-tools) ;;
        *) echo "setup: unknown argument '$arg' (test, package)" >&2; exit 2 ;;
    esac
done

scripts/setup-peers.sh "${peers_args[@]}"

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "setup: Python >= 3.10 is required ($("$PY" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)${extras}"
if [ ! -f "$stamp" ]; then
    log=".venv/pip-install.log"
    if ! { .venv/bin/python -m pip install -q --disable-pip-version-check -U pip &&
           .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "setup: pip install failed (log above, kept in $log)" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# testkit/ (tests, demo, benchmarks) is not in the wheel: the development venv finds it at the repo root,
# in every process it starts (python -m testkit.demo, benchmarks/*.py, test subprocesses).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$PWD" >"$site/dicomproxy-repo-root.pth"
