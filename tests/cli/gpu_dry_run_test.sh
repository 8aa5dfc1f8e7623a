#!/usr/bin/env bash
# The prepared device run, checked without a GPU: scripts/gpu_bundle.sh packs this CUDA build, and
# scripts/gpu_check.sh --dry_run on the packed bundle must resolve every library, start every executable and find
# every file its steps name. Then the same with one test executable removed from the bundle: the dry run must fail
# and name it (so a renamed test or a missing binary is found here, not in a device lease).
#
#   gpu_dry_run_test.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
src="$1"
build="$2"
tmp="$(mktemp -d /tmp/waveep-gpu-dry-test.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$src/scripts/gpu_bundle.sh" --build "$build" --dest "$tmp/bundle" || fail "gpu_bundle.sh exited $?"
[[ -f "$tmp/bundle.tar.gz" && -f "$tmp/bundle/manifest.txt" ]] || fail "no packed bundle or manifest"

bash "$src/scripts/gpu_check.sh" --bundle "$tmp/bundle.tar.gz" --dry_run --out "$tmp/ok" >"$tmp/ok.log" 2>&1
rc=$?
[[ $rc -eq 0 ]] || { cat "$tmp/ok.log" >&2; fail "dry run on the full bundle exited $rc"; }
# The steps that matter most must be planned (a stage silently dropped would pass otherwise).
for s in kernels_cuda_grouped_gemm_test comm_conformance_np1 layer_np1_bf16 layer_np2_cuda_ipc_mps layer_np_invariance \
  comm_conformance_np2_mps sweep_np2_mpi_mps sm90_grouped_gemm_test memcheck_cuda_grouped_gemm; do
  grep -q "^| $s | DRY |" "$tmp/ok/summary.md" || { cat "$tmp/ok/summary.md" >&2; fail "step $s not planned"; }
done
grep -q "every library found" "$tmp/ok/summary.md" || fail "summary does not say every library was found"

# A bundle missing one executable a step names.
rm "$tmp/bundle/build/tests/kernels/kernels_cuda_grouped_gemm_test"
bash "$src/scripts/gpu_check.sh" --bundle "$tmp/bundle" --dry_run --out "$tmp/bad" >"$tmp/bad.log" 2>&1
rc=$?
[[ $rc -ne 0 ]] || fail "dry run passed with kernels_cuda_grouped_gemm_test missing"
grep -q "^| kernels_cuda_grouped_gemm_test | FAIL (missing" "$tmp/bad/summary.md" ||
  { cat "$tmp/bad/summary.md" >&2; fail "the failure does not name the missing executable"; }
echo "PASS: dry run clean on the full bundle; a missing executable fails it, named"
