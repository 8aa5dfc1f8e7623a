#!/usr/bin/env bash
# The prepared device run: everything waveep checks and measures on one GPU, in one command that fits in about
# 8 minutes on one H100/H200 with 16 cores. Build on a CPU machine and carry the bundle (scripts/gpu_bundle.sh), or
# point --build at a CUDA build made on the GPU machine.
#
#   scripts/gpu_check.sh [--bundle .gpu | --build build-gpu] [--out DIR] [--stages LIST] [--quick] [--budget_s N]
#                        [--dry_run]
#
# Stages (default: all, in this order, most important first):
#   info       the machine: GPU, driver, nvcc, torch, cores; which libraries the binaries resolve to
#   unit       GPU unit tests (kernels and the CUDA layer vs the CPU reference, CUDA streams/events, the device
#              proxy's CUDA stream gate, comm on device buffers at np 1)
#   layer      waveep run --device=cuda --verify at np 1 (bf16, fp8), and at np 2 under MPS with --backend=cuda_ipc
#              and mpi; output checksums must not depend on W, nor on np or backend (the same 384 tokens)
#   comm2      the comm conformance suite at np 2 sharing the GPU under MPS (cuda_ipc, host-staged mpi)
#   sweep      waveep bench --device=cuda wave sweep at np 2 under MPS (cuda_ipc and host-staged mpi)
#   gemm       grouped GEMM bench (V4-Pro shapes) next to torch._grouped_mm / _scaled_grouped_mm and dense cuBLAS
#   sanitizer  compute-sanitizer memcheck on every kernel test, racecheck/synccheck on the ones with shared memory
# --quick trims the GEMM bench to the uniform distribution and the sweep to one model. --budget_s N (default 450)
# skips the steps that would start after N seconds (listed as SKIP (budget)), so the run ends inside a lease.
# --dry_run needs no GPU: it resolves every executable's libraries as a real run would (the bundle's lib/, then its
# lib-fallback/ for a library this machine lacks, then the machine's CUDA folders) and lists the steps without running
# them; exit status 1 if a library stays unresolved or a step's executable is missing. Run it on the CPU machine
# before spending device time.
#
# DIR (default docs/perf/<date>-<gpu>) gets summary.md (one line per step: PASS/FAIL/SKIP, seconds), logs/*.log,
# and the JSON/CSV/markdown each stage writes. Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

bundle=""
build=""
out=""
stages="info,unit,layer,comm2,sweep,gemm,sanitizer"
quick=0
dry_run=0
budget_s=450
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bundle|--build|--out|--stages|--budget_s)
      [[ $# -ge 2 ]] || { echo "gpu_check.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;&
    --bundle) bundle="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --stages) stages="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --budget_s) budget_s="$2"; shift 2 ;;
    --dry_run) dry_run=1; shift ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for s in ${stages//,/ }; do
  case "$s" in
    info|unit|layer|comm2|sweep|gemm|sanitizer) ;;
    *) echo "gpu_check.sh: unknown stage '$s' in --stages (known: info,unit,layer,comm2,sweep,gemm,sanitizer)" >&2
       exit 2 ;;
  esac
