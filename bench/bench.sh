#!/usr/bin/env bash
# `make bench`: every benchmark size on a testbed of its own, under the testbed lock, then the table
# and the plot. BENCH_SIZES ("9 17 33"), BENCH_REPS (3), BENCH_OUT (bench/results), BENCH_ONLY (methods).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SIZES=${BENCH_SIZES:-9 17 33}
REPS=${BENCH_REPS:-3}
OUT=${BENCH_OUT:-$ROOT/bench/results}
LOCK=/tmp/pdstack-testbed.lock
VENV=${PDSTACK_BENCH_VENV:-$HOME/.cache/pdstack/bench-venv}
WORK=${BENCH_WORK:-/tmp/pdstack-bench}
PY=.venv/bin/python

if [ "${1:-}" != --locked ]; then
  # Outside the lock: tools that do not touch the testbed.
  if ! cmp -s bench/requirements.txt "$VENV/.requirements" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r bench/requirements.txt
    cp bench/requirements.txt "$VENV/.requirements"
  fi
  started=$(date +%s)
  flock "$LOCK" bash "$0" --locked
  echo "bench: $(( $(date +%s) - started )) s in all"
  exit 0
fi

RAW="$OUT/raw/$(date +%Y-%m-%d)"
mkdir -p "$RAW" "$WORK"
cleanup() { $PY -m testbed down >/dev/null 2>&1 || $PY -m testbed down; }
trap cleanup EXIT
for n in $SIZES; do
  # Our own testbed at this size: whatever is there belongs to nobody while we hold the lock.
  $PY -m testbed down >/dev/null
  echo "bench: $(date +%T) testbed up, $n hosts"
  $PY -m testbed up --hosts "$n" --devices 2
  bash scripts/push-simulator-image.sh >/dev/null
  $PY -m bench.run --hosts "$n" --reps "$REPS" --out "$RAW" --work "$WORK/$n" ${BENCH_ONLY:+--only "$BENCH_ONLY"}
  echo "bench: $(date +%T) testbed down"
  $PY -m testbed down
done
trap - EXIT
"$VENV/bin/python" -m bench.report "$RAW" "$OUT"
