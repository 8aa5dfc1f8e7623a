// Copyright 2026 The waveep Authors.
//
// kernels/gemm_heuristics_internal.h — how a grouped GEMM is launched on the GPU, decided in plain C++ so that every
// decision is unit-tested on the CPU (tests/kernels/gemm_heuristics_test.cc). The CUDA entry points
// (CudaGroupedGemmNTBf16/Fp8 with GemmBackend::kAuto) call PlanGroupedGemm with the device's SM count and follow
// the plan; the benchmark prints the plan next to each measurement.
//
//   GroupedGemmProblem p;
//   p.rows_per_group = {512, 0, 4096};   // M per expert, 0 allowed
//   p.n = 4096; p.k = 7168; p.dtype = DType::kBF16; p.sm_count = 132;
//   WAVEEP_ASSIGN_OR_RETURN(GroupedGemmPlan plan, PlanGroupedGemm(p, GemmBackend::kAuto));
//   // plan.backend, plan.tile, plan.num_ctas, plan.reason ...
//
// The choice is "least modelled time" over the backends that can run the problem. The model (GemmCostModel) counts
// output tiles, waves of tiles over the SMs, a per-tile time proportional to the tile's FLOPs at a per-backend
// efficiency, and a fixed cost per launch. Its constants are first guesses for H100 SXM, calibrated where measured
// (bench/gpu_gemm_bench.cc through scripts/gpu_check.sh; first H200 figures in docs/perf/2026-11-29-NVIDIA-H200);
// the tests pin the *decisions* at shapes where the answer does not depend on the exact constants.
// IWYU pragma: private
#ifndef WAVEEP_KERNELS_GEMM_HEURISTICS_INTERNAL_H_
#define WAVEEP_KERNELS_GEMM_HEURISTICS_INTERNAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace waveep::kernels::internal {

// Modelled costs. Times in microseconds; efficiencies are fractions of the dense tensor-core peak.
struct GemmCostModel {
  double bf16_tflops_per_sm = 989.0 / 132;   // H100 SXM dense BF16 peak / SMs
  double fp8_tflops_per_sm = 1979.0 / 132;   // dense FP8 peak / SMs
  double launch_us = 4.0;                    // host + GPU gap per library launch on one stream
  double cublaslt_efficiency = 0.75;         // wgmma kernels on full tiles
  double grouped_batched_efficiency = 0.28;  // cublasGemmGroupedBatchedEx: ~275 of 989 TFLOP/s at any size (H200)
  double sm90_efficiency = 0.70;             // our persistent kernel (experimental; unmeasured)
  double simt_efficiency = 0.02;             // CUDA-core FMA kernel: ~1/15 of the tensor peak at best (unmeasured)
  double small_tile_efficiency = 0.85;       // a 64-row tile relative to a 128-row one
};

struct GroupedGemmProblem {
  std::vector<int64_t> rows_per_group;  // M of each group (>= 0)
  int64_t n = 0;                        // output columns
  int64_t k = 0;                        // reduction depth
  DType dtype = DType::kBF16;           // kBF16 or kFP8E4M3 (inputs)
  DType c_dtype = DType::kBF16;         // output: kBF16 or kF32 (cublasGemmGroupedBatchedEx: BF16 in -> BF16 out only)
  int sm_count = 132;
  bool sm90_kernel_available = false;  // built for sm_90a and running on compute capability 9.0
  bool allow_experimental = false;     // kAuto may pick the experimental kernel (WAVEEP_GEMM_EXPERIMENTAL=1)
  GemmCostModel cost;
};

struct GemmTile {
  int m = 0, n = 0, k = 0;
  bool operator==(const GemmTile& o) const { return m == o.m && n == o.n && k == o.k; }
};

struct GroupedGemmPlan {
  GemmBackend backend = GemmBackend::kCublasLt;  // never kAuto
  // Nothing to multiply: every group is empty or n == 0. No launch at all.
  bool no_op = false;
  // k == 0: C is zero-filled (no GEMM launch).
  bool zero_fill = false;
  GemmTile tile;          // kSm90: the kernel's tile; library backends: the tile the model assumed
  int stages = 0;         // kSm90: shared-memory pipeline depth
  int num_ctas = 0;       // kSm90: persistent grid size
  int num_launches = 0;   // kernel/library launches on the stream
  int64_t num_tiles = 0;  // output tiles over all groups
  int64_t nonempty_groups = 0;
  double wave_efficiency = 0;  // useful tile slots / (waves * SMs), in (0, 1]
  double predicted_us = 0;     // the model's time for the chosen backend
  std::string reason;          // one line: why this backend and tile
};

// Plans one grouped GEMM. `requested` != kAuto forces that backend: Unavailable when it cannot run here (kSm90
// without an sm_90a build on a CC 9.0 device), InvalidArgument for combinations it does not support (kCublasGrouped
// or kSm90 with FP8, kCublasGrouped with F32 output, FP8 with k % 128 != 0 or n % 16 != 0), as for kAuto. kSimt
// takes every other problem and is never chosen by kAuto. Also
// InvalidArgument on negative sizes, no groups or sm_count < 1.
StatusOr<GroupedGemmPlan> PlanGroupedGemm(const GroupedGemmProblem& p, GemmBackend requested);

// The step between the gate+up GEMM and the down GEMM.
enum class ActivationFusion {
  kSwiGLU,               // SwiGLU to BF16, the down GEMM reads it directly (BF16 down GEMM)
  kSwiGLUThenQuantize,   // SwiGLU to BF16, then a separate FP8 quantize pass
  kFusedSwiGLUQuantize,  // one pass: SwiGLU in FP32 and FP8 quantize (CudaSwiGLUQuantizeFp8)
};
struct ActivationPlan {
  ActivationFusion fusion = ActivationFusion::kSwiGLU;
  int64_t bytes_moved = 0;  // modelled device-memory traffic of the step
  std::string reason;
};
// `down_dtype` is the down GEMM's input type; `block` the FP8 scale block; `keep_bf16_activation` when the caller
// needs the BF16 SwiGLU output as well (e.g. to verify against it). InvalidArgument on negative sizes, another
// dtype, or an FP8 block that does not divide `intermediate`.
StatusOr<ActivationPlan> PlanActivation(int64_t rows, int64_t intermediate, DType down_dtype, int block,
                                        bool keep_bf16_activation = false);

// Tile candidates of the experimental sm90 kernel (kernels/sm90_grouped_gemm.cu), smallest first.
const std::vector<GemmTile>& Sm90Tiles();
// Shared-memory pipeline depth for `tile` at `elem_bytes` per input element within the sm90 budget (227 KB less
// the epilogue's share), capped at kSm90MaxStages.
inline constexpr int kSm90MaxStages = 4;
int Sm90Stages(const GemmTile& tile, int elem_bytes);

}  // namespace waveep::kernels::internal

#endif  // WAVEEP_KERNELS_GEMM_HEURISTICS_INTERNAL_H_
