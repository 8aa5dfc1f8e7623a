#!/usr/bin/env bash
# Reproduces docs/perf/cpu-*.md figures on a CPU machine: run step times, the wave sweep (scaling.sh), model vs
# measurement (probe + bench --cluster), and the kernel / all-to-all microbenchmarks.
#
#   scripts/perf_cpu.sh [OUT_DIR]        # default out/perf; takes ~10 minutes on 2 cores
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT="${1:-$WAVEEP_ROOT/out/perf}"
mkdir -p "$OUT"
waveep_build waveep waveep_kernels_bench waveep_comm_bench
W="$WAVEEP_BUILD_DIR/bin/waveep"
{ date -u; uname -a; lscpu | grep -E "Model name|^CPU\(s\)"; } > "$OUT/machine.txt"

log "1/4 waveep run step times"
for np in 1 2 4; do
  for dt in bf16 fp8; do
    waveep_mpirun -np $np "$W" run --quiet --model=tiny --dtype=$dt --steps=10 --warmup=2 --verify \
      --json="$OUT/run_tiny_np${np}_${dt}.json" > "$OUT/run_tiny_np${np}_${dt}.txt"
  done
done
for dt in bf16 fp8; do
  waveep_mpirun -np 2 "$W" run --quiet --model=qwen3-30b-a3b --tokens_per_rank=64 --dtype=$dt --steps=5 --warmup=1 \
    --verify --json="$OUT/run_qwen3_np2_${dt}.json" > "$OUT/run_qwen3_np2_${dt}.txt"
done

log "2/4 wave sweep at np 1, 2, 4 (scaling.sh)"
MODELS=tiny,small-i TOKENS=256,1024,4096 WAVES=1,2,4,8 STEPS=7 WARMUP=2 OUT_DIR="$OUT/scaling" \
  "$WAVEEP_ROOT/scripts/scaling.sh"

log "3/4 topology model vs measurement (probe at np 2 and 4, then bench --cluster at the same np)"
for np in 2 4; do
  waveep_mpirun -np $np "$W" topo probe --model=tiny --probe_max_bytes=$((16 << 20)) \
    --out="$OUT/cluster-np$np.json" > "$OUT/probe_np$np.txt" 2>&1
  waveep_mpirun -np $np "$W" bench --quiet --models=tiny,small-i --waves_list=1,2,4,8 --tokens_list=256,1024,4096 \
    --steps=7 --warmup=2 --cluster="$OUT/cluster-np$np.json" --csv="$OUT/model_vs_measured_np$np.csv" \
    > "$OUT/model_vs_measured_np$np.txt"
done

log "4/4 microbenchmarks"
"$WAVEEP_BUILD_DIR/bench/waveep_kernels_bench" --benchmark_min_time=0.2 > "$OUT/kernels_bench.txt" 2>&1 || true
for np in 2 4; do
  waveep_mpirun -np $np "$WAVEEP_BUILD_DIR/bench/waveep_comm_bench" --benchmark_counters_tabular=true \
    --comm_bench_max_bytes=$((16 << 20)) > "$OUT/comm_bench_np$np.txt" 2>&1 || true
done
log "done: $OUT"
