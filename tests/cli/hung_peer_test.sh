#!/usr/bin/env bash
# hung_peer_test.sh <mpiexec> <waveep> <rank to stop> [timeout_s] [stop|kill] [ranks]
# Starts a long `waveep run` (2 ranks unless given), SIGSTOPs one rank once steps are running, and checks that the
# job ends by itself within timeout_s + 5 s: mpirun exits non-zero, and a rank printed one line naming itself and the
# exchange or reduction that timed out; with more than 2 ranks, that line must also name the stopped rank (a pending
# send/recv of an exchange, or the collective's roll call). With `kill`, the rank is SIGKILLed instead and the job must end within 5 s with the dead
# rank named (by mpirun, which sees the death first). Every process this test started is gone at the end, also when
# it fails.
set -u
mpiexec="$1" waveep="$2" victim="$3" timeout_s="${4:-4}" mode="${5:-stop}" np="${6:-2}"
log="$(mktemp)"
marker="--seed=$((RANDOM + 1000))"  # tells this test's ranks apart from any other waveep on the machine
cleanup() {
  for p in $(pgrep -f -- "$waveep run .*$marker" 2>/dev/null); do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  [[ -n ${mpid:-} ]] && kill -KILL "$mpid" 2>/dev/null
  rm -f "$log"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "---- output"; tail -30 "$log"; exit 1; }

"$mpiexec" --oversubscribe --bind-to none -np "$np" "$waveep" run --model=tiny --tokens_per_rank=256 --steps=200000 \
  --warmup=0 --timeout_s="$timeout_s" "$marker" >"$log" 2>&1 &
mpid=$!
# Wait until both ranks exist and have run steps for a moment.
pid=""
for _ in $(seq 1 100); do
  for p in $(pgrep -f -- "$waveep run .*$marker" 2>/dev/null); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$victim"; then pid=$p; fi
  done
  [[ -n $pid ]] && break
  sleep 0.1
done
[[ -n $pid ]] || fail "rank $victim never started"
sleep 2
kill -0 "$mpid" 2>/dev/null || fail "the job ended before the rank was stopped"
if [[ $mode == kill ]]; then
  kill -KILL "$pid"
  limit=5 done_to="killed"
else
  kill -STOP "$pid"
  limit=$((timeout_s + 5)) done_to="stopped"
fi
t0=$(date +%s)
deadline=$((t0 + limit))
while kill -0 "$mpid" 2>/dev/null && (($(date +%s) < deadline)); do sleep 0.2; done
if kill -0 "$mpid" 2>/dev/null; then fail "still running ${limit} s after rank $victim was $done_to (hang)"; fi
wait "$mpid"; rc=$?
dt=$(($(date +%s) - t0))
mpid=""
[[ $rc -ne 0 ]] || fail "mpirun exited 0 after rank $victim was $done_to"
if [[ $mode == kill ]]; then
  grep -E "rank $victim .*signal 9|signal 9 \(Killed\)" "$log" | head -2
  grep -Eq "rank $victim with PID [0-9]+ .*signal 9" "$log" || fail "the dead rank $victim is not named"
else
  grep -E "waveep run: error: rank [0-9]+/$np: .*timed out after" "$log" | head -3
  grep -Eq "waveep run: error: rank [0-9]+/$np: .*timed out after.*ending the job" "$log" ||
    fail "no line naming the rank and what timed out"
  if ((np > 2)); then
    grep -Eq "waveep run: error: rank [0-9]+/$np: .*timed out after.*(rank $victim did not answer|(send to|recv from) rank $victim )" \
      "$log" || fail "no line names the stopped rank $victim"
  fi
fi
echo "OK: rank $victim $done_to; the job ended after ${dt}s with exit $rc (timeout ${timeout_s}s)"
