// Copyright 2026 The waveep Authors.
//
// The portable grouped GEMM backend (GemmBackend::kSimt): CUDA cores, FP32 fused multiply-add, any shape and any
// alignment, BF16 or FP8 (1x128 block scales) inputs, on every GPU the build targets. Two uses:
//  - by name: a device-side reference next to the library and tensor-core backends (the tests run it at every shape);
//  - from the cuBLASLt backend, for a shape cuBLASLt has no algorithm for (seen for small FP8 block-scaled groups on
//    an H200: docs/perf/2026-11-29-NVIDIA-H200). The choice is per (M, N, K), so it never depends on the wave size.
//
// One block computes a 64 x 64 tile of one group's C with 256 threads, 4 x 4 outputs each (rows tr + 16 i, columns
// tc + 16 j: the shared-memory reads of a warp hit distinct banks or broadcast). K advances 32 at a time through
// shared memory. Operands are widened to FP32 as they are loaded: BF16 exactly, FP8 as fp8 value * block scale
// rounded once (__fmul_rn), the very values DequantizeFp8Blockwise produces. So this is the reference's GEMM on the
// reference's inputs, accumulated in K order per output element: its error is FP32 rounding of the running sum only,
// far inside the tolerance of the tensor-core backends (2^-18 sum|ab| for BF16, 2^-13 for FP8).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

namespace waveep::kernels::cuda_internal {
namespace {

constexpr int kTile = 64;                         // output rows and columns per block
constexpr int kTileK = 32;                        // K per shared-memory stage (divides the FP8 scale block, 128)
constexpr int kThreads = 256;                     // 16 x 16 threads, 4 x 4 outputs each
constexpr int kSpread = 16;                       // a thread's rows (columns) are kSpread apart
constexpr int64_t kMaxRowTilesPerLaunch = 65535;  // gridDim.y limit

// One group's operands, already offset to its first row.
struct SimtGroup {
  const void* a;          // [m, k] BF16 or FP8
  const float* a_scales;  // FP8: [m, k / 128]
  const void* b;          // [n, k] BF16 or FP8
  const float* b_scales;  // FP8: [n, k / 128]
  void* c;                // [m, n] BF16 or F32
  int64_t m;
};

// Element (row, col) of a [rows, k] operand widened to FP32; 0 outside it (partial tiles).
template <bool kFp8>
__device__ __forceinline__ float LoadWidened(const void* x, const float* scales, int64_t row, int64_t rows, int64_t col,
                                             int64_t k) {
  if (row >= rows || col >= k) return 0.0f;
  if constexpr (kFp8) {
    const uint8_t q = static_cast<const uint8_t*>(x)[row * k + col];
    return __fmul_rn(Fp8E4M3BitsToFloat(q), scales[row * (k / kGemmScaleBlock) + col / kGemmScaleBlock]);
  } else {
    return Bf16Bits(static_cast<const uint16_t*>(x)[row * k + col]);
  }
}

template <bool kFp8, bool kBf16Out>
__global__ void __launch_bounds__(kThreads) SimtGemmKernel(const SimtGroup g, int64_t n, int64_t k) {
  // [k][row]; the +1 column keeps a warp's stores (32 consecutive k of one row) on distinct banks.
  __shared__ float a_tile[kTileK][kTile + 1];
  __shared__ float b_tile[kTileK][kTile + 1];
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tid = static_cast<int>(threadIdx.x);
  const int tr = tid / kSpread, tc = tid % kSpread;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    // Consecutive threads load consecutive k of one row: coalesced global reads.
    for (int e = tid; e < kTile * kTileK; e += kThreads) {
      const int r = e / kTileK, kk = e % kTileK;
      a_tile[kk][r] = LoadWidened<kFp8>(g.a, g.a_scales, row0 + r, g.m, k0 + kk, k);
      b_tile[kk][r] = LoadWidened<kFp8>(g.b, g.b_scales, col0 + r, n, k0 + kk, k);
    }
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = a_tile[kk][tr + kSpread * i];
        bv[i] = b_tile[kk][tc + kSpread * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + tr + kSpread * i;
    if (row >= g.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tc + kSpread * j;
      if (col >= n) continue;
      if constexpr (kBf16Out) {
        static_cast<uint16_t*>(g.c)[row * n + col] = FloatToBf16Bits(acc[i][j]);
      } else {
        static_cast<float*>(g.c)[row * n + col] = acc[i][j];
      }
    }
  }
}

template <bool kFp8>
void Launch(const SimtGroup& g, int64_t n, int64_t k, bool bf16_out, dim3 grid, cudaStream_t stream) {
  if (bf16_out) {
    SimtGemmKernel<kFp8, true><<<grid, kThreads, 0, stream>>>(g, n, k);
  } else {
    SimtGemmKernel<kFp8, false><<<grid, kThreads, 0, stream>>>(g, n, k);
  }
}

}  // namespace

Status SimtGemmGroup(const GroupedGemmArgs& args, int group, cudaStream_t stream) {
  const int64_t row0 = args.group_offsets[group], m = args.group_offsets[group + 1] - row0;
  if (m == 0 || args.n == 0) return absl::OkStatus();
  const int64_t k = args.k, n = args.n;
  const size_t in_bytes = args.fp8 ? 1 : 2, c_bytes = DTypeSize(args.c_dtype);
  const int64_t col_tiles = (n + kTile - 1) / kTile;
  if (col_tiles > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat("simt grouped GEMM: n=", n, " too large"));
  // Row tiles beyond the grid's y limit go in further launches over later rows.
  for (int64_t first = 0; first < m; first += kMaxRowTilesPerLaunch * kTile) {
    const int64_t rows = std::min<int64_t>(m - first, kMaxRowTilesPerLaunch * kTile);
    const int64_t r = row0 + first;
    SimtGroup g;
    g.a = static_cast<const char*>(args.a) + r * k * in_bytes;
    g.a_scales = args.fp8 ? args.a_scales + r * (k / kGemmScaleBlock) : nullptr;
    g.b = args.b[group];
    g.b_scales = args.fp8 ? args.b_scales[group] : nullptr;
    g.c = static_cast<char*>(args.c) + r * n * c_bytes;
    g.m = rows;
    const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>((rows + kTile - 1) / kTile));
    const bool bf16_out = args.c_dtype == DType::kBF16;
    if (args.fp8) {
      Launch<true>(g, n, k, bf16_out, grid, stream);
    } else {
      Launch<false>(g, n, k, bf16_out, grid, stream);
    }
    WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  }
  return absl::OkStatus();
}

Status SimtGroupedGemm(const GroupedGemmArgs& args, cudaStream_t stream) {
  for (int g = 0; g < args.num_groups; ++g) WAVEEP_RETURN_IF_ERROR(SimtGemmGroup(args, g, stream));
  return absl::OkStatus();
}

}  // namespace waveep::kernels::cuda_internal
