// Copyright 2026 The waveep Authors.
//
// Helpers shared by the CUDA kernels of this module (kernels/cuda_*.cu, cublaslt_*.cu, sm90_*.cu, simt_*.cu): error
// macros, argument checks, the device guard, stream-ordered scratch memory and the bit-exact numeric helpers that
// mirror convert.cc. Included only from .cu files; never from a public header.
// IWYU pragma: private
#ifndef WAVEEP_KERNELS_CUDA_INTERNAL_CUH_
#define WAVEEP_KERNELS_CUDA_INTERNAL_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/kernels.h"

// WAVEEP_CUDA_RETURN_IF_ERROR comes from runtime/status.h.

// Checks the launch that just happened on this thread (configuration errors surface here, faults later).
#define WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED() WAVEEP_CUDA_RETURN_IF_ERROR(cudaGetLastError())

namespace waveep::kernels::cuda_internal {

inline cudaStream_t Native(const Stream& stream) { return static_cast<cudaStream_t>(stream.native()); }

// InvalidArgument unless `stream` is a CUDA stream.
inline Status CheckCudaStream(const Stream& stream, const char* what) {
  if (stream.device().is_cpu())
    return absl::InvalidArgumentError(absl::StrCat(what, ": stream '", stream.name(), "' is a CPU stream"));
  return absl::OkStatus();
}

// Makes the stream's device current for the lifetime of the guard and restores the caller's device afterwards, so
// a launch never changes global state behind the caller's back.
class DeviceGuard {
 public:
  DeviceGuard() = default;
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  // A failure here is cleared: left pending, the next launch check (cudaGetLastError) would report it under that
  // launch's name.
  ~DeviceGuard() {
    if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
  }
  Status Enter(int ordinal) {
    int current = 0;
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaGetDevice(&current));
    if (current != ordinal) WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal));
    previous_ = current;
    return absl::OkStatus();
  }

 private:
  int previous_ = -1;
};

// Stream-ordered scratch memory (cudaMallocAsync/cudaFreeAsync): allocated when the stream reaches the allocation,
// released after everything enqueued before the free. NOTES: the caller must enqueue Free() after the last kernel
// that uses the memory; the destructor frees on the stream too, so an early return cannot leak it.
class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() { Free(); }
  Status Allocate(size_t bytes) {
    Free();
    if (bytes == 0) return absl::OkStatus();
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&ptr_, bytes, stream_));
    return absl::OkStatus();
  }
  // A failed free is cleared rather than left for the next launch check to misreport (the stream's own error, if
  // any, surfaces at its next synchronization).
  void Free() {
    if (ptr_ != nullptr && cudaFreeAsync(ptr_, stream_) != cudaSuccess) cudaGetLastError();
    ptr_ = nullptr;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

// Grid size for a grid-stride loop over `n` items: enough blocks to fill any current GPU several times over.
inline int GridFor(int64_t n, int threads, int64_t max_blocks = 8192) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < max_blocks ? blocks : max_blocks));
}

// ---- bit-exact numerics (NOTES: must stay identical to convert.cc) -------------------------------------------
__device__ __forceinline__ float Bf16Bits(uint16_t x) { return __uint_as_float(static_cast<uint32_t>(x) << 16); }

