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
# Two pytest-xdist workers by default, one test file per worker at a time (--dist loadfile: a file's
# module fixtures — its Orthanc, its proxy — start once). Serially the suite keeps less than one of
# the two cores busy (its peers wait on sockets); with 2 workers 1929 tests took 721 s (docs/testing-speed.md).
# DICOMPROXY_TEST_WORKERS=0 runs it serially.
exec .venv/bin/python -m pytest -n "${DICOMPROXY_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
