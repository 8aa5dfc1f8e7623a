// Copyright 2026 The waveep Authors.
//
// Device-side BF16 <-> FP32 conversion, FP32 accumulate and the copy helpers the layer uses. Bit-identical to the CPU
// reference in convert.cc (tests compare all 65536 BF16 patterns and the rounding ties), which is why it does its own
// bit manipulation instead of calling
// __float2bfloat16_rn: that intrinsic canonicalises NaN payloads, the CPU path keeps them.
#include <cuda_runtime.h>

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

constexpr int kThreads = 256;

__global__ void F32ToBf16Kernel(const float* __restrict__ in, uint16_t* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = FloatToBf16Bits(in[i]);
  }
}

__global__ void Bf16ToF32Kernel(const uint16_t* __restrict__ in, float* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = Bf16Bits(in[i]);
  }
}

__global__ void AddF32Kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = __fadd_rn(y[i], x[i]);
  }
}

Status CheckLaunch(const void* in, const void* out, int64_t n, const Stream& stream, const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, what));
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": n < 0: ", n));
  if (n > 0 && (in == nullptr || out == nullptr))
    return absl::InvalidArgumentError(absl::StrCat(what, ": null device pointer (", in == nullptr ? "in" : "out", ")"));
  return absl::OkStatus();
}

// Launches on the stream's device; the guard restores the caller's current device afterwards.
template <typename In, typename Out>
Status Launch(void (*kernel)(const In*, Out*, int64_t), const In* in, Out* out, int64_t n, Stream& stream) {
  if (n == 0) return absl::OkStatus();
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  kernel<<<GridFor(n, kThreads), kThreads, 0, Native(stream)>>>(in, out, n);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace

bool CudaKernelsCompiledIn() { return true; }

Status CudaConvertF32ToBf16(const float* in_dev, uint16_t* out_dev, int64_t n, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckLaunch(in_dev, out_dev, n, stream, "CudaConvertF32ToBf16"));
  return Launch(F32ToBf16Kernel, in_dev, out_dev, n, stream);
}

Status CudaConvertBf16ToF32(const uint16_t* in_dev, float* out_dev, int64_t n, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckLaunch(in_dev, out_dev, n, stream, "CudaConvertBf16ToF32"));
  return Launch(Bf16ToF32Kernel, in_dev, out_dev, n, stream);
}

Status CudaAddF32(const float* x_dev, float* y_dev, int64_t n, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckLaunch(x_dev, y_dev, n, stream, "CudaAddF32"));
  return Launch(AddF32Kernel, x_dev, y_dev, n, stream);
}

Status CudaCopyAsync(void* dst, const void* src, int64_t bytes, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckLaunch(src, dst, bytes, stream, "CudaCopyAsync"));
  if (bytes == 0) return absl::OkStatus();
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDefault, Native(stream)));
  return absl::OkStatus();
}

Status CudaFillZeroAsync(void* dst_dev, int64_t bytes, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckLaunch(dst_dev, dst_dev, bytes, stream, "CudaFillZeroAsync"));
  if (bytes == 0) return absl::OkStatus();
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst_dev, 0, static_cast<size_t>(bytes), Native(stream)));
  return absl::OkStatus();
}

Status CudaCopyRowsAsync(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
                         int64_t rows, Stream& stream) {
  if (rows < 0 || row_bytes < 0 || src_pitch < row_bytes || dst_pitch < row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("CudaCopyRowsAsync: rows (", rows, ") and row_bytes (", row_bytes,
                                                   ") must be >= 0 and the pitches (src ", src_pitch, ", dst ",
                                                   dst_pitch, ") >= row_bytes"));
  }
  WAVEEP_RETURN_IF_ERROR(CheckLaunch(src, dst, rows * row_bytes, stream, "CudaCopyRowsAsync"));
  if (rows == 0 || row_bytes == 0) return absl::OkStatus();
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(dst, static_cast<size_t>(dst_pitch), src,
                                                static_cast<size_t>(src_pitch), static_cast<size_t>(row_bytes),
                                                static_cast<size_t>(rows), cudaMemcpyDefault, Native(stream)));
  return absl::OkStatus();
}

}  // namespace waveep::kernels
