#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build (Release), run a verified MoE layer on 4 MPI ranks,
# check the topology of this machine against the model, print a summary.
#
#   scripts/run.sh                 # tiny model, 4 ranks
#   NP=2 MODEL=qwen3-30b-a3b TOKENS=64 scripts/run.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"

NP="${NP:-4}"
MODEL="${MODEL:-tiny}"
TOKENS="${TOKENS:-128}"
OUT_DIR="${OUT_DIR:-$WAVEEP_ROOT/out}"

"$WAVEEP_ROOT/scripts/install_deps.sh"
waveep_build waveep
mkdir -p "$OUT_DIR"
WAVEEP="$WAVEEP_BUILD_DIR/bin/waveep"

log "running: mpirun -np $NP waveep run --model=$MODEL --tokens_per_rank=$TOKENS --verify (bf16, then fp8)"
waveep_mpirun -np "$NP" "$WAVEEP" run --model="$MODEL" --tokens_per_rank="$TOKENS" --verify \
  --json="$OUT_DIR/run_bf16.json"
waveep_mpirun -np "$NP" "$WAVEEP" run --model="$MODEL" --tokens_per_rank="$TOKENS" --verify --dtype=fp8 \
  --json="$OUT_DIR/run_fp8.json"
log "topology: probe this machine with $NP ranks, then check $MODEL against the measured links"
waveep_mpirun -np "$NP" "$WAVEEP" topo probe --model="$MODEL" --probe_max_bytes=$((4 << 20)) \
  --out="$OUT_DIR/cluster-probed.json"
"$WAVEEP" topo check --model="$MODEL" --cluster="$OUT_DIR/cluster-probed.json" --tokens_per_rank="$TOKENS" \
  --json="$OUT_DIR/topo_check.json"

python3 - "$OUT_DIR" <<'PY'
import json, sys, os
out = sys.argv[1]
print("\n==== waveep summary ====")
for name in ("run_bf16.json", "run_fp8.json"):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        continue
    j = json.load(open(p))
    print(f"{j['model']:>10} np={j['ranks']} dtype={j['dtype']:<4} waves={j['waves']} tokens/rank={j['tokens_per_rank']}: "
          f"step {j['step_ms_median']:.3f} ms, {j['tflops']:.4f} TFLOP/s, "
          f"verify {'PASS' if j.get('verify_passed') else 'FAIL'} (err {j.get('verify_max_rel_err', float('nan')):.2e} "
          f"<= {j.get('verify_tolerance', float('nan')):.2e}), checksum {j['output_checksum']}"
          + (f" (BLAS kernel {j['blas_core']})" if j.get("blas_core") else ""))
p = os.path.join(out, "topo_check.json")
if os.path.exists(p):
    t = json.load(open(p))
    worst = min(t["links"], key=lambda l: l.get("margin", float("inf"))) if t.get("links") else {}
    print(f"topology check: {t['model']} on {t['cluster']} ({t['ranks']} ranks): "
          f"{'COMM-BOUND' if t['any_comm_bound'] else 'balanced'}; worst link margin {worst.get('margin', float('nan')):.2f}x")
print(f"results: {out}/*.json")
PY
