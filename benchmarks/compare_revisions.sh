#!/usr/bin/env bash
# Side by side: the relay benchmark of an earlier revision and of this checkout, alternated in one run
# on the same machine (A B A B), each with its own direct Orthanc → storescp baseline.
#   benchmarks/compare_revisions.sh REV [bench_relay.py args...]      e.g. f67386e --slices 300 --rounds 3
# The earlier revision runs from a detached worktree (removed afterwards) on this checkout's venv,
# its own code first on PYTHONPATH. Output: each run's table, labelled, on stdout; each run's progress
# and errors in $LOGDIR (default /tmp). PASSES=1 for a single A B pass. Both sides get the same pixels:
# a revision whose bench_relay knows --corpus gets --corpus $CORPUS (default synthetic, what revisions
# before issue 17 generate); set CORPUS=real only when both revisions know it.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: compare_revisions.sh REV [bench_relay args...]}; shift
old=$(mktemp -d /tmp/dicomproxy-rev.XXXXXX)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || rm -rf "$old"' EXIT
git worktree add --detach "$old" "$rev" >/dev/null
here=$(pwd)
logdir=${LOGDIR:-/tmp}
for pass in $(seq 1 "${PASSES:-2}"); do
  for tree in "$old" "$here"; do
    label=$([ "$tree" = "$here" ] && echo "this checkout ($(git rev-parse --short HEAD))" || echo "$rev")
    echo "## pass $pass: $label — $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
    log="$logdir/compare-$pass-$(basename "$tree").log"
    corpus=()
    if grep -q -- '"--corpus"' "$tree/benchmarks/bench_relay.py"; then corpus=(--corpus "${CORPUS:-synthetic}"); fi
    if ! (cd "$tree" && PYTHONPATH="$tree" "$here/.venv/bin/python" benchmarks/bench_relay.py "${corpus[@]}" "$@" 2>"$log"); then
      echo "(failed: $(tail -n 3 "$log" | tr '\n' ' '))"
    fi
    echo
  done
done
