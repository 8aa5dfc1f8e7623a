// Copyright 2026 The waveep Authors.
//
// SwiGLU on the GPU, alone (FP32 or BF16) or fused with the FP8 blockwise quantization that feeds the down GEMM.
// The fused kernel reads gate_up once and writes 1 byte per output element plus the scales, instead of writing a
// BF16 activation and reading it back; it quantizes the FP32 SwiGLU value (no intermediate BF16 rounding).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using cuda_internal::Bf16Bits;
using cuda_internal::CheckCudaStream;
using cuda_internal::DeviceGuard;
using cuda_internal::FloatToBf16Bits;
using cuda_internal::GridFor;
using cuda_internal::Native;
using cuda_internal::QuantizeBlockWarp;
using cuda_internal::SwiGLUValue;

constexpr int kThreads = 256;

// The activation's element type: F32 in and out, or BF16 in and out (FP32 math, rounded once at the end).
__device__ __forceinline__ float Widen(float x) { return x; }
__device__ __forceinline__ float Widen(uint16_t x) { return Bf16Bits(x); }
__device__ __forceinline__ void Store(float v, float* out) { *out = v; }
__device__ __forceinline__ void Store(float v, uint16_t* out) { *out = FloatToBf16Bits(v); }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    SwiGLUKernel(const T* __restrict__ gate_up, int64_t m, int64_t inter, T* __restrict__ out) {
  const int64_t n = m * inter;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / inter, c = i - r * inter;
    const T* row = gate_up + r * 2 * inter;
    Store(SwiGLUValue(Widen(row[c]), Widen(row[inter + c])), out + i);
  }
}

// One warp per (row, block) of the [m, inter] activation.
__global__ void __launch_bounds__(kThreads)
    SwiGLUQuantizeKernel(const uint16_t* __restrict__ gate_up, int64_t inter, int64_t num_blocks, int block,
                         uint8_t* __restrict__ q, float* __restrict__ scales) {
  const int lane = threadIdx.x % 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * kThreads / 32;
  const int64_t blocks_per_row = inter / block;
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; b < num_blocks; b += num_warps) {
    const int64_t r = b / blocks_per_row;
    const int64_t c0 = (b - r * blocks_per_row) * block;
    const uint16_t* gate = gate_up + r * 2 * inter + c0;
    const uint16_t* up = gate + inter;
    QuantizeBlockWarp([gate, up](int i) { return SwiGLUValue(Bf16Bits(gate[i]), Bf16Bits(up[i])); }, block, lane,
                      q + r * inter + c0, scales + b);
  }
}

Status CheckSwiGLUArgs(int64_t m, int64_t inter, const void* in, const void* out, const Stream& stream,
                       const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, what));
  if (m < 0 || inter < 0)
    return absl::InvalidArgumentError(absl::StrCat(what, ": m and intermediate must be >= 0, got ", m, ", ", inter));
  if (m * inter > 0 && (in == nullptr || out == nullptr))
    return absl::InvalidArgumentError(absl::StrCat(what, ": null device pointer"));
  return absl::OkStatus();
}

template <typename T>
Status LaunchSwiGLU(const T* gate_up_dev, int64_t m, int64_t intermediate, T* out_dev, Stream& stream,
                    const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckSwiGLUArgs(m, intermediate, gate_up_dev, out_dev, stream, what));
  if (m * intermediate == 0) return absl::OkStatus();
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  SwiGLUKernel<T>
      <<<GridFor(m * intermediate, kThreads), kThreads, 0, Native(stream)>>>(gate_up_dev, m, intermediate, out_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace

Status CudaSwiGLU(const float* gate_up_dev, int64_t m, int64_t intermediate, float* out_dev, Stream& stream) {
  return LaunchSwiGLU(gate_up_dev, m, intermediate, out_dev, stream, "CudaSwiGLU");
}

Status CudaSwiGLUBf16(const uint16_t* gate_up_dev, int64_t m, int64_t intermediate, uint16_t* out_dev, Stream& stream) {
  return LaunchSwiGLU(gate_up_dev, m, intermediate, out_dev, stream, "CudaSwiGLUBf16");
}

Status CudaSwiGLUQuantizeFp8(const uint16_t* gate_up_dev, int64_t m, int64_t intermediate, int block, uint8_t* q_dev,
                             float* scales_dev, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckSwiGLUArgs(m, intermediate, gate_up_dev, q_dev, stream, "CudaSwiGLUQuantizeFp8"));
  if (block <= 0 || intermediate % block != 0)
    return absl::InvalidArgumentError(absl::StrCat("CudaSwiGLUQuantizeFp8: intermediate (", intermediate,
                                                   ") must be a multiple of a positive block, got ", block));
  const int64_t num_blocks = m * (intermediate / block);
  if (num_blocks == 0) return absl::OkStatus();
  if (scales_dev == nullptr) return absl::InvalidArgumentError("CudaSwiGLUQuantizeFp8: null scales");
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  SwiGLUQuantizeKernel<<<GridFor(num_blocks * 32, kThreads), kThreads, 0, Native(stream)>>>(
      gate_up_dev, intermediate, num_blocks, block, q_dev, scales_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace waveep::kernels
