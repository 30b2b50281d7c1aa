#!/usr/bin/env bash
# Mutation testing of the boundary modules with cosmic-ray (issue 18). Not run by scripts/test.sh
# or CI: a full run takes tens of minutes. See docs/mutation.md.
#   scripts/mutation.sh                 every target (scripts/mutation.sh --list)
#   scripts/mutation.sh access tls      some targets;  --list: what each one covers;  --report: summary only
# Work and results in mutants/ (git-ignored): <target>/result.json, report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
stamp=".venv/.installed-mutation-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,mutation]" >.venv/pip-mutation.log 2>&1 || { cat .venv/pip-mutation.log >&2; exit 1; }
    touch "$stamp"
fi
exec .venv/bin/python scripts/mutation.py "$@"
