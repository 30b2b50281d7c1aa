#!/usr/bin/env bash
# The benchmark suite in one command (not a test; see benchmarks/run_all.py for options).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python benchmarks/run_all.py "$@"
