#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; ends with pytest's summary line.
#   scripts/test.sh [pytest args...]
#   scripts/test.sh --package [pytest args...]   only the package test (tests/test_package.py, as root:
#                                                builds the .deb, installs it in a clean Debian root)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--package" ]; then
    shift
    scripts/setup.sh test package
    scripts/check
    DICOMPROXY_PACKAGE_TEST=1 exec .venv/bin/python -m pytest tests/test_package.py "$@"
fi
scripts/setup.sh test
scripts/check
# DICOMPROXY_TEST_WORKERS=2: two pytest-xdist workers, one test file per worker at a time (--dist
# loadfile: a file's module fixtures — its Orthanc, its proxy — start once). Serial by default until
# two runs on a quiet 2-core machine show it faster and without a flake (docs/testing-speed.md).
exec .venv/bin/python -m pytest -n "${DICOMPROXY_TEST_WORKERS:-0}" --dist loadfile "$@"
