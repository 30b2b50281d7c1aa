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
exec .venv/bin/python -m pytest "$@"
