// Copyright 2026 The waveep Authors.
//
// Launch heuristics for the grouped GEMM: a small cost model (tiles, waves over the SMs, per-tile time, launch
// cost, and a memory floor) evaluated for every backend that can run the problem; the fastest wins, with a 10%
// margin in favour of the library (cuBLASLt) so that model noise does not flip the choice.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/gemm_heuristics_internal.h"
#include "kernels/kernels.h"

namespace waveep::kernels {

absl::string_view GemmBackendName(GemmBackend backend) {
  switch (backend) {
    case GemmBackend::kAuto:
      return "auto";
    case GemmBackend::kCublasLt:
      return "cublaslt";
    case GemmBackend::kCublasGrouped:
      return "cublas_grouped";
    case GemmBackend::kSm90:
      return "sm90";
    case GemmBackend::kSimt:
      return "simt";
  }
  return "unknown";
}

namespace internal {
namespace {

// A backend only replaces the library when the model says it is at least this much faster.
constexpr double kSwitchMargin = 0.9;
constexpr double kHbmGbps = 3350.0;  // H100 SXM; only sets a floor that every backend shares
constexpr int kSm90SmemBytes = 227 * 1024;
constexpr int kSm90ReservedSmemBytes = 1024;  // mbarriers and the tile scheduler's slots

struct TileOption {
  GemmTile tile;
  double efficiency;  // relative to the backend's full-tile efficiency
};

// Tiles the libraries choose between (modelled; cuBLASLt has more, and split-K, which the 64x64 option stands in
// for when a group is too small to fill the GPU).
const std::vector<TileOption>& LibraryTiles(int tile_k) {
  static const std::vector<TileOption> bf16 = {
      {{64, 64, 64}, 0.70}, {{64, 128, 64}, 0.85}, {{128, 128, 64}, 1.0}, {{128, 256, 64}, 1.0}};
  static const std::vector<TileOption> fp8 = {
      {{64, 64, 128}, 0.70}, {{64, 128, 128}, 0.85}, {{128, 128, 128}, 1.0}, {{128, 256, 128}, 1.0}};
  return tile_k == 64 ? bf16 : fp8;
}

const std::vector<TileOption>& GroupedBatchedTiles() {
  static const std::vector<TileOption> tiles = {{{64, 128, 64}, 0.85}, {{128, 128, 64}, 1.0}};
  return tiles;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t TilesOf(int64_t m, int64_t n, const GemmTile& t) { return CeilDiv(m, t.m) * CeilDiv(n, t.n); }

// Time of one output tile on one SM.
double TileUs(const GemmTile& t, int64_t k, double tflops_per_sm, double efficiency) {
  return 2.0 * t.m * t.n * static_cast<double>(k) / (tflops_per_sm * 1e12 * efficiency) * 1e6;
}

// Device-memory floor of one GEMM: read A and B once, write C once (BF16 output assumed).
double MemoryUs(int64_t m, int64_t n, int64_t k, int elem_bytes) {
  const double bytes = static_cast<double>(elem_bytes) * (m * k + n * k) + 2.0 * m * n;
  return bytes / (kHbmGbps * 1e3);
}

struct Estimate {
  double us = std::numeric_limits<double>::infinity();
  GemmTile tile;
  int64_t num_tiles = 0;
  double wave_efficiency = 0;
  int num_launches = 0;
};

// The simt kernel's tile (kernels/simt_grouped_gemm.cu).
const std::vector<TileOption>& SimtTiles() {
  static const std::vector<TileOption> tiles = {{{64, 64, 32}, 1.0}};
  return tiles;
}

// One launch per non-empty group; each group gets its own best tile.
Estimate EstimatePerGroup(const GroupedGemmProblem& p, const std::vector<TileOption>& options, double tflops_per_sm,
                          double efficiency, int elem_bytes) {
  Estimate e;
  e.us = 0;
  double used_slots = 0, total_slots = 0;
  int64_t largest = -1;
  for (int64_t m : p.rows_per_group) {
    if (m == 0) continue;
    double best_us = std::numeric_limits<double>::infinity();
    TileOption best{};
    for (const TileOption& o : options) {
      const int64_t tiles = TilesOf(m, p.n, o.tile);
      const double us = CeilDiv(tiles, p.sm_count) * TileUs(o.tile, p.k, tflops_per_sm, efficiency * o.efficiency);
      if (us < best_us) best_us = us, best = o;
    }
    const int64_t tiles = TilesOf(m, p.n, best.tile);
    e.us += std::max(best_us, MemoryUs(m, p.n, p.k, elem_bytes)) + p.cost.launch_us;
    e.num_tiles += tiles;
    used_slots += static_cast<double>(tiles);
    total_slots += static_cast<double>(CeilDiv(tiles, p.sm_count) * p.sm_count);
    ++e.num_launches;
    if (m > largest) largest = m, e.tile = best.tile;
  }
  e.wave_efficiency = total_slots > 0 ? used_slots / total_slots : 0;
  return e;
}

// One launch whose tiles from all groups share the SMs (a persistent kernel or a grouped library kernel).
Estimate EstimateSingleLaunch(const GroupedGemmProblem& p, const std::vector<TileOption>& tiles, double tflops_per_sm,
                              double efficiency, int elem_bytes) {
  double memory_us = 0;
  for (int64_t m : p.rows_per_group) {
    if (m > 0) memory_us += MemoryUs(m, p.n, p.k, elem_bytes);
  }
  Estimate e;
  double best_compute_us = std::numeric_limits<double>::infinity();
  for (const TileOption& o : tiles) {
    int64_t num_tiles = 0;
    for (int64_t m : p.rows_per_group) num_tiles += TilesOf(m, p.n, o.tile);
    const int64_t waves = CeilDiv(num_tiles, p.sm_count);
    const double us = waves * TileUs(o.tile, p.k, tflops_per_sm, efficiency * o.efficiency);
    const double total = std::max(us, memory_us) + p.cost.launch_us;
    // When the memory floor makes totals equal, the tile with less padded compute wins (it leaves the SMs free
    // sooner); equal on both counts, the larger tile (later in the list), which re-reads A and B less often.
    if (total < e.us || (total == e.us && us <= best_compute_us)) {
      best_compute_us = us;
      e.us = total;
      e.tile = o.tile;
      e.num_tiles = num_tiles;
      e.wave_efficiency = static_cast<double>(num_tiles) / static_cast<double>(waves * p.sm_count);
    }
  }
  e.num_launches = 1;
  return e;
}

std::vector<TileOption> Sm90TileOptions() {
  std::vector<TileOption> options;
  for (const GemmTile& t : Sm90Tiles()) options.push_back({t, t.m == 64 ? 0.85 : 1.0});
  return options;
}

}  // namespace

const std::vector<GemmTile>& Sm90Tiles() {
  // NOTES: must match the instantiations in kernels/sm90_grouped_gemm.cu (one or two consumer warpgroups).
  static const std::vector<GemmTile> tiles = {{64, 128, 64}, {128, 128, 64}};
  return tiles;
}

int Sm90Stages(const GemmTile& tile, int elem_bytes) {
  const int stage_bytes = (tile.m + tile.n) * tile.k * elem_bytes;
  const int stages = (kSm90SmemBytes - kSm90ReservedSmemBytes) / stage_bytes;
  return std::min(stages, kSm90MaxStages);
}

StatusOr<GroupedGemmPlan> PlanGroupedGemm(const GroupedGemmProblem& p, GemmBackend requested) {
  const bool fp8 = p.dtype == DType::kFP8E4M3;
  if (!fp8 && p.dtype != DType::kBF16)
    return absl::InvalidArgumentError(
        absl::StrCat("grouped GEMM: input dtype must be bf16 or fp8, got ", DTypeName(p.dtype)));
  if (p.n < 0 || p.k < 0)
    return absl::InvalidArgumentError(absl::StrCat("grouped GEMM: n and k must be >= 0, got ", p.n, ", ", p.k));
  if (p.sm_count < 1) return absl::InvalidArgumentError(absl::StrCat("grouped GEMM: sm_count ", p.sm_count, " < 1"));
  for (size_t g = 0; g < p.rows_per_group.size(); ++g) {
    if (p.rows_per_group[g] < 0)
      return absl::InvalidArgumentError(
          absl::StrCat("grouped GEMM: group ", g, " has ", p.rows_per_group[g], " rows (< 0)"));
  }
  if (fp8 && (p.k % 128 != 0 || p.n % 16 != 0))
    return absl::InvalidArgumentError(absl::StrCat(
        "grouped GEMM (fp8): k must be a multiple of 128 and n of 16 (scale blocks, alignment), got k=", p.k,
        ", n=", p.n));
  if (fp8 && (requested == GemmBackend::kCublasGrouped || requested == GemmBackend::kSm90))
    return absl::InvalidArgumentError(
        absl::StrCat("grouped GEMM: backend ", GemmBackendName(requested), " supports bf16 only"));
  // cuBLAS's grouped batched GEMM takes BF16 A/B with BF16 C only ("not supported" for F32 C, seen on an H200 with
  // cuBLAS 13; its documented type table agrees).
  const bool grouped_ok = !fp8 && p.c_dtype == DType::kBF16;
  if (requested == GemmBackend::kCublasGrouped && !grouped_ok)
    return absl::InvalidArgumentError(
        absl::StrCat("grouped GEMM: backend cublas_grouped writes bf16 output only, not ", DTypeName(p.c_dtype)));
  const bool sm90_shape_ok = p.k % 64 == 0 && p.n % 8 == 0;
  if (requested == GemmBackend::kSm90 && !p.sm90_kernel_available)
    return absl::UnavailableError(
        "grouped GEMM: the sm90 kernel needs a build with CMAKE_CUDA_ARCHITECTURES containing 90a and a compute "
        "capability 9.0 device");
  if (requested == GemmBackend::kSm90 && !sm90_shape_ok)
    return absl::InvalidArgumentError(
        absl::StrCat("grouped GEMM: the sm90 kernel needs k % 64 == 0 and n % 8 == 0, got k=", p.k, ", n=", p.n));

  GroupedGemmPlan plan;
  int64_t total_rows = 0;
  for (int64_t m : p.rows_per_group) {
    total_rows += m;
    plan.nonempty_groups += m > 0 ? 1 : 0;
  }
  plan.backend = requested == GemmBackend::kAuto ? GemmBackend::kCublasLt : requested;
  if (total_rows == 0 || p.n == 0) {
    plan.no_op = true;
    plan.reason = total_rows == 0 ? "every group is empty: nothing to launch" : "n == 0: nothing to launch";
    return plan;
  }
  if (p.k == 0) {
    plan.zero_fill = true;
    plan.num_launches = 1;
    plan.reason = "k == 0: C is zero-filled";
    return plan;
  }

  const int tile_k = fp8 ? 128 : 64;
  const int elem_bytes = fp8 ? 1 : 2;
  const double tflops = fp8 ? p.cost.fp8_tflops_per_sm : p.cost.bf16_tflops_per_sm;
  const Estimate lt = EstimatePerGroup(p, LibraryTiles(tile_k), tflops, p.cost.cublaslt_efficiency, elem_bytes);
  Estimate grouped, sm90, simt;
  if (requested == GemmBackend::kSimt)
    simt = EstimatePerGroup(p, SimtTiles(), tflops, p.cost.simt_efficiency, elem_bytes);
  if (grouped_ok) {
    grouped = EstimateSingleLaunch(p, GroupedBatchedTiles(), tflops, p.cost.grouped_batched_efficiency, elem_bytes);
  }
  if (!fp8) {
    if (p.sm90_kernel_available && sm90_shape_ok)
      sm90 = EstimateSingleLaunch(p, Sm90TileOptions(), tflops, p.cost.sm90_efficiency, elem_bytes);
  }

  GemmBackend choice = requested;
  std::string why;
  if (requested == GemmBackend::kAuto) {
    choice = GemmBackend::kCublasLt;
    double best = lt.us;
    why = fp8 ? "fp8: cuBLASLt block-scaled matmul is the only fp8 path" : "cuBLASLt per group is fastest";
    if (grouped.us < kSwitchMargin * best) {
      choice = GemmBackend::kCublasGrouped;
      best = grouped.us;
      why = "one grouped launch beats per-group launches that leave SMs idle or cost launch overhead";
    }
    if (p.allow_experimental && sm90.us < kSwitchMargin * best) {
      choice = GemmBackend::kSm90;
      why = "persistent kernel packs every group's tiles into full waves";
    }
  } else {
    why = "requested";
  }
  const Estimate& e = choice == GemmBackend::kCublasLt        ? lt
                      : choice == GemmBackend::kCublasGrouped ? grouped
                      : choice == GemmBackend::kSimt          ? simt
                                                              : sm90;
  plan.backend = choice;
  plan.tile = e.tile;
  plan.num_tiles = e.num_tiles;
  plan.wave_efficiency = e.wave_efficiency;
  plan.num_launches = e.num_launches;
  plan.predicted_us = e.us;
  if (choice == GemmBackend::kSm90) {
    plan.stages = Sm90Stages(e.tile, elem_bytes);
    plan.num_ctas = static_cast<int>(std::min<int64_t>(e.num_tiles, p.sm_count));
  }
  plan.reason = absl::StrCat(
      why, " (modelled us: cublaslt ", static_cast<int64_t>(lt.us), ", cublas_grouped ",
      std::isinf(grouped.us) ? std::string("n/a") : absl::StrCat(static_cast<int64_t>(grouped.us)), ", sm90 ",
      std::isinf(sm90.us) ? std::string("n/a") : absl::StrCat(static_cast<int64_t>(sm90.us)), ")");
  return plan;
}

StatusOr<ActivationPlan> PlanActivation(int64_t rows, int64_t intermediate, DType down_dtype, int block,
                                        bool keep_bf16_activation) {
  if (rows < 0 || intermediate < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("activation: rows and intermediate must be >= 0, got ", rows, ", ", intermediate));
  ActivationPlan plan;
  const int64_t gate_up_bytes = rows * 2 * intermediate * 2;  // BF16 read
  const int64_t bf16_bytes = rows * intermediate * 2;
  if (down_dtype == DType::kBF16) {
    plan.fusion = ActivationFusion::kSwiGLU;
    plan.bytes_moved = gate_up_bytes + bf16_bytes;
    plan.reason = "bf16 down GEMM: SwiGLU writes its input directly";
    return plan;
  }
  if (down_dtype != DType::kFP8E4M3)
    return absl::InvalidArgumentError(
        absl::StrCat("activation: down GEMM dtype must be bf16 or fp8, got ", DTypeName(down_dtype)));
  if (block <= 0 || intermediate % block != 0)
    return absl::InvalidArgumentError(absl::StrCat("activation: the FP8 block (", block,
                                                   ") must be positive and divide intermediate (", intermediate, ")"));
  const int64_t fp8_bytes = rows * intermediate + rows * (intermediate / block) * 4;
  if (keep_bf16_activation) {
    plan.fusion = ActivationFusion::kSwiGLUThenQuantize;
    plan.bytes_moved = gate_up_bytes + bf16_bytes + bf16_bytes + fp8_bytes;
    plan.reason = "the BF16 activation is needed too: SwiGLU, then quantize it";
  } else {
    plan.fusion = ActivationFusion::kFusedSwiGLUQuantize;
    plan.bytes_moved = gate_up_bytes + fp8_bytes;
    plan.reason = "fp8 down GEMM: one fused pass skips writing and re-reading the BF16 activation";
  }
  return plan;
}

}  // namespace internal
}  // namespace waveep::kernels
