#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; ends with pytest's summary line.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/check
# Two workers (pytest-xdist), one test file per worker at a time (--dist loadfile: a file's module
# fixtures — its Orthanc, its proxy — start once). The suite waits on peers, subprocesses and timers
# much of the time, so a second worker uses the second core. DICOMPROXY_TEST_WORKERS=0: serial.
exec .venv/bin/python -m pytest -n "${DICOMPROXY_TEST_WORKERS:-2}" --dist loadfile "$@"
