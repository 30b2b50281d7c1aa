#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; ends with pytest's summary line.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
scripts/check
exec .venv/bin/python -m pytest "$@"
