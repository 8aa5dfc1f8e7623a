#!/usr/bin/env bash
# A rank killed mid-run on the ucx backend: every other rank must fail within 5 s of the kill with an error naming the
# dead rank (not a timeout after --timeout_s, which is 60 s here), and be gone soon after.
#
#   ucx_dead_peer_test.sh WAVEEP VICTIM_RANK VICTIM_HOST -- LAUNCHER...
#
# LAUNCHER is the mpirun command line without the program, for 4 ranks (e.g. `mpirun -np 4 --oversubscribe`, or
# `scripts/cluster.sh mpirun -np 4 --map-by ppr:2:node`). `--enable-recovery` is added so that mpirun does not kill
# the survivors itself when the victim dies: what ends them must be waveep's own detection (a lost peer is
# job-fatal: each rank that saw it prints it, then the job is aborted). Registered only for builds with the ucx backend.
set -euo pipefail
if [[ $# -lt 5 || "$4" != "--" ]]; then
  echo "usage: $0 WAVEEP VICTIM_RANK VICTIM_HOST -- LAUNCHER..." >&2
  exit 2
fi
WAVEEP="$1"
VICTIM="$2"
VICTIM_HOST="$3"
shift 4
LAUNCH=("$@")
[[ -x "$WAVEEP" ]] || { echo "FAIL [ucx dead peer]: $WAVEEP is not built" >&2; exit 1; }
WORK="$(mktemp -d)"
MARKER="--seed=$((RANDOM + 5000))"  # tells this test's ranks apart from any other waveep on the machine
cleanup() {
  pkill -KILL -f -- "waveep run .*$MARKER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
  echo "FAIL [ucx dead peer]: $*" >&2
  grep -v "generating weights" "$WORK/kill.txt" | tail -20 >&2 || true
  exit 1
}

"${LAUNCH[@]}" --enable-recovery "$WAVEEP" run --model=tiny --tokens_per_rank=256 --steps=200000 --warmup=0 \
  --timeout_s=60 --backend=ucx "$MARKER" >"$WORK/kill.txt" 2>&1 &
launcher=$!
# Kill once steps are running (rank 0's first progress line): the set-up before them also meets in plain MPI calls,
# which do not watch for dead peers.
victim=""
survivors=()
running() { [[ " $(jobs -rp | tr '\n' ' ') " == *" $1 "* ]]; }  # a background job of this shell, not yet ended
for _ in $(seq 1 900); do
  victim=""
  survivors=()
  for p in $(pgrep -f -- "$WAVEEP run .*$MARKER" 2>/dev/null); do
    r=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
    [[ -z $r ]] && continue  # mpirun itself, or the launcher script
    if [[ $r == "$VICTIM" ]]; then victim=$p; else survivors+=("$p"); fi
  done
  [[ -n $victim ]] && ((${#survivors[@]} == 3)) && grep -q "step [0-9]*/200000" "$WORK/kill.txt" && break
  running "$launcher" || fail "the run ended before the kill"
  sleep 0.1
done
grep -q "step [0-9]*/200000" "$WORK/kill.txt" || fail "the run never reached its steps"
[[ -n $victim ]] || fail "rank $VICTIM never started"
kill -KILL "$victim"
t0=$(date +%s.%N)
# Each survivor prints its own line (a lost peer is job-fatal: every rank that saw it says so, then the job is
# aborted): directly, or through a peer that gave up on an exchange because of it (its abort carries the cause).
# All three lines within 5 s of the kill, and every survivor gone within 15 s (the abort itself is Open MPI's: it
# took 0.5-3 s here).
NAMED="error: rank [0-9]+/4: .*rank $VICTIM \(host $VICTIM_HOST\) (failed|died)"
alive=("${survivors[@]}")
while :; do
  left=()
  for p in "${alive[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
  alive=("${left[@]}")
  el=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}')
  [[ -z ${named_by:-} ]] && (($(grep -cE "$NAMED" "$WORK/kill.txt" || true) >= 3)) && named_by=$el
  ((${#alive[@]} == 0)) && break
  if awk -v e="$el" 'BEGIN{exit !(e > 15)}'; then
    if command -v gdb >/dev/null; then  # where they wait, for the report
      for p in "${alive[@]}"; do
        echo "--- still running: pid $p, its threads:" >&2
        gdb -p "$p" -batch -ex "thread apply all bt 14" 2>/dev/null | grep -E "^#|^Thread" >&2 || true
      done
    fi
    fail "${#alive[@]} surviving rank(s) still running ${el} s after rank $VICTIM was killed"
  fi
  sleep 0.05
done
# mpirun --enable-recovery may stay up after the abort (it did with daemons on emulated hosts): it has no rank left.
for _ in $(seq 1 100); do running "$launcher" || break; sleep 0.1; done
if running "$launcher"; then
  pkill -KILL -P "$launcher" 2>/dev/null || true
  kill -KILL "$launcher" 2>/dev/null || true
fi
wait "$launcher" 2>/dev/null || true
{ grep -E "error:" "$WORK/kill.txt" || true; } | head -6
for r in 0 1 2 3; do
  [[ $r == "$VICTIM" ]] && continue
  grep -qE "error: rank $r/4: .*rank $VICTIM \(host $VICTIM_HOST\) (failed|died)" "$WORK/kill.txt" ||
    fail "rank $r ended without an error naming the killed rank $VICTIM (host $VICTIM_HOST)"
done
[[ -n ${named_by:-} ]] && awk -v e="$named_by" 'BEGIN{exit !(e <= 5)}' ||
  fail "the survivors named rank $VICTIM only after ${named_by:-?} s (more than 5 s)"
echo "PASS [ucx dead peer]: rank $VICTIM killed; each of the 3 others failed naming it within ${named_by} s;" \
  "all gone after ${el} s"
