#!/usr/bin/env bash
# `make bench`: every benchmark size on one testbed of the largest size, under the testbed lock, then
# the tables and the plot. BENCH_SIZES ("9 17 33"), BENCH_REPS (3), BENCH_OUT (bench/results), BENCH_ONLY (methods).
# Ansible (a), the reference's structure, takes minutes per run (forks 5, a fixed pause, no pipelining):
# it runs only at BENCH_SLOW_SIZES ("9"), BENCH_SLOW_REPS (1) times, so the whole run fits in 30 minutes.
# The diagnostic pdstack-cold-no-checkpoints (what writing the state after every step costs, about two
# minutes at 33 hosts) runs at BENCH_DIAG_SIZES only: none unless asked for (the results in
# bench/results were made with BENCH_DIAG_SIZES=33).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SIZES=${BENCH_SIZES:-9 17 33}
REPS=${BENCH_REPS:-3}
SLOW_SIZES=${BENCH_SLOW_SIZES:-9}
SLOW_REPS=${BENCH_SLOW_REPS:-1}
largest=$(printf '%s\n' $SIZES | sort -n | tail -n 1)
DIAG_SIZES=${BENCH_DIAG_SIZES:-}
OUT=${BENCH_OUT:-$ROOT/bench/results}
LOCK=/tmp/pdstack-testbed.lock
VENV=${PDSTACK_BENCH_VENV:-$HOME/.cache/pdstack/bench-venv}
WORK=${BENCH_WORK:-/tmp/pdstack-bench}
PY=.venv/bin/python

# ansible-core and matplotlib: minutes to download on a fresh machine, so they install while the
# testbed comes up.
bench_venv() {
  cmp -s bench/requirements.txt "$VENV/.requirements" 2>/dev/null && return 0
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r bench/requirements.txt
  cp bench/requirements.txt "$VENV/.requirements"
}

if [ "${1:-}" != --locked ]; then
  started=$(date +%s)
  # The Go-built toolchain takes minutes on a fresh machine: it builds while the packages, the venvs,
  # the testbed and the image get ready, and nothing is measured before it is done (wait_for_toolchain).
  mkdir -p "$WORK" && rm -f "$WORK/setup.rc"
  { rc=0; bash scripts/setup.sh toolchain >"$WORK/setup.log" 2>&1 || rc=$?; echo $rc >"$WORK/setup.rc"; } &
  bash scripts/setup.sh base  # what the testbed needs
  status=0
  flock "$LOCK" bash "$0" --locked || status=$?
  wait
  echo "bench: $(( $(date +%s) - started )) s in all"
  exit $status
fi

wait_for_toolchain() {
  while [ ! -s "$WORK/setup.rc" ]; do sleep 1; done
  [ "$(cat "$WORK/setup.rc")" = 0 ] || { echo "bench: building the toolchain failed:" >&2; tail -n 20 "$WORK/setup.log" >&2; exit 1; }
}

failed=0
RAW="$OUT/raw/$(date +%Y-%m-%d)"
mkdir -p "$RAW" "$WORK"
cleanup() { $PY -m testbed down >/dev/null 2>&1 || $PY -m testbed down; }
trap cleanup EXIT
# One testbed of the largest size serves every size (a size of n deploys to host1..hostn; the other
# hosts' sshd and dockerd sit idle), so each host pulls the image once, not once per size. Ours alone:
# whatever is there belongs to nobody while we hold the lock.
bench_venv >"$WORK/bench-venv.log" 2>&1 &
venv_job=$!
$PY -m testbed down >/dev/null
echo "bench: $(date +%T) testbed up, $largest hosts"
$PY -m testbed up --hosts "$largest" --devices 2
bash scripts/push-simulator-image.sh >/dev/null
echo "bench: $(date +%T) image pushed, pulling it on every host"
$PY -m bench.run --hosts "$largest" --pull-only
echo "bench: $(date +%T) image on every host"
wait $venv_job || { echo "bench: installing $VENV failed:" >&2; tail -n 20 "$WORK/bench-venv.log" >&2; exit 1; }
wait_for_toolchain
grep -h "^setup: built" "$WORK/setup.log" || true
echo "bench: $(date +%T) measuring"
for n in $(printf '%s\n' $SIZES | sort -n); do
  slow=ansible-reference,ansible-reference-one-host diag=pdstack-cold-no-checkpoints
  for s in $SLOW_SIZES; do [ "$s" != "$n" ] || slow=; done
  for s in $DIAG_SIZES; do [ "$s" != "$n" ] || diag=; done
  skip=$slow,$diag
  # A size that fails is reported and the others still run; the exit status says so at the end.
  $PY -m bench.run --hosts "$n" --reps "$REPS" --slow-reps "$SLOW_REPS" --skip "$skip" --out "$RAW" --work "$WORK/$n" \
    ${BENCH_ONLY:+--only "$BENCH_ONLY"} || { echo "bench: $n hosts failed" >&2; failed=1; }
done
echo "bench: $(date +%T) testbed down"
$PY -m testbed down
trap - EXIT
"$VENV/bin/python" -m bench.report "$RAW" "$OUT"
exit $failed
