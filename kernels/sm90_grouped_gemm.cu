// Copyright 2026 The waveep Authors.
//
// EXPERIMENTAL: a persistent BF16 grouped GEMM for Hopper (sm_90a): TMA loads into 128-byte-swizzled shared memory,
// wgmma from shared memory, FP32 accumulation, C written from registers. It compiles here but has never run:
// it is selected only by GemmBackend::kSm90 or, with WAVEEP_GEMM_EXPERIMENTAL=1, by the heuristic; the cuBLASLt
// paths stay the default until tests/kernels/cuda_grouped_gemm_test.cc passes on a GPU (scripts/gpu_check.sh,
// docs/gpu.md).
//
// Shape: C[rows of g, N] = A[rows of g, K] * B_g[N, K]^T, both operands K-major ("TN", wgmma's native layout).
// One CTA = 1 producer warpgroup (one thread issues TMA) + kConsumers consumer warpgroups, each owning 64 rows of a
// (64 * kConsumers) x 128 output tile; BK = 64 (one 128-byte swizzle row of BF16), kStages-deep mbarrier ring.
// The grid is persistent: CTA i takes tiles i, i + gridDim.x, ... of the flattened (group, m tile, n tile) list,
// so small groups from many experts share full waves.
//
// NOTES:
//  - A is one tensor map over all rows; a tile that runs past its group's last row loads the next group's rows
//    (or TMA's zero fill past the end of A) and those rows are masked at the store. B needs one map per group
//    (weights live anywhere): up to kMaxGroupsPerLaunch maps travel in the kernel parameters (CUDA >= 12.1 allows
//    32 KB of parameters), larger groups counts take several launches.
//  - Stage reuse: a consumer releases stage s after wgmma.wait_group(1) shows the k-block that read s finished.
//  - Requires K % 64 == 0, N % 8 == 0 and 16-byte aligned A and B_g (checked on the host).
// TODO(waveep): setmaxnreg producer/consumer split, TMA multicast of B across a cluster, a TMA-store epilogue, FP8
// (k32 wgmma with per-128 scales applied between k-blocks), fused SwiGLU in the epilogue.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

