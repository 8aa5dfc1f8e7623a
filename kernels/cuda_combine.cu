// Copyright 2026 The waveep Authors.
//
// Weighted combine on the GPU, bitwise equal to CombineReduceF32/CombineReduceBf16 (combine.cc): each output element
// starts at +0 and adds fl(w * x) slot by slot in k order, with __fmul_rn/__fadd_rn so the compiler cannot contract
// the pair into an FMA. Threads own disjoint output elements, so there are no atomics and nothing depends on timing.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using cuda_internal::Bf16Bits;
using cuda_internal::CheckCudaStream;
using cuda_internal::DeviceGuard;
using cuda_internal::Native;

constexpr int kThreads = 256;

// kVec consecutive elements per thread (4 when the rows allow 16-byte FP32 / 8-byte BF16 accesses).
template <typename RowT, int kVec>
struct VecLoad;
template <>
struct VecLoad<float, 4> {
  __device__ static void Load(const float* p, float* v) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  }
};
template <>
struct VecLoad<float, 1> {
  __device__ static void Load(const float* p, float* v) { v[0] = *p; }
};
template <>
struct VecLoad<uint16_t, 4> {
  __device__ static void Load(const uint16_t* p, float* v) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    v[0] = __uint_as_float(x.x << 16), v[1] = __uint_as_float(x.x & 0xFFFF0000u);
    v[2] = __uint_as_float(x.y << 16), v[3] = __uint_as_float(x.y & 0xFFFF0000u);
  }
};
template <>
struct VecLoad<uint16_t, 1> {
  __device__ static void Load(const uint16_t* p, float* v) { v[0] = Bf16Bits(*p); }
};

template <typename RowT, int kVec>
__global__ void __launch_bounds__(kThreads)
    CombineKernel(const RowT* __restrict__ rows, const int64_t* __restrict__ row_of_pair,
                  const float* __restrict__ topk_weights, int64_t num_tokens, int top_k, int64_t hidden,
                  float* __restrict__ out) {
  const int64_t vecs = hidden / kVec;
  for (int64_t t = blockIdx.x; t < num_tokens; t += gridDim.x) {
    for (int64_t v = threadIdx.x; v < vecs; v += kThreads) {
      float acc[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] = 0.0f;
      for (int k = 0; k < top_k; ++k) {
        const int64_t row = row_of_pair[t * top_k + k];
        if (row < 0) continue;
        const float w = topk_weights[t * top_k + k];
        float x[kVec];
        VecLoad<RowT, kVec>::Load(rows + row * hidden + v * kVec, x);
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[j] = __fadd_rn(acc[j], __fmul_rn(w, x[j]));
      }
      float* o = out + t * hidden + v * kVec;
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[j] = acc[j];
    }
  }
}

template <typename RowT>
Status LaunchCombine(const RowT* rows, const int64_t* row_of_pair, const float* topk_weights, int64_t num_tokens,
                     int top_k, int64_t hidden, float* out, Stream& stream, const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, what));
  if (num_tokens < 0 || top_k < 0 || hidden < 0)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": num_tokens, top_k and hidden must be >= 0, got ", num_tokens, ", ", top_k, ", ", hidden));
  if (num_tokens == 0 || hidden == 0) return absl::OkStatus();
  if (out == nullptr || (top_k > 0 && (rows == nullptr || row_of_pair == nullptr || topk_weights == nullptr)))
    return absl::InvalidArgumentError(absl::StrCat(what, ": null device pointer"));
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  const int blocks = static_cast<int>(num_tokens < 65536 ? num_tokens : 65536);
  const uintptr_t align = reinterpret_cast<uintptr_t>(rows) | reinterpret_cast<uintptr_t>(out);
  if (hidden % 4 == 0 && align % 16 == 0) {
    CombineKernel<RowT, 4>
        <<<blocks, kThreads, 0, Native(stream)>>>(rows, row_of_pair, topk_weights, num_tokens, top_k, hidden, out);
  } else {
    CombineKernel<RowT, 1>
        <<<blocks, kThreads, 0, Native(stream)>>>(rows, row_of_pair, topk_weights, num_tokens, top_k, hidden, out);
  }
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace

Status CudaCombineReduceF32(const float* rows_dev, const int64_t* row_of_pair_dev, const float* topk_weights_dev,
                            int64_t num_tokens, int top_k, int64_t hidden, float* out_dev, Stream& stream) {
  return LaunchCombine(rows_dev, row_of_pair_dev, topk_weights_dev, num_tokens, top_k, hidden, out_dev, stream,
                       "CudaCombineReduceF32");
}

Status CudaCombineReduceBf16(const uint16_t* rows_dev, const int64_t* row_of_pair_dev, const float* topk_weights_dev,
                             int64_t num_tokens, int top_k, int64_t hidden, float* out_dev, Stream& stream) {
  return LaunchCombine(rows_dev, row_of_pair_dev, topk_weights_dev, num_tokens, top_k, hidden, out_dev, stream,
                       "CudaCombineReduceBf16");
}

}  // namespace waveep::kernels
