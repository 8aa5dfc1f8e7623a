// Copyright 2026 The waveep Authors.
//
// FP8 e4m3 blockwise quantize/dequantize on the GPU, bit-identical to QuantizeFp8Blockwise/DequantizeFp8Blockwise
// (convert.cc): the amax is exact in any order, the scale and x / scale are single IEEE divisions (__fdiv_rn, never
// an approximate reciprocal) and the FP8 rounding is the same bit manipulation. One warp per (row, block).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using cuda_internal::Bf16Bits;
using cuda_internal::CheckCudaStream;
using cuda_internal::DeviceGuard;
using cuda_internal::Fp8E4M3BitsToFloat;
using cuda_internal::GridFor;
using cuda_internal::Native;
using cuda_internal::QuantizeBlockWarp;

constexpr int kThreads = 256;

template <typename In>
__device__ __forceinline__ float Widen(In v);
template <>
__device__ __forceinline__ float Widen<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float Widen<uint16_t>(uint16_t v) {
  return Bf16Bits(v);
}

template <typename In>
__global__ void __launch_bounds__(kThreads) QuantizeKernel(const In* __restrict__ x, int64_t num_blocks, int block,
                                                           uint8_t* __restrict__ q, float* __restrict__ scales) {
  const int lane = threadIdx.x % 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * kThreads / 32;
  // Blocks are numbered row-major over [rows, cols / block], which is also the element order: block b covers
  // elements [b * block, (b + 1) * block) and owns scales[b].
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; b < num_blocks; b += num_warps) {
    const In* xb = x + b * block;
    QuantizeBlockWarp([xb](int i) { return Widen<In>(xb[i]); }, block, lane, q + b * block, scales + b);
  }
}

__global__ void __launch_bounds__(kThreads)
    DequantizeKernel(const uint8_t* __restrict__ q, const float* __restrict__ scales, int64_t n, int block,
                     float* __restrict__ x) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    x[i] = __fmul_rn(Fp8E4M3BitsToFloat(q[i]), scales[i / block]);
}

Status CheckBlockArgs(int64_t rows, int64_t cols, int block, const void* a, const void* b, const void* c,
                      const Stream& stream, const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, what));
  if (block <= 0) return absl::InvalidArgumentError(absl::StrCat(what, ": FP8 block must be > 0, got ", block));
  if (rows < 0 || cols < 0)
    return absl::InvalidArgumentError(absl::StrCat(what, ": rows and cols must be >= 0, got ", rows, " x ", cols));
  if (cols % block != 0)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": cols (", cols, ") must be a multiple of the block (", block, ")"));
  if (rows * cols > 0 && (a == nullptr || b == nullptr || c == nullptr))
    return absl::InvalidArgumentError(absl::StrCat(what, ": null device pointer"));
  return absl::OkStatus();
}

template <typename In>
Status LaunchQuantize(const In* x_dev, int64_t rows, int64_t cols, int block, uint8_t* q_dev, float* scales_dev,
                      Stream& stream, const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckBlockArgs(rows, cols, block, x_dev, q_dev, scales_dev, stream, what));
  const int64_t num_blocks = rows * (cols / block);
  if (num_blocks == 0) return absl::OkStatus();
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  QuantizeKernel<In><<<GridFor(num_blocks * 32, kThreads), kThreads, 0, Native(stream)>>>(x_dev, num_blocks, block,
                                                                                          q_dev, scales_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace

Status CudaQuantizeFp8Blockwise(const float* x_dev, int64_t rows, int64_t cols, int block, uint8_t* q_dev,
                                float* scales_dev, Stream& stream) {
  return LaunchQuantize(x_dev, rows, cols, block, q_dev, scales_dev, stream, "CudaQuantizeFp8Blockwise");
}

Status CudaQuantizeFp8BlockwiseBf16(const uint16_t* x_dev, int64_t rows, int64_t cols, int block, uint8_t* q_dev,
                                    float* scales_dev, Stream& stream) {
  return LaunchQuantize(x_dev, rows, cols, block, q_dev, scales_dev, stream, "CudaQuantizeFp8BlockwiseBf16");
}

Status CudaDequantizeFp8Blockwise(const uint8_t* q_dev, const float* scales_dev, int64_t rows, int64_t cols, int block,
                                  float* x_dev, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(
      CheckBlockArgs(rows, cols, block, q_dev, scales_dev, x_dev, stream, "CudaDequantizeFp8Blockwise"));
  const int64_t n = rows * cols;
  if (n == 0) return absl::OkStatus();
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  DequantizeKernel<<<GridFor(n, kThreads), kThreads, 0, Native(stream)>>>(q_dev, scales_dev, n, block, x_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace waveep::kernels
