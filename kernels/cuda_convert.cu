// Copyright 2026 The waveep Authors.
//
// Device-side BF16 <-> FP32 conversion. Bit-identical to the CPU reference in convert.cc (tests compare all 65536
// BF16 patterns and the rounding ties), which is why it does its own bit manipulation instead of calling
// __float2bfloat16_rn: that intrinsic canonicalises NaN payloads, the CPU path keeps them.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/kernels.h"

// WAVEEP_CUDA_RETURN_IF_ERROR comes from runtime/status.h.

namespace waveep::kernels {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; the grid-stride loop covers the rest.
constexpr int64_t kMaxBlocks = 8192;

// NOTES: must stay identical to FloatToBf16 in convert.cc.
__device__ __forceinline__ uint16_t DeviceFloatToBf16(float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

__global__ void F32ToBf16Kernel(const float* __restrict__ in, uint16_t* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = DeviceFloatToBf16(in[i]);
  }
}

__global__ void Bf16ToF32Kernel(const uint16_t* __restrict__ in, float* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __uint_as_float(static_cast<uint32_t>(in[i]) << 16);
  }
}

Status CheckLaunch(const void* in, const void* out, int64_t n, const Stream& stream, const char* what) {
  if (stream.device().is_cpu())
    return absl::InvalidArgumentError(absl::StrCat(what, ": stream '", stream.name(), "' is a CPU stream"));
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": n < 0: ", n));
  if (n > 0 && (in == nullptr || out == nullptr))
    return absl::InvalidArgumentError(absl::StrCat(what, ": null device pointer"));
  return absl::OkStatus();
}

// Launches on the stream's device and restores the caller's current device afterwards.
template <typename In, typename Out>
Status Launch(void (*kernel)(const In*, Out*, int64_t), const In* in, Out* out, int64_t n, Stream& stream) {
  if (n == 0) return absl::OkStatus();
  int previous_device = 0;
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous_device));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(stream.device().ordinal));
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
  kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream.native())>>>(in, out, n);
  const cudaError_t launch_rc = cudaGetLastError();
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(previous_device));
  WAVEEP_CUDA_RETURN_IF_ERROR(launch_rc);
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

}  // namespace waveep::kernels