done
[[ $budget_s =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget_s must be a whole number of seconds, got '$budget_s'" >&2; exit 2; }
if [[ $bundle == *.tar.gz ]]; then  # gpu_bundle.sh's packed bundle: unpacked beside it, under /tmp
  packed="$bundle"
  [[ -f $packed ]] || { echo "gpu_check.sh: no bundle '$packed'" >&2; exit 2; }
  unpacked="$(mktemp -d "${TMPDIR:-/tmp}/waveep-gpu-bundle.XXXXXX")"
  trap 'rm -rf "$unpacked"' EXIT  # replaced by the full cleanup below, once it exists
  tar -xzf "$packed" -C "$unpacked" || { echo "gpu_check.sh: cannot unpack '$packed'" >&2; exit 2; }
  bundle="$(find "$unpacked" -mindepth 2 -maxdepth 2 -name manifest.txt -printf '%h\n' | head -1)"
  [[ -n $bundle ]] || { echo "gpu_check.sh: '$packed' holds no gpu_bundle.sh bundle (no manifest.txt)" >&2; exit 2; }
fi
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"  # set -u: the steps pass it on with mpirun -x
if [[ -n "$bundle" ]]; then
  build="$bundle/build"
  bundle_lib="$(cd "$bundle/lib" && pwd)" || { echo "gpu_check.sh: $bundle has no lib/ (see gpu_bundle.sh)" >&2; exit 2; }
  export LD_LIBRARY_PATH="$bundle_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
[[ -n "$build" ]] || build="$ROOT/build-gpu"
build="$(cd "$build" 2>/dev/null && pwd)" || { echo "gpu_check.sh: no build folder (see --help)" >&2; exit 2; }
[[ -x "$build/bin/waveep" ]] || { echo "gpu_check.sh: $build/bin/waveep missing" >&2; exit 2; }
if [[ $dry_run -eq 1 ]]; then
  [[ -n "$out" ]] || out="$(mktemp -d /tmp/waveep-gpu-dry.XXXXXX)"
  gpu_name="dry-run"
else
  command -v nvidia-smi >/dev/null || { echo "gpu_check.sh: no nvidia-smi: not a GPU machine (--dry_run checks the bundle without one)" >&2; exit 2; }
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9_.-')"
fi
[[ -n "$out" ]] || out="$ROOT/docs/perf/$(date -u +%F)-${gpu_name:-gpu}"
mkdir -p "$out/logs"
out="$(cd "$out" && pwd)"
summary="$out/summary.md"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# Every grouped-GEMM shape cuBLASLt has no algorithm for is named in the logs (which M it refuses; it runs on the simt
# kernel instead). A value set before wins.
export WAVEEP_GEMM_VERBOSE="${WAVEEP_GEMM_VERBOSE:-1}"
failed=0
t_start=$(date +%s)

# Libraries the executables cannot resolve: first the bundle's fallbacks (UCX, libnuma: linked one by one into a
# temporary folder, so that a library the machine has — Open MPI's own UCX above all — is never shadowed), then the
# folders the GPU image keeps outside the default search path (CUDA, NCCL from a pip wheel). Until nothing changes,
# since a fallback's own needs show only once it resolves.
unresolved_libs() {
  for e in "$build"/bin/waveep "$build"/tests/*/*_test "$build"/bench/*; do [[ -x $e ]] && ldd "$e"; done 2>/dev/null |
    awk '/not found/ {print $1}' | sort -u
}
add_lib_dirs() {
  local missing lib dir pass changed fallback="" links="${TMPDIR:-/tmp}/waveep-gpu-libs.$$"
  [[ -n "$bundle" && -d "$bundle/lib-fallback" ]] && fallback="$(cd "$bundle/lib-fallback" && pwd)"
  for pass in 1 2 3 4; do  # at most 4 rounds
    missing=$(unresolved_libs)
    [[ -n "$missing" ]] || return 0
    echo "gpu_check.sh: round $pass: unresolved: $(echo $missing)" >&2
    changed=0
    for lib in $missing; do
      if [[ -n "$fallback" && -f "$fallback/$lib" ]]; then
        mkdir -p "$links"
        ln -sfn "$fallback/$lib" "$links/$lib"
        # UCX loads its transport modules from ucx/ beside the libucs it was loaded as.
        [[ $lib == libucs.so* && -d "$fallback/ucx" ]] && ln -sfn "$fallback/ucx" "$links/ucx"
        [[ ":$LD_LIBRARY_PATH:" == *":$links:"* ]] || export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$links"
        echo "gpu_check.sh: $lib: not on this machine, using the bundle's copy" >&2
        changed=1
        continue
      fi
      dir=$(find /usr/local /usr/lib /opt -name "$lib" -not -path '*/stubs/*' -not -path "$links/*" 2>/dev/null | head -1)
      if [[ -n "$dir" && ":$LD_LIBRARY_PATH:" != *":$(dirname "$dir"):"* ]]; then
        dir="$(dirname "$dir")"
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir"
        changed=1
      fi
    done
    [[ $changed -eq 1 ]] || break
  done
  for lib in $(unresolved_libs); do echo "gpu_check.sh: WARNING: $lib not found anywhere" >&2; done
}
add_lib_dirs

# --dry_run: every executable must also load and start (its libraries' symbols resolve), which ldd alone does not show.
load_check() {
  local e arg
  for e in "$build"/bin/waveep "$build"/tests/*/*_test "$build"/bench/*; do
    [[ -x $e ]] || continue
    case "$e" in *_test) arg=--gtest_list_tests ;; *) arg=--help ;; esac
    if ! timeout 20 "$e" "$arg" >/dev/null 2>"$out/logs/load_$(basename "$e").log"; then
      printf '| load %s | FAIL (%s: see logs/load_%s.log) | 0 | `%s %s` |\n' "$(basename "$e")" "$arg" \
        "$(basename "$e")" "$e" "$arg" >>"$summary"
      echo "   load $(basename "$e"): FAIL: $(head -2 "$out/logs/load_$(basename "$e").log")" >&2
      failed=1
    fi
  done
}

has_stage() { [[ ",$stages," == *",$1,"* ]]; }
# step NAME TIMEOUT_S CMD...: runs CMD with a deadline, logs to logs/NAME.log, one summary line.
step() {
  local name="$1" limit="$2"; shift 2
  local log="$out/logs/$name.log" t0 rc verdict
  if [[ $dry_run -eq 1 ]]; then  # every file of ours the step names must be there (tools of the GPU image need not)
    local arg missing=""
    for arg in "$@"; do
      [[ ($arg == "$build"/* || $arg == "$ROOT"/*) && $arg != "$out"/* && ! -e $arg ]] && missing+=" $arg"
    done
    if [[ -z $missing ]]; then verdict="DRY"; else verdict="FAIL (missing:$missing)"; failed=1; fi
    printf '| %s | %s | 0 | `%s` |\n' "$name" "$verdict" "$*" >>"$summary"
    echo "   $name: $verdict  ($limit s)  $*" >&2
    return 0
  fi
  if (( $(date +%s) - t_start > budget_s )); then
    printf '| %s | SKIP (budget %ss) | 0 | `%s` |\n' "$name" "$budget_s" "$*" >>"$summary"
    return 0
  fi
  # A step that starts near the end of the budget gets only what is left of budget + 60 s, so the whole run stays
  # inside a lease's per-command limit (--budget_s 450: about 520 s at most, kill grace included).
  local left=$((budget_s + 60 - ($(date +%s) - t_start)))
  if ((left < 15)); then
    printf '| %s | SKIP (budget %ss) | 0 | `%s` |\n' "$name" "$budget_s" "$*" >>"$summary"
    return 0
  fi
  ((limit > left)) && limit=$left
  t0=$(date +%s.%N)
  echo "== $name: $*" | tee "$log" >&2
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  case $rc in
    0) verdict=PASS ;;
    124|137) verdict="FAIL (timeout ${limit}s)"; failed=1 ;;
    77) verdict=SKIP ;;
    *) verdict="FAIL (rc $rc)"; failed=1 ;;
  esac
  printf '| %s | %s | %s | `%s` |\n' "$name" "$verdict" "$dt" "$*" >>"$summary"
  echo "   $name: $verdict in ${dt}s" >&2
  [[ $verdict == PASS ]] || tail -25 "$log" >&2
  return 0
}
# MPS: started once, before the first np 2 stage, stopped once after the last (restarting between stages raced the
# old daemon's exit). A failed start is a summary line, and the np 2 steps then run without MPS (named so in it).
mps_on=0
mps_pipe=/tmp/waveep-mps
mps_start() {
  [[ $mps_on -eq 1 || $dry_run -eq 1 ]] && return 0
  export CUDA_MPS_PIPE_DIRECTORY="$mps_pipe" CUDA_MPS_LOG_DIRECTORY="$out/logs/mps"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if timeout 20 nvidia-cuda-mps-control -d >"$out/logs/mps_start.log" 2>&1; then
    mps_on=1
    echo "MPS started" >&2
  else
    printf '| mps_start | FAIL (see logs/mps_start.log; np 2 steps ran without MPS) | 0 | `nvidia-cuda-mps-control -d` |\n' >>"$summary"
    failed=1
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
}
mps_stop() {
  [[ $mps_on -eq 1 ]] || return 0
  echo quit | CUDA_MPS_PIPE_DIRECTORY="$mps_pipe" timeout 20 nvidia-cuda-mps-control >/dev/null 2>&1
  local i
  for i in $(seq 1 20); do pgrep -x nvidia-cuda-mps-control >/dev/null || break; sleep 0.5; done
  mps_on=0
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
}
trap 'mps_stop >/dev/null 2>&1; rm -rf "${TMPDIR:-/tmp}/waveep-gpu-libs.$$" ${unpacked:+"$unpacked"}' EXIT
waveep="$build/bin/waveep"
# 32 hardware queues instead of 8, so that a stream waiting on the device proxy's release flag never shares a queue
# with the proxy's copy streams (the runtime sets the same before its first CUDA call; exported here for mpirun -x).
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-32}"
# np 2 on one GPU: both ranks bind cuda:0 (local rank modulo the GPUs) and share it through MPS.
MPIRUN2=(mpirun -np 2 --bind-to none -x LD_LIBRARY_PATH -x CUDA_MPS_PIPE_DIRECTORY -x CUDA_DEVICE_MAX_CONNECTIONS)

{
  echo "# waveep on $([[ $dry_run -eq 1 ]] && echo "no GPU (dry run)" || nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo
  echo "$(date -u +%FT%TZ); stages: $stages; build: $build"
  [[ -f "${bundle:-/nonexistent}/manifest.txt" ]] && sed -n '1,3p' "$bundle/manifest.txt" | sed 's/^/    /'
  echo
  echo "| step | result | seconds | command |"
  echo "|---|---|---|---|"
} >"$summary"
# Executables the stages need: one a stage's loop would skip when absent (renamed, not built) fails the run here
# instead of going unnoticed.
required=(bin/waveep tests/kernels/kernels_cuda_grouped_gemm_test tests/kernels/kernels_cuda_gating_test
  tests/kernels/kernels_cuda_permute_test tests/runtime/runtime_stream_test tests/ep/ep_moe_layer_test
  tests/comm/comm_conformance_test tests/comm/comm_device_proxy_test)
grep -q '^WAVEEP_BUILD_BENCH:BOOL=OFF' "$build/CMakeCache.txt" 2>/dev/null || required+=(bench/waveep_gpu_gemm_bench)
for e in "${required[@]}"; do
  [[ -x "$build/$e" ]] && continue
  printf '| %s | FAIL (missing from %s) | 0 | |\n' "$(basename "$e")" "$build" >>"$summary"
  echo "gpu_check.sh: $build/$e missing" >&2
  failed=1
done

[[ $dry_run -eq 1 ]] && load_check
if has_stage info; then
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap --format=csv
    nvcc --version 2>/dev/null | tail -2
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
    mpirun --version 2>&1 | head -1
    echo "cores $(nproc)"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd "$waveep"
  } >"$out/logs/info.log" 2>&1
  grep -q '=> not found' "$out/logs/info.log" && echo "| info | FAIL (unresolved libraries, see logs/info.log) | 0 | ldd |" >>"$summary" && failed=1
fi

if has_stage unit; then
  for t in "$build"/tests/kernels/kernels_cuda_*_test "$build"/tests/kernels/kernels_gemm_heuristics_test \
           "$build"/tests/runtime/runtime_stream_test "$build"/tests/comm/comm_device_proxy_test \
           "$build"/tests/ep/ep_*_test; do
    # The experimental sm90 kernel's tests run apart (gemm stage): a hang or fault there must not cost the others.
    [[ -x $t ]] && step "$(basename "$t")" 90 "$t" --gtest_brief=1 '--gtest_filter=-*Sm90*'
  done
  [[ -x "$build/tests/comm/comm_conformance_test" ]] &&
    step comm_conformance_np1 90 mpirun -np 1 -x LD_LIBRARY_PATH -x CUDA_DEVICE_MAX_CONNECTIONS "$build/tests/comm/comm_conformance_test" --gtest_brief=1
fi

# Runs the layer at every W and checks that the output checksum does not depend on W.
layer_checksums() {  # name np backend args...
  local name="$1" np="$2" backend="$3"; shift 3
  local sums=() w json
  for w in 1 2 4; do
    json="$out/layer_${name}_w$w.json"
    if [[ $np -eq 1 ]]; then
      "$waveep" run --device=cuda --backend="$backend" --waves=$w --verify --json="$json" "$@" || return 1
    else
      mpirun -np 2 --bind-to none -x LD_LIBRARY_PATH -x CUDA_MPS_PIPE_DIRECTORY -x CUDA_DEVICE_MAX_CONNECTIONS "$waveep" run --device=cuda --backend="$backend" --waves=$w --verify --json="$json" "$@" || return 1
    fi
    sums+=("$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['output_checksum'])" "$json")")
  done
  echo "checksums by W (1 2 4): ${sums[*]}"
  [[ $(printf '%s\n' "${sums[@]}" | sort -u | wc -l) -eq 1 ]] || { echo "checksum depends on W"; return 1; }
  echo "${sums[0]}" >"$out/layer_$name.sum"
}
# The same global tokens at np 1 and np 2 (384 either way) must give the same checksum. 384 = 3 x 128 puts rank 1's
# first token (192) and both ranks' shared-expert splits inside a 128-row block: the padded, cut blocks are compared.
layer_np_invariance() {
  local f sums=()
  for f in "$@"; do
    [[ -f "$out/layer_$f.sum" ]] || { echo "no checksum from layer_$f (its step failed)"; return 1; }
    sums+=("$f=$(cat "$out/layer_$f.sum")")
  done
  echo "checksums by run: ${sums[*]}"
  [[ $(printf '%s\n' "${sums[@]#*=}" | sort -u | wc -l) -eq 1 ]] || { echo "checksum depends on np or backend"; return 1; }
}
if has_stage layer; then
  rm -f "$out"/layer_*.sum  # a step that fails this time must not leave an earlier run's checksum to compare
  export -f layer_checksums layer_np_invariance
  export waveep out
  for dt in bf16 fp8; do
    step "layer_np1_$dt" 120 bash -c "layer_checksums np1_$dt 1 mpi --model=tiny --tokens_per_rank=384 --dtype=$dt --steps=3"
  done
  mps_start
  for be in cuda_ipc mpi; do
    step "layer_np2_${be}_mps" 150 bash -c \
      "layer_checksums np2_$be 2 $be --model=tiny --tokens_per_rank=192 --dtype=bf16 --steps=3"
  done
  step layer_np_invariance 5 bash -c "layer_np_invariance np1_bf16 np2_cuda_ipc np2_mpi"
fi

if has_stage comm2; then
  mps_start
  # The ucx backends take host memory only; CI covers them at np 2 and 4 (their timeout cases alone take ~30 s).
  # nccl refuses two ranks on one GPU (FailedPrecondition, by design); it ran at np 1 in the unit stage.
  step comm_conformance_np2_mps 150 "${MPIRUN2[@]}" "$build/tests/comm/comm_conformance_test" --gtest_brief=1 \
    '--gtest_filter=-*/ucx:*/ucx_put:*/nccl'
fi

if has_stage sweep; then
  mps_start
  models="mixtral-8x7b,qwen3-30b-a3b"
  [[ $quick -eq 1 ]] && models="mixtral-8x7b"
  for be in cuda_ipc mpi; do
    step "sweep_np2_${be}_mps" 150 "${MPIRUN2[@]}" "$waveep" bench --device=cuda --backend="$be" --models="$models" \
      --tokens_list=4096,16384 --waves_list=1,2,4,8 --csv="$out/sweep_np2_$be.csv" --json="$out/sweep_np2_$be.json"
  done
fi
mps_stop  # the GEMM and sanitizer stages run alone on the GPU

if has_stage gemm && [[ -x "$build/bench/waveep_gpu_gemm_bench" ]]; then
  # Every dense reference and the grouped GEMM through the library backends (the experimental sm90 kernel is checked
  # by the unit test, and timed only with WAVEEP_GEMM_EXPERIMENTAL=1 by hand).
  filter='V4-Pro/(gate_up|down)/(bf16|fp8)/(rows:|(uniform|skewed)/rows:[0-9]+/(auto|cublaslt|cublas_grouped))'
  [[ $quick -eq 1 ]] && filter='V4-Pro/(gate_up|down)/(bf16|fp8)/(rows:|uniform/rows:[0-9]+/(auto|cublaslt|cublas_grouped))'
  step gemm_bench_v4pro 200 "$build/bench/waveep_gpu_gemm_bench" "--benchmark_filter=$filter" \
    --benchmark_format=json "--benchmark_out=$out/gemm_v4pro.json" --benchmark_counters_tabular=true
  # The experimental persistent wgmma kernel (sm_90a builds only), checked and timed apart so that a hang cannot cost
  # the rest; timed only when its correctness tests passed.
  step sm90_grouped_gemm_test 45 "$build/tests/kernels/kernels_cuda_grouped_gemm_test" --gtest_brief=1 \
    '--gtest_filter=*Sm90*'
  grep -q '^| sm90_grouped_gemm_test | FAIL' "$summary" || step gemm_bench_v4pro_sm90 60 env WAVEEP_GEMM_EXPERIMENTAL=1 "$build/bench/waveep_gpu_gemm_bench" \
    '--benchmark_filter=V4-Pro/(gate_up|down)/bf16/uniform/rows:[0-9]+/sm90' --benchmark_format=json \
    "--benchmark_out=$out/gemm_v4pro_sm90.json"
  dists=(uniform skewed)
  [[ $quick -eq 1 ]] && dists=(uniform)
  step gemm_vs_torch 90 python3 "$ROOT/scripts/gpu_torch_compare.py" --ours "$out/gemm_v4pro.json" \
    "$out/gemm_v4pro_sm90.json" --models V4-Pro --dists "${dists[@]}" --markdown "$out/gemm_v4pro.md"
fi

# compute-sanitizer ships with the toolkit, which is not always on PATH.
if has_stage sanitizer && ! command -v compute-sanitizer >/dev/null && [[ -x /usr/local/cuda/bin/compute-sanitizer ]]; then
  export PATH="$PATH:/usr/local/cuda/bin"
fi
if has_stage sanitizer && ! command -v compute-sanitizer >/dev/null && [[ $dry_run -eq 0 ]]; then
  printf '| sanitizer | SKIP (no compute-sanitizer on PATH or in /usr/local/cuda/bin) | 0 | |\n' >>"$summary"
fi
if has_stage sanitizer && { command -v compute-sanitizer >/dev/null || [[ $dry_run -eq 1 ]]; }; then
  for t in cuda_gating cuda_permute cuda_quant cuda_swiglu cuda_combine cuda_convert; do
    exe="$build/tests/kernels/kernels_${t}_test"
    [[ -x $exe ]] || continue
    step "memcheck_$t" 120 compute-sanitizer --tool memcheck --error-exitcode 1 "$exe" --gtest_brief=1
  done
  for t in cuda_gating cuda_permute; do
    exe="$build/tests/kernels/kernels_${t}_test"
    [[ -x $exe ]] || continue
    step "racecheck_$t" 120 compute-sanitizer --tool racecheck --error-exitcode 1 "$exe" --gtest_brief=1
    step "synccheck_$t" 120 compute-sanitizer --tool synccheck --error-exitcode 1 "$exe" --gtest_brief=1
  done
  exe="$build/tests/kernels/kernels_cuda_grouped_gemm_test"
  if [[ -x $exe ]]; then
    step memcheck_cuda_grouped_gemm 180 compute-sanitizer --tool memcheck --error-exitcode 1 "$exe" \
      --gtest_brief=1 --gtest_filter='*Degenerate*:*Bad*:*Small*:*Odd*-*Sm90*'
    # The simt kernel stages operands in shared memory (the odd-shape test runs it, next to cuBLASLt).
    step racecheck_cuda_grouped_gemm_odd 120 compute-sanitizer --tool racecheck --error-exitcode 1 "$exe" \
      --gtest_brief=1 --gtest_filter='*Odd*'
  fi
fi

echo >>"$summary"
if [[ $dry_run -eq 1 ]]; then
  echo "dry run: $([[ $failed -eq 0 ]] && echo "every step's files and every library found" || echo 'SOMETHING IS MISSING')" >>"$summary"
else
  echo "total $(( $(date +%s) - t_start )) s; $([[ $failed -eq 0 ]] && echo 'all steps passed' || echo 'SOME STEPS FAILED')" >>"$summary"
fi
cat "$summary" >&2
exit $failed