__device__ __forceinline__ uint16_t FloatToBf16Bits(float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ uint8_t FloatToFp8E4M3Bits(float x) {
  const uint32_t u = __float_as_uint(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t abs_bits = u & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return 0x7F;
  if (abs_bits >= 0x43E00000u) return sign | 0x7E;
  if (abs_bits >= 0x3C800000u) {
    const uint32_t rounded = abs_bits + 0x7FFFFu + ((abs_bits >> 20) & 1u);
    return sign | static_cast<uint8_t>((rounded >> 20) - (120u << 3));
  }
  // Subnormal: |x| * 512 and the fraction are exact; the explicit _rn intrinsics keep the compiler from fusing.
  const float t = __fmul_rn(__uint_as_float(abs_bits), 512.0f);
  uint32_t m = static_cast<uint32_t>(t);
  const float frac = __fsub_rn(t, static_cast<float>(m));
  if (frac > 0.5f || (frac == 0.5f && (m & 1u))) ++m;
  return sign | static_cast<uint8_t>(m);
}

// Exact decode of an e4m3fn code, the same values as the CPU table.
__device__ __forceinline__ float Fp8E4M3BitsToFloat(uint8_t code) {
  const uint32_t exp_field = (code >> 3) & 0xFu;
  const uint32_t mant = code & 0x7u;
  float v;
  if (exp_field == 0xF && mant == 0x7) {
    v = __uint_as_float(0x7FC00000u);
  } else if (exp_field == 0) {
    v = __fmul_rn(static_cast<float>(mant), 0x1p-9f);  // exact
  } else {
    v = __uint_as_float(((exp_field + 120u) << 23) | (mant << 20));  // (1 + mant/8) * 2^(exp - 7)
  }
  return (code & 0x80u) ? -v : v;
}

// silu(g) * u in the CPU's operation order: g / (1 + exp(-g)) * u. expf differs from std::exp by a few ulp, so
// this is close to, not bitwise equal to, the CPU reference.
__device__ __forceinline__ float SwiGLUValue(float g, float u) {
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

// One warp quantizes one block of `block` values (value(i) for i in [0, block)) exactly like
// QuantizeFp8Blockwise: scale = amax / 448 (1 for an all-zero block), q = fp8(x / scale). value() is evaluated twice
// per element, so it must be deterministic. `lane` is the caller's lane; all 32 lanes must call.
template <typename ValueFn>
__device__ __forceinline__ void QuantizeBlockWarp(ValueFn value, int block, int lane, uint8_t* __restrict__ q,
                                                  float* __restrict__ scale_out) {
  float amax = 0.0f;  // fmaxf ignores NaN, like std::max(amax, NaN) on the CPU
  for (int i = lane; i < block; i += 32) amax = fmaxf(amax, fabsf(value(i)));
  for (int offset = 16; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
  const float scale = amax > 0.0f ? __fdiv_rn(amax, kFp8E4M3Max) : 1.0f;
  if (lane == 0) *scale_out = scale;
  for (int i = lane; i < block; i += 32) q[i] = FloatToFp8E4M3Bits(__fdiv_rn(value(i), scale));
}

// ---- grouped GEMM backends (kernels/cuda_grouped_gemm.cu dispatches to these) --------------------------------
// FP8 grouped GEMM operands carry one FP32 scale per this many consecutive K elements of a row (kernels.h).
constexpr int64_t kGemmScaleBlock = 128;

// One validated grouped GEMM: host arrays as in CudaGroupedGemmNTBf16/Fp8, device operands, a non-empty problem
// (some group has rows, n > 0, k > 0).
struct GroupedGemmArgs {
  bool fp8 = false;
  const void* a = nullptr;                 // [M_total, K] BF16 or FP8, device
  const float* a_scales = nullptr;         // FP8: [M_total, K / 128], device
  const int64_t* group_offsets = nullptr;  // [num_groups + 1], host
  int num_groups = 0;
  int64_t k = 0;
  const void* const* b = nullptr;          // [num_groups] device pointers to [N, K], host array
  const float* const* b_scales = nullptr;  // FP8: [num_groups] device pointers to [N, K / 128], host array
  int64_t n = 0;
  void* c = nullptr;  // [M_total, N] BF16 or F32, device
  DType c_dtype = DType::kBF16;
};

// kernels/cublaslt_grouped_gemm.cu
Status CublasLtGroupedGemm(const GroupedGemmArgs& args, cudaStream_t stream, int device);
Status CublasGroupedBatchedGemm(const GroupedGemmArgs& args, cudaStream_t stream, int device);
// kernels/simt_grouped_gemm.cu: every non-empty group, or one group (`group` indexes group_offsets).
Status SimtGroupedGemm(const GroupedGemmArgs& args, cudaStream_t stream);
Status SimtGemmGroup(const GroupedGemmArgs& args, int group, cudaStream_t stream);
// kernels/sm90_grouped_gemm.cu (only in builds for sm_90a; see kernels/CMakeLists.txt). `tile_m` is 64 or 128.
bool Sm90KernelCompiled();
Status Sm90GroupedGemm(const GroupedGemmArgs& args, int tile_m, int num_ctas, cudaStream_t stream, int device);

}  // namespace waveep::kernels::cuda_internal

#endif  // WAVEEP_KERNELS_CUDA_INTERNAL_CUH_
