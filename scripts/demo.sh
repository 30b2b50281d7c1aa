#!/usr/bin/env bash
# Set up (idempotent) and run the main job end to end with real peers:
# sample studies + SQLite exam view, Orthanc as PACS, DCMTK storescp as the cloud,
# dicomproxy serving the embedded default config. Cleans up what it started.
#   scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m testkit.demo --dir .demo "$@"