namespace waveep::kernels::cuda_internal {
namespace {

constexpr int kBlockN = 128;
constexpr int kBlockK = 64;  // 64 BF16 = 128 bytes = one swizzle row
constexpr int kStages = 4;   // gemm_heuristics: Sm90Stages({64|128, 128, 64}, 2) == 4
constexpr int kMaxGroupsPerLaunch = 96;

struct __align__(64) Sm90Params {
  CUtensorMap tma_a;                            // A [rows, K], box {64, kBlockM}
  CUtensorMap tma_b[kMaxGroupsPerLaunch];       // B_g [N, K], box {64, 128}
  int64_t row_begin[kMaxGroupsPerLaunch + 1];   // group g's rows: [row_begin[g], row_begin[g + 1])
  int64_t tile_begin[kMaxGroupsPerLaunch + 1];  // group g's tiles: [tile_begin[g], tile_begin[g + 1])
  void* c;
  int num_groups;
  int n;
  int k;
  int c_is_f32;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void MbarInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SmemAddr(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void MbarArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(SmemAddr(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(SmemAddr(bar)) : "memory");
}

// Blocks until the phase with parity `parity` of `bar` completed.
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(SmemAddr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// 2D TMA load of the box at (c0 = k, c1 = row) into `dst`, completing on `bar`.
__device__ __forceinline__ void TmaLoad2d(void* dst, const CUtensorMap* map, int32_t c0, int32_t c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          SmemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(SmemAddr(bar))
      : "memory");
}

// Shared-memory matrix descriptor for a K-major operand in 128-byte swizzle: rows of 128 bytes, 8-row groups
// 1024 bytes apart (stride byte offset), leading byte offset unused for this layout (1), swizzle mode 1 (128B).
__device__ __forceinline__ uint64_t SmemDesc(const void* p) {
  const uint64_t addr = SmemAddr(p);
  uint64_t desc = (addr & 0x3FFFFull) >> 4;
  desc |= uint64_t{1} << 16;
  desc |= uint64_t{1024 >> 4} << 32;
  desc |= uint64_t{1} << 62;
  return desc;
}

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma boundary.
__device__ __forceinline__ void FenceOperands(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D (64 x 128, FP32, this warpgroup's accumulators) += A (64 x 16, smem) * B (128 x 16, smem)^T; both operands
// K-major with the 128-byte swizzle. scale_d = 0 overwrites D instead of accumulating (first k step of a tile).
__device__ __forceinline__ void WgmmaM64N128K16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "
      "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <int kConsumers>
__global__ void __launch_bounds__(128 * (kConsumers + 1), 1)
    Sm90GroupedGemmKernel(const __grid_constant__ Sm90Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBlockM = 64 * kConsumers;
  constexpr int kABytes = kBlockM * kBlockK * 2;
  constexpr int kBBytes = kBlockN * kBlockK * 2;
  extern __shared__ uint8_t smem_raw[];
  // The 128-byte swizzle repeats every 1024 bytes: tiles must start on a 1024-byte boundary.
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* smem_a = smem;
  uint8_t* smem_b = smem + kStages * kABytes;
  __shared__ __align__(8) uint64_t full[kStages];
  __shared__ __align__(8) uint64_t empty[kStages];

  const int warpgroup = threadIdx.x / 128;
  const int wg_thread = threadIdx.x % 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      MbarInit(&full[s], 1);
      MbarInit(&empty[s], kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  const int tiles_n = (p.n + kBlockN - 1) / kBlockN;
  const int num_kb = p.k / kBlockK;
  const int64_t total_tiles = p.tile_begin[p.num_groups];

  // Maps a flat tile index to (group, first row, row end, first column).
  auto locate = [&](int64_t tile, int* group, int64_t* row0, int64_t* row_end, int* col0) {
    int g = 0;
    while (tile >= p.tile_begin[g + 1]) ++g;
    const int64_t local = tile - p.tile_begin[g];
    *group = g;
    *row0 = p.row_begin[g] + (local / tiles_n) * kBlockM;
    *row_end = p.row_begin[g + 1];
    *col0 = static_cast<int>(local % tiles_n) * kBlockN;
  };

  if (warpgroup == 0) {
    // Producer: one thread streams A and B k-blocks through the stage ring.
    if (wg_thread != 0) return;
    int stage = 0;
    uint32_t phase = 0;
    for (int64_t tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
      int g, col0;
      int64_t row0, row_end;
      locate(tile, &g, &row0, &row_end, &col0);
      for (int kb = 0; kb < num_kb; ++kb) {
        MbarWait(&empty[stage], phase ^ 1);
        MbarArriveExpectTx(&full[stage], kABytes + kBBytes);
        TmaLoad2d(smem_a + stage * kABytes, &p.tma_a, kb * kBlockK, static_cast<int32_t>(row0), &full[stage]);
        TmaLoad2d(smem_b + stage * kBBytes, &p.tma_b[g], kb * kBlockK, col0, &full[stage]);
        if (++stage == kStages) stage = 0, phase ^= 1;
      }
    }
    return;
  }

  // Consumers: warpgroup c computes rows [64 * (c - 1), 64 * c) of each tile.
  const int consumer = warpgroup - 1;
  const int warp = wg_thread / 32, lane = wg_thread % 32;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;  // overwritten by the first wgmma of each tile (scale_d = 0)
  int stage = 0;
  uint32_t phase = 0;
  for (int64_t tile = blockIdx.x; tile < total_tiles; tile += gridDim.x) {
    int g, col0;
    int64_t row0, row_end;
    locate(tile, &g, &row0, &row_end, &col0);
    int prev_stage = -1;
    for (int kb = 0; kb < num_kb; ++kb) {
      MbarWait(&full[stage], phase);
      const uint8_t* a_tile = smem_a + stage * kABytes + consumer * 64 * 128;
      const uint8_t* b_tile = smem_b + stage * kBBytes;
      FenceOperands(acc);
      WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < kBlockK / 16; ++ks) {
        // A k16 step is 32 bytes along the swizzled row: advance the descriptors' start address.
        WgmmaM64N128K16(acc, SmemDesc(a_tile + ks * 32), SmemDesc(b_tile + ks * 32), (kb > 0 || ks > 0) ? 1 : 0);
      }
      WgmmaCommit();
      WgmmaWait<1>();  // the previous k-block's wgmmas are done: its stage may be refilled
      FenceOperands(acc);
      if (prev_stage >= 0 && wg_thread == 0) MbarArrive(&empty[prev_stage]);
      prev_stage = stage;
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
    WgmmaWait<0>();
    FenceOperands(acc);
    if (prev_stage >= 0 && wg_thread == 0) MbarArrive(&empty[prev_stage]);

    // Epilogue: fragment (n8 block b, half h) of warp w holds rows 16w + lane/4 + 8h, columns 8b + 2(lane%4) + {0,1}.
    const int64_t row_base = row0 + consumer * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int b = 0; b < kBlockN / 8; ++b) {
      const int col = col0 + b * 8 + (lane % 4) * 2;
      if (col >= p.n) continue;  // n % 8 == 0: both columns of the pair are in or out together
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = row_base + 8 * h;
        if (row >= row_end) continue;
        const float v0 = acc[4 * b + 2 * h], v1 = acc[4 * b + 2 * h + 1];
        if (p.c_is_f32) {
          *reinterpret_cast<float2*>(static_cast<float*>(p.c) + row * p.n + col) = make_float2(v0, v1);
        } else {
          const uint32_t packed =
              static_cast<uint32_t>(FloatToBf16Bits(v0)) | (static_cast<uint32_t>(FloatToBf16Bits(v1)) << 16);
          *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(p.c) + row * p.n + col) = packed;
        }
      }
    }
  }
#else
  // Only the sm_90a image has a body; kernels/CMakeLists.txt builds this file for 90a alone.
  __trap();
#endif
}

// cuTensorMapEncodeTiled through the runtime's driver entry point: no link-time dependency on libcuda.
StatusOr<PFN_cuTensorMapEncodeTiled_v12000> EncodeFn() {
  static std::once_flag once;
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static cudaError_t rc = cudaSuccess;
  std::call_once(once, [] {
    cudaDriverEntryPointQueryResult query;
    void* p = nullptr;
    rc = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &query);
    if (rc == cudaSuccess && query == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  });
  if (fn == nullptr)
    return absl::UnavailableError(absl::StrCat("cuTensorMapEncodeTiled is not available: ", cudaGetErrorString(rc)));
  return fn;
}

Status EncodeKMajor(PFN_cuTensorMapEncodeTiled_v12000 encode, CUtensorMap* map, const void* base, int64_t rows,
                    int64_t k, int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {kBlockK, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult rc = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
                             elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (rc != CUDA_SUCCESS)
    return absl::InternalError(absl::StrCat("cuTensorMapEncodeTiled failed (CUresult ", static_cast<int>(rc),
                                            ") for a ", rows, " x ", k, " operand"));
  return absl::OkStatus();
}

template <int kConsumers>
Status Launch(const GroupedGemmArgs& args, int num_ctas, cudaStream_t stream) {
  constexpr int kBlockM = 64 * kConsumers;
  constexpr int kThreads = 128 * (kConsumers + 1);
  constexpr size_t kSmemBytes = kStages * (kBlockM + kBlockN) * kBlockK * 2 + 1024;  // + alignment slack
  // A function attribute is per device: set it on every launch (a cheap host call), not once per process.
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      Sm90GroupedGemmKernel<kConsumers>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)));
  WAVEEP_ASSIGN_OR_RETURN(PFN_cuTensorMapEncodeTiled_v12000 encode, EncodeFn());

