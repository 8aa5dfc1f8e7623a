// Copyright 2026 The waveep Authors.
//
// The grouped-GEMM launch heuristic is plain C++: these tests pin its decisions on the CPU. The shapes are chosen
// so the answer follows from the structure of the problem (empty work, launch-bound, one group filling the GPU,
// wave quantization), not from the third digit of a model constant.
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/gemm_heuristics_internal.h"
#include "kernels/kernels.h"

namespace waveep::kernels::internal {
namespace {

GroupedGemmProblem Problem(std::vector<int64_t> rows, int64_t n, int64_t k, DType dtype = DType::kBF16) {
  GroupedGemmProblem p;
  p.rows_per_group = std::move(rows);
  p.n = n;
  p.k = k;
  p.dtype = dtype;
  p.sm_count = 132;  // H100 SXM
  return p;
}

GroupedGemmPlan PlanOrDie(const GroupedGemmProblem& p, GemmBackend requested = GemmBackend::kAuto) {
  StatusOr<GroupedGemmPlan> plan = PlanGroupedGemm(p, requested);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : GroupedGemmPlan{};
}

TEST(GemmHeuristicsTest, BackendNames) {
  EXPECT_EQ(GemmBackendName(GemmBackend::kAuto), "auto");
  EXPECT_EQ(GemmBackendName(GemmBackend::kCublasLt), "cublaslt");
  EXPECT_EQ(GemmBackendName(GemmBackend::kCublasGrouped), "cublas_grouped");
  EXPECT_EQ(GemmBackendName(GemmBackend::kSm90), "sm90");
  EXPECT_EQ(GemmBackendName(GemmBackend::kSimt), "simt");
}

TEST(GemmHeuristicsTest, AllGroupsEmptyLaunchesNothing) {
  for (DType dtype : {DType::kBF16, DType::kFP8E4M3}) {
    const GroupedGemmPlan plan = PlanOrDie(Problem(std::vector<int64_t>(32, 0), 4096, 7168, dtype));
    EXPECT_TRUE(plan.no_op);
    EXPECT_FALSE(plan.zero_fill);
    EXPECT_EQ(plan.num_launches, 0);
    EXPECT_EQ(plan.nonempty_groups, 0);
    EXPECT_NE(plan.backend, GemmBackend::kAuto);
    EXPECT_FALSE(plan.reason.empty());
  }
  // No groups at all, and n == 0, are no-ops too.
  EXPECT_TRUE(PlanOrDie(Problem({}, 4096, 7168)).no_op);
  EXPECT_TRUE(PlanOrDie(Problem({5, 7}, 0, 7168)).no_op);
}

TEST(GemmHeuristicsTest, ZeroDepthZeroFills) {
  const GroupedGemmPlan plan = PlanOrDie(Problem({3, 0, 9}, 256, 0));
  EXPECT_FALSE(plan.no_op);
  EXPECT_TRUE(plan.zero_fill);
  EXPECT_EQ(plan.num_launches, 1);
  EXPECT_EQ(plan.nonempty_groups, 2);
}

TEST(GemmHeuristicsTest, OneHugeGroupStaysOnCublasLt) {
  for (DType dtype : {DType::kBF16, DType::kFP8E4M3}) {
    GroupedGemmProblem p = Problem({0, 65536, 0}, 4096, 7168, dtype);
    p.sm90_kernel_available = true;
    p.allow_experimental = true;  // even when the experimental kernel may be picked
    const GroupedGemmPlan plan = PlanOrDie(p);
    EXPECT_EQ(plan.backend, GemmBackend::kCublasLt) << plan.reason;
    EXPECT_EQ(plan.num_launches, 1);
    EXPECT_EQ(plan.nonempty_groups, 1);
    EXPECT_GE(plan.tile.m, 128);  // a large group gets a large tile
    EXPECT_GT(plan.wave_efficiency, 0.95);
    EXPECT_GT(plan.predicted_us, 0);
  }
}

TEST(GemmHeuristicsTest, ManyTinyGroupsUseOneGroupedLaunch) {
  // Decode-like: 32 experts with 8 rows each. Every per-group launch is memory- and launch-bound; one grouped
  // launch saves 31 launch gaps.
  const GroupedGemmPlan plan = PlanOrDie(Problem(std::vector<int64_t>(32, 8), 4096, 7168));
  EXPECT_EQ(plan.backend, GemmBackend::kCublasGrouped) << plan.reason;
  EXPECT_EQ(plan.num_launches, 1);
  EXPECT_EQ(plan.nonempty_groups, 32);
}

TEST(GemmHeuristicsTest, GroupedBatchedOnlyForBf16Output) {
  // Where one grouped launch wins for BF16 output, F32 output must stay on cuBLASLt (cuBLAS's grouped batched GEMM
  // rejects F32 C), and asking for it by name is an error, not a failed launch.
  GroupedGemmProblem p = Problem(std::vector<int64_t>(32, 8), 4096, 2048);
  ASSERT_EQ(PlanOrDie(p).backend, GemmBackend::kCublasGrouped);
  p.c_dtype = DType::kF32;
  EXPECT_EQ(PlanOrDie(p).backend, GemmBackend::kCublasLt);
  auto forced = PlanGroupedGemm(p, GemmBackend::kCublasGrouped);
  ASSERT_FALSE(forced.ok());
  EXPECT_EQ(forced.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(forced.status().message()).find("bf16 output only"), std::string::npos) << forced.status();
}

TEST(GemmHeuristicsTest, CalibratedOnH200AtV4ProShapes) {
  // Measured on an H200 (docs/perf/2026-11-29-NVIDIA-H200, bench/gpu_gemm_bench.cc, 32 experts, uniform rows):
  // cuBLAS grouped-batched wins at 8 and 32 rows per expert (30 vs 27, 117 vs 106 TFLOP/s for gate+up), per-expert
  // cuBLASLt from 128 rows per expert on (400 vs 255, 618 vs 272 TFLOP/s). The model must pick the faster one.
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{6144, 7168}, {7168, 3072}}) {
    for (const auto& [rows, want] : {std::pair<int64_t, GemmBackend>{8, GemmBackend::kCublasGrouped},
                                     {32, GemmBackend::kCublasGrouped},
                                     {128, GemmBackend::kCublasLt},
                                     {512, GemmBackend::kCublasLt},
                                     {4096, GemmBackend::kCublasLt}}) {
      const GroupedGemmPlan plan = PlanOrDie(Problem(std::vector<int64_t>(32, rows), n, k));
      EXPECT_EQ(plan.backend, want) << rows << " rows per expert, n=" << n << " k=" << k << ": " << plan.reason;
    }
  }
}

