#!/usr/bin/env bash
# Scaling driver: runs `waveep bench` at np = 1, 2, 4, ... up to MAX_NP, merges the CSVs, and plots them.
#
#   scripts/scaling.sh                                  # tiny, waves 1,2,4,8, tokens 128..2048, np 1 2 4
#   MODELS=tiny,qwen3-30b-a3b TOKENS=64,256 MAX_NP=8 OUT_DIR=out/scaling scripts/scaling.sh
# Environment: MODELS, WAVES, TOKENS, MAX_NP, STEPS, WARMUP, DTYPE, ROUTING, OUT_DIR, EXTRA (more bench flags).
set -euo pipefail
source "$(dirname "$0")/common.sh"

MODELS="${MODELS:-tiny}"
WAVES="${WAVES:-1,2,4,8}"
TOKENS="${TOKENS:-128,512,2048}"
MAX_NP="${MAX_NP:-4}"
STEPS="${STEPS:-7}"
WARMUP="${WARMUP:-2}"
DTYPE="${DTYPE:-bf16}"
ROUTING="${ROUTING:-gate}"
OUT_DIR="${OUT_DIR:-$WAVEEP_ROOT/out/scaling}"
EXTRA="${EXTRA:-}"

waveep_build waveep
mkdir -p "$OUT_DIR"
WAVEEP="$WAVEEP_BUILD_DIR/bin/waveep"
merged="$OUT_DIR/bench_all.csv"
: > "$merged"
np=1
while [[ $np -le $MAX_NP ]]; do
  log "np=$np: bench --models=$MODELS --waves_list=$WAVES --tokens_list=$TOKENS"
  # shellcheck disable=SC2086
  waveep_mpirun -np "$np" "$WAVEEP" bench --models="$MODELS" --waves_list="$WAVES" --tokens_list="$TOKENS" \
    --steps="$STEPS" --warmup="$WARMUP" --dtype="$DTYPE" --routing="$ROUTING" \
    --csv="$OUT_DIR/bench_np$np.csv" --json="$OUT_DIR/bench_np$np.json" $EXTRA | tee "$OUT_DIR/bench_np$np.txt"
  if [[ ! -s "$merged" ]]; then cat "$OUT_DIR/bench_np$np.csv" > "$merged"; else tail -n +2 "$OUT_DIR/bench_np$np.csv" >> "$merged"; fi
  np=$((np * 2))
done
"$WAVEEP_ROOT/scripts/plot_bench.sh" "$merged" "$OUT_DIR"
log "results: $OUT_DIR (bench_all.csv, *.png)"