  const int64_t k = args.k, n = args.n;
  const int64_t tiles_n = (n + kBlockN - 1) / kBlockN;
  const int64_t rows_end = args.group_offsets[args.num_groups];
  auto params = std::make_unique<Sm90Params>();
  WAVEEP_RETURN_IF_ERROR(EncodeKMajor(encode, &params->tma_a, args.a, rows_end, k, kBlockM));
  params->c = args.c;
  params->n = static_cast<int>(n);
  params->k = static_cast<int>(k);
  params->c_is_f32 = args.c_dtype == DType::kF32 ? 1 : 0;
  for (int first = 0; first < args.num_groups; first += kMaxGroupsPerLaunch) {
    const int count = std::min(kMaxGroupsPerLaunch, args.num_groups - first);
    params->num_groups = count;
    params->tile_begin[0] = 0;
    for (int i = 0; i < count; ++i) {
      const int g = first + i;
      const int64_t m = args.group_offsets[g + 1] - args.group_offsets[g];
      params->row_begin[i] = args.group_offsets[g];
      params->tile_begin[i + 1] = params->tile_begin[i] + (m + kBlockM - 1) / kBlockM * tiles_n;
      if (m > 0) WAVEEP_RETURN_IF_ERROR(EncodeKMajor(encode, &params->tma_b[i], args.b[g], n, k, kBlockN));
    }
    params->row_begin[count] = args.group_offsets[first + count];
    const int64_t tiles = params->tile_begin[count];
    if (tiles == 0) continue;
    const int grid = static_cast<int>(std::min<int64_t>(std::max(num_ctas, 1), tiles));
    Sm90GroupedGemmKernel<kConsumers><<<grid, kThreads, kSmemBytes, stream>>>(*params);
    WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  }
  return absl::OkStatus();
}

}  // namespace

bool Sm90KernelCompiled() { return true; }

Status Sm90GroupedGemm(const GroupedGemmArgs& args, int tile_m, int num_ctas, cudaStream_t stream, int device) {
  if (args.fp8) return absl::UnimplementedError("the sm90 kernel is BF16 only");
  if (args.k % kBlockK != 0 || args.n % 8 != 0)
    return absl::InvalidArgumentError("the sm90 kernel needs k % 64 == 0 and n % 8 == 0");
  if (args.k > INT32_MAX || args.n > INT32_MAX || args.group_offsets[args.num_groups] > INT32_MAX)
    return absl::InvalidArgumentError("the sm90 kernel needs sizes below 2^31 (TMA coordinates are int32)");
  bool aligned = reinterpret_cast<uintptr_t>(args.a) % 16 == 0;
  for (int g = 0; g < args.num_groups; ++g) {
    if (args.group_offsets[g + 1] > args.group_offsets[g])
      aligned = aligned && reinterpret_cast<uintptr_t>(args.b[g]) % 16 == 0;
  }
  if (!aligned) return absl::InvalidArgumentError("the sm90 kernel needs 16-byte aligned A and B (TMA)");
  // The epilogue stores column pairs: a float2 (F32) or a uint32 (BF16) per pair, so C needs 8- or 4-byte alignment
  // (rows keep it: n is even).
  const uintptr_t c_align = args.c_dtype == DType::kF32 ? 8 : 4;
  if (reinterpret_cast<uintptr_t>(args.c) % c_align != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the sm90 kernel needs C aligned to ", c_align, " bytes (it stores column pairs)"));
  }
  (void)device;  // the caller made the stream's device current
  if (tile_m == 64) return Launch<1>(args, num_ctas, stream);
  if (tile_m == 128) return Launch<2>(args, num_ctas, stream);
  return absl::InvalidArgumentError(absl::StrCat("the sm90 kernel has no ", tile_m, "-row tile"));
}

}  // namespace waveep::kernels::cuda_internal