TEST(GemmHeuristicsTest, TinyKIsLaunchBound) {
  // K = 16: each GEMM is a few microseconds of work, so launches dominate and one launch wins. The sm90 kernel
  // needs full 64-deep k tiles and is never considered, even when allowed.
  GroupedGemmProblem p = Problem(std::vector<int64_t>(8, 4096), 4096, 16);
  p.sm90_kernel_available = true;
  p.allow_experimental = true;
  const GroupedGemmPlan plan = PlanOrDie(p);
  EXPECT_EQ(plan.backend, GemmBackend::kCublasGrouped) << plan.reason;
  EXPECT_EQ(PlanGroupedGemm(p, GemmBackend::kSm90).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GemmHeuristicsTest, ExperimentalKernelOnlyWhenAllowedAndAvailable) {
  // 32 experts x 256 rows: each group alone fills a fraction of the 132 SMs, so the per-group loop runs 32 partial
  // waves; a persistent kernel packs them into full ones.
  GroupedGemmProblem p = Problem(std::vector<int64_t>(32, 256), 4096, 7168);
  EXPECT_EQ(PlanOrDie(p).backend, GemmBackend::kCublasLt);  // not compiled in / not on CC 9.0
  p.sm90_kernel_available = true;
  EXPECT_EQ(PlanOrDie(p).backend, GemmBackend::kCublasLt);  // available, but not allowed by default
  p.allow_experimental = true;
  const GroupedGemmPlan plan = PlanOrDie(p);
  EXPECT_EQ(plan.backend, GemmBackend::kSm90) << plan.reason;
  EXPECT_EQ(plan.tile, (GemmTile{128, 128, 64}));
  EXPECT_EQ(plan.stages, kSm90MaxStages);
  EXPECT_EQ(plan.num_ctas, 132);  // persistent: one CTA per SM
  EXPECT_EQ(plan.num_tiles, 32 * 2 * 32);
  EXPECT_EQ(plan.num_launches, 1);
}

TEST(GemmHeuristicsTest, Sm90TileFollowsWaveQuantization) {
  // 64-row groups: a 128-row tile would be half padding, so the kernel's 64-row variant is chosen.
  GroupedGemmProblem p = Problem(std::vector<int64_t>(32, 64), 4096, 7168);
  p.sm90_kernel_available = true;
  const GroupedGemmPlan small = PlanOrDie(p, GemmBackend::kSm90);
  EXPECT_EQ(small.tile.m, 64);
  EXPECT_EQ(small.num_tiles, 32 * 32);
  // A few CTAs' worth of tiles: the grid shrinks to the tile count.
  p.rows_per_group = {64, 0, 0};
  p.n = 256;
  const GroupedGemmPlan tiny = PlanOrDie(p, GemmBackend::kSm90);
  EXPECT_EQ(tiny.num_tiles, 2);
  EXPECT_EQ(tiny.num_ctas, 2);
}

TEST(GemmHeuristicsTest, Fp8AlwaysUsesCublasLt) {
  GroupedGemmProblem p = Problem(std::vector<int64_t>(32, 8), 4096, 7168, DType::kFP8E4M3);
  p.sm90_kernel_available = true;
  p.allow_experimental = true;
  const GroupedGemmPlan plan = PlanOrDie(p);
  EXPECT_EQ(plan.backend, GemmBackend::kCublasLt) << plan.reason;
  EXPECT_EQ(plan.num_launches, 32);
  EXPECT_EQ(plan.tile.k, 128);
  EXPECT_EQ(PlanGroupedGemm(p, GemmBackend::kCublasGrouped).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanGroupedGemm(p, GemmBackend::kSm90).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GemmHeuristicsTest, Fp8ShapeRequirements) {
  // K must hold whole 128-element scale blocks; N must keep 16-byte aligned rows.
  EXPECT_EQ(PlanGroupedGemm(Problem({4}, 4096, 7000, DType::kFP8E4M3), GemmBackend::kAuto).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanGroupedGemm(Problem({4}, 4100, 7168, DType::kFP8E4M3), GemmBackend::kAuto).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Checked even when there is nothing to do, so a bad configuration fails on the first call.
  EXPECT_EQ(PlanGroupedGemm(Problem({0}, 4096, 100, DType::kFP8E4M3), GemmBackend::kAuto).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GemmHeuristicsTest, RequestedBackendIsHonouredOrRefused) {
  GroupedGemmProblem p = Problem({100, 300}, 1024, 512);
  EXPECT_EQ(PlanOrDie(p, GemmBackend::kCublasGrouped).backend, GemmBackend::kCublasGrouped);
  EXPECT_EQ(PlanOrDie(p, GemmBackend::kCublasLt).backend, GemmBackend::kCublasLt);
  EXPECT_EQ(PlanOrDie(p, GemmBackend::kCublasLt).num_launches, 2);
  EXPECT_EQ(PlanGroupedGemm(p, GemmBackend::kSm90).status().code(), absl::StatusCode::kUnavailable);
  p.sm90_kernel_available = true;
  EXPECT_EQ(PlanOrDie(p, GemmBackend::kSm90).backend, GemmBackend::kSm90);  // explicit request needs no opt-in
  p.n = 1020;                                                               // rows not 16-byte aligned for TMA
  EXPECT_EQ(PlanGroupedGemm(p, GemmBackend::kSm90).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GemmHeuristicsTest, SimtRunsAnythingWhenAskedAndIsNeverPicked) {
  // Odd shapes, BF16 or FP32 output, BF16 or FP8 input: the portable kernel takes every one, one launch per group.
  for (DType dtype : {DType::kBF16, DType::kFP8E4M3}) {
    for (DType c_dtype : {DType::kBF16, DType::kF32}) {
      GroupedGemmProblem p =
          dtype == DType::kFP8E4M3 ? Problem({0, 7, 65, 1}, 48, 256, dtype) : Problem({0, 7, 65, 1}, 50, 37, dtype);
      p.c_dtype = c_dtype;
      const GroupedGemmPlan plan = PlanOrDie(p, GemmBackend::kSimt);
      EXPECT_EQ(plan.backend, GemmBackend::kSimt) << plan.reason;
      EXPECT_EQ(plan.num_launches, 3);
      EXPECT_EQ(plan.tile, (GemmTile{64, 64, 32}));
      EXPECT_EQ(plan.num_tiles, 1 + 2 + 1);  // one column tile; 7, 65 (two row tiles) and 1 rows
      EXPECT_GT(plan.predicted_us, PlanOrDie(p, GemmBackend::kCublasLt).predicted_us);
      // Left to itself the planner never chooses it, whatever else is available.
      p.sm90_kernel_available = true;
      p.allow_experimental = true;
      EXPECT_NE(PlanOrDie(p).backend, GemmBackend::kSimt);
    }
  }
  // The FP8 layout rules are the API's, not a backend's: still refused.
  EXPECT_EQ(PlanGroupedGemm(Problem({4}, 4096, 7000, DType::kFP8E4M3), GemmBackend::kSimt).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GemmHeuristicsTest, BadProblemsAreRejected) {
  EXPECT_EQ(PlanGroupedGemm(Problem({4, -1}, 64, 64), GemmBackend::kAuto).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanGroupedGemm(Problem({4}, -64, 64), GemmBackend::kAuto).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanGroupedGemm(Problem({4}, 64, 64, DType::kF32), GemmBackend::kAuto).status().code(),
            absl::StatusCode::kInvalidArgument);
  GroupedGemmProblem p = Problem({4}, 64, 64);
  p.sm_count = 0;
  EXPECT_EQ(PlanGroupedGemm(p, GemmBackend::kAuto).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GemmHeuristicsTest, SkewedRoutingKeepsEveryRow) {
  // One hot expert and many cold ones: the plan accounts for every group's tiles, and the tile count is exactly
  // the sum over groups.
  std::vector<int64_t> rows(32, 1);
  rows[7] = 30000;
  GroupedGemmProblem p = Problem(rows, 4096, 7168);
  p.sm90_kernel_available = true;
  const GroupedGemmPlan plan = PlanOrDie(p, GemmBackend::kSm90);
  int64_t expected = 0;
  for (int64_t m : rows) expected += (m + plan.tile.m - 1) / plan.tile.m * (4096 / 128);
  EXPECT_EQ(plan.num_tiles, expected);
  EXPECT_EQ(plan.nonempty_groups, 32);
}

TEST(GemmHeuristicsTest, Sm90Stages) {
  EXPECT_EQ(Sm90Stages({128, 128, 64}, 2), kSm90MaxStages);  // 32 KB per stage
  EXPECT_EQ(Sm90Stages({64, 128, 64}, 2), kSm90MaxStages);
  EXPECT_EQ(Sm90Stages({256, 256, 128}, 2), 1);  // 128 KB per stage: one fits
  for (const GemmTile& t : Sm90Tiles()) {
    EXPECT_EQ(t.n, 128);
    EXPECT_EQ(t.k, 64);
    EXPECT_GE(Sm90Stages(t, 2), 2) << "the kernel double-buffers at least";
  }
}

TEST(GemmHeuristicsTest, ActivationFusion) {
  StatusOr<ActivationPlan> bf16 = PlanActivation(4096, 2048, DType::kBF16, 128);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->fusion, ActivationFusion::kSwiGLU);
  StatusOr<ActivationPlan> fused = PlanActivation(4096, 2048, DType::kFP8E4M3, 128);
  ASSERT_TRUE(fused.ok()) << fused.status();
  EXPECT_EQ(fused->fusion, ActivationFusion::kFusedSwiGLUQuantize);
  StatusOr<ActivationPlan> split = PlanActivation(4096, 2048, DType::kFP8E4M3, 128, /*keep_bf16_activation=*/true);
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->fusion, ActivationFusion::kSwiGLUThenQuantize);
  EXPECT_LT(fused->bytes_moved, split->bytes_moved);
  // gate_up (BF16) read once + FP8 activation + one FP32 scale per 128 values.
  EXPECT_EQ(fused->bytes_moved, 4096 * 2 * 2048 * 2 + 4096 * 2048 + 4096 * 16 * 4);
  EXPECT_EQ(PlanActivation(0, 2048, DType::kFP8E4M3, 128)->bytes_moved, 0);
  EXPECT_EQ(PlanActivation(16, 2000, DType::kFP8E4M3, 128).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanActivation(-1, 2048, DType::kBF16, 128).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanActivation(16, 2048, DType::kF32, 128).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace waveep::kernels::internal
