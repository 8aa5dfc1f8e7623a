// Copyright 2026 The waveep Authors.
//
// Expert-major permutation on the GPU: a deterministic three-pass counting sort that reproduces the CPU order
// exactly (expert-major, then (token, slot) order within an expert).
//   1. count:   each chunk of kChunk consecutive pairs counts its pairs per expert (shared-memory atomics: counts do
//               not depend on the order of the increments);
//   2. scan:    per expert (one warp each), an exclusive prefix of its chunk counts; then one warp scans the
//               expert totals into expert_offsets;
//   3. scatter: one warp walks its chunk in pair order, 32 pairs at a time; lanes with the same expert rank
//               themselves with __match_any_sync + popc of the lower lanes, so a pair's row depends only on the
//               pairs before it, never on timing.
// Row gather/scatter are plain copies (bitwise), 16 bytes per lane when rows and pointers allow it.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using cuda_internal::CheckCudaStream;
using cuda_internal::DeviceGuard;
using cuda_internal::GridFor;
using cuda_internal::Native;
using cuda_internal::StreamScratch;

constexpr int kChunk = 1024;       // pairs per chunk = per warp in the count and scatter passes
constexpr int kMaxExperts = 4096;  // scatter keeps one int64 cursor per expert in shared memory

__global__ void __launch_bounds__(256) CountKernel(const int32_t* __restrict__ topk_idx, int64_t num_pairs,
                                                   int num_experts, int32_t* __restrict__ chunk_counts) {
  extern __shared__ int32_t counts[];  // [E]
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = begin + kChunk < num_pairs ? begin + kChunk : num_pairs;
  for (int64_t pair = begin + threadIdx.x; pair < end; pair += blockDim.x) {
    const int32_t e = topk_idx[pair];
    if (e >= 0 && e < num_experts) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  // Expert-major [E][num_chunks], so the per-expert scan reads contiguous memory.
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
    chunk_counts[static_cast<int64_t>(e) * gridDim.x + blockIdx.x] = counts[e];
}

// One warp per expert: chunk_counts[e][c] becomes, in place, the number of pairs of expert e in chunks before c
// (a warp-wide exclusive scan, 32 chunks per step); totals[e] gets the expert's pair count.
__global__ void __launch_bounds__(256) ScanChunksKernel(int32_t* __restrict__ chunk_counts, int num_chunks,
                                                        int num_experts, int64_t* __restrict__ totals) {
  const int lane = threadIdx.x % 32;
  const int e = static_cast<int>((static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32);
  if (e >= num_experts) return;
  int32_t* counts = chunk_counts + static_cast<int64_t>(e) * num_chunks;
  int64_t carry = 0;
  for (int base = 0; base < num_chunks; base += 32) {
    const int c = base + lane;
    const int32_t v = c < num_chunks ? counts[c] : 0;
    int32_t inclusive = v;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int32_t up = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    if (c < num_chunks) counts[c] = static_cast<int32_t>(carry + inclusive - v);
    carry += __shfl_sync(0xFFFFFFFFu, inclusive, 31);
  }
  if (lane == 0) totals[e] = carry;
}

// One warp: exclusive scan of the per-expert totals, 32 experts per step.
__global__ void __launch_bounds__(32)
    ScanExpertsKernel(const int64_t* __restrict__ totals, int num_experts, int64_t* __restrict__ expert_offsets) {
  const int lane = threadIdx.x;
  int64_t carry = 0;
  for (int base = 0; base < num_experts; base += 32) {
    const int e = base + lane;
    const int64_t v = e < num_experts ? totals[e] : 0;
    int64_t inclusive = v;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int64_t up = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    if (e < num_experts) expert_offsets[e] = carry + inclusive - v;
    carry += __shfl_sync(0xFFFFFFFFu, inclusive, 31);
  }
  if (lane == 0) expert_offsets[num_experts] = carry;
}

// One warp per chunk.
__global__ void __launch_bounds__(32)
    ScatterKernel(const int32_t* __restrict__ topk_idx, int64_t num_pairs, int num_experts,
                  const int32_t* __restrict__ chunk_prefix, const int64_t* __restrict__ expert_offsets,
                  int64_t* __restrict__ pair_of_row, int64_t* __restrict__ row_of_pair) {
  extern __shared__ int64_t cursor[];  // [E]
  const int lane = threadIdx.x;
  for (int e = lane; e < num_experts; e += 32)
    cursor[e] = expert_offsets[e] + chunk_prefix[static_cast<int64_t>(e) * gridDim.x + blockIdx.x];
  __syncwarp();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = begin + kChunk < num_pairs ? begin + kChunk : num_pairs;
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t pair = base + lane;
    const bool in_range = pair < end;
    const int32_t e = in_range ? topk_idx[pair] : -1;
    const bool valid = in_range && e >= 0 && e < num_experts;
    const int key = valid ? e : -1;
    const unsigned same = __match_any_sync(0xFFFFFFFFu, key);
    int64_t row = -1;
    if (valid) row = cursor[e] + __popc(same & lower_lanes);
    __syncwarp();
    // The highest lane of each expert's group advances that expert's cursor past the whole group.
    if (valid && (same >> lane) == 1u) cursor[e] += __popc(same);
    __syncwarp();
    if (in_range) {
      row_of_pair[pair] = row;
      if (valid) pair_of_row[row] = pair;
    }
  }
}

// Rows past the last routed pair exist only when some indices were out of range; mark them -1.
__global__ void FillUnusedRowsKernel(const int64_t* __restrict__ expert_offsets, int num_experts, int64_t num_pairs,
                                     int64_t* __restrict__ pair_of_row) {
  const int64_t used = expert_offsets[num_experts];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = used + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < num_pairs; r += stride)
    pair_of_row[r] = -1;
}

// ---- row copies ----------------------------------------------------------------------------------------------
// One warp per row, `Vec` per lane per step. kGather: dst[i] = src[src_rows[i] / divisor] (zeros for a negative
// index); otherwise dst[dst_rows[i]] = src[i] (negative indices skipped).
template <typename Vec, bool kGather>
__global__ void __launch_bounds__(256)
    CopyRowsKernel(const Vec* __restrict__ src, int64_t row_vecs, const int64_t* __restrict__ rows, int64_t num_rows,
                   int64_t divisor, Vec* __restrict__ dst) {
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t i = warp; i < num_rows; i += num_warps) {
    const int64_t index = rows[i];
    if (kGather) {
      Vec* d = dst + i * row_vecs;
      if (index < 0) {
        for (int64_t v = lane; v < row_vecs; v += 32) d[v] = Vec{};
      } else {
        const Vec* s = src + (index / divisor) * row_vecs;
        for (int64_t v = lane; v < row_vecs; v += 32) d[v] = s[v];
      }
    } else {
      if (index < 0) continue;
      const Vec* s = src + i * row_vecs;
      Vec* d = dst + index * row_vecs;
      for (int64_t v = lane; v < row_vecs; v += 32) d[v] = s[v];
    }
  }
}

template <bool kGather>
Status LaunchCopyRows(const void* src, int64_t row_bytes, const int64_t* rows, int64_t num_rows, int64_t divisor,
                      void* dst, Stream& stream, const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, what));
  if (row_bytes < 0 || num_rows < 0)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": row_bytes and num_rows must be >= 0, got ", row_bytes, ", ", num_rows));
  if (divisor <= 0) return absl::InvalidArgumentError(absl::StrCat(what, ": src_row_divisor must be > 0"));
  if (row_bytes == 0 || num_rows == 0) return absl::OkStatus();
  if (src == nullptr || rows == nullptr || dst == nullptr)
    return absl::InvalidArgumentError(absl::StrCat(what, ": null device pointer"));
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  const uintptr_t align = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst);
  const int blocks = GridFor(num_rows * 32, 256);
  if (row_bytes % 16 == 0 && align % 16 == 0) {
    CopyRowsKernel<uint4, kGather><<<blocks, 256, 0, Native(stream)>>>(
        static_cast<const uint4*>(src), row_bytes / 16, rows, num_rows, divisor, static_cast<uint4*>(dst));
  } else if (row_bytes % 4 == 0 && align % 4 == 0) {
    CopyRowsKernel<uint32_t, kGather><<<blocks, 256, 0, Native(stream)>>>(
        static_cast<const uint32_t*>(src), row_bytes / 4, rows, num_rows, divisor, static_cast<uint32_t*>(dst));
  } else {
    CopyRowsKernel<uint8_t, kGather><<<blocks, 256, 0, Native(stream)>>>(
        static_cast<const uint8_t*>(src), row_bytes, rows, num_rows, divisor, static_cast<uint8_t*>(dst));
  }
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace

Status CudaBuildExpertPermutation(const int32_t* topk_idx_dev, int64_t num_tokens, int top_k, int num_experts,
                                  int64_t* expert_offsets_dev, int64_t* pair_of_row_dev, int64_t* row_of_pair_dev,
                                  Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, "CudaBuildExpertPermutation"));
  if (num_tokens < 0 || top_k < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("CudaBuildExpertPermutation: num_tokens and top_k must be >= 0, got ", num_tokens, ", ", top_k));
  if (num_experts <= 0 || num_experts > kMaxExperts)
    return absl::InvalidArgumentError(
        absl::StrCat("CudaBuildExpertPermutation: num_experts must be in [1, ", kMaxExperts, "], got ", num_experts));
  // Per-chunk prefixes are int32; checked before the product, which could overflow int64.
  if (top_k > 0 && num_tokens > INT32_MAX / top_k)
    return absl::InvalidArgumentError(absl::StrCat("CudaBuildExpertPermutation: ", num_tokens, " tokens x top_k ",
                                                   top_k, " (token, slot) pairs exceed the int32 range"));
  const int64_t num_pairs = num_tokens * top_k;
  if (expert_offsets_dev == nullptr ||
      (num_pairs > 0 && (topk_idx_dev == nullptr || pair_of_row_dev == nullptr || row_of_pair_dev == nullptr)))
    return absl::InvalidArgumentError("CudaBuildExpertPermutation: null device pointer");
  const int num_chunks = static_cast<int>((num_pairs + kChunk - 1) / kChunk);

  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  const cudaStream_t s = Native(stream);
  if (num_pairs == 0) {
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(expert_offsets_dev, 0, sizeof(int64_t) * (num_experts + 1), s));
    return absl::OkStatus();
  }
  // Scratch: chunk counts [E][num_chunks] (int32), then the per-expert totals [E] (int64, 8-byte aligned).
  const size_t counts_bytes = (sizeof(int32_t) * static_cast<size_t>(num_chunks) * num_experts + 7) / 8 * 8;
  StreamScratch scratch(s);
  WAVEEP_RETURN_IF_ERROR(scratch.Allocate(counts_bytes + sizeof(int64_t) * num_experts));
  int32_t* chunk_counts = scratch.as<int32_t>();
  int64_t* totals = reinterpret_cast<int64_t*>(scratch.as<char>() + counts_bytes);
  CountKernel<<<num_chunks, 256, sizeof(int32_t) * num_experts, s>>>(topk_idx_dev, num_pairs, num_experts,
                                                                     chunk_counts);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  ScanChunksKernel<<<(num_experts + 7) / 8, 256, 0, s>>>(chunk_counts, num_chunks, num_experts, totals);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  ScanExpertsKernel<<<1, 32, 0, s>>>(totals, num_experts, expert_offsets_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  ScatterKernel<<<num_chunks, 32, sizeof(int64_t) * num_experts, s>>>(
      topk_idx_dev, num_pairs, num_experts, chunk_counts, expert_offsets_dev, pair_of_row_dev, row_of_pair_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  FillUnusedRowsKernel<<<GridFor(num_pairs, 256, 1024), 256, 0, s>>>(expert_offsets_dev, num_experts, num_pairs,
                                                                     pair_of_row_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  scratch.Free();
  return absl::OkStatus();
}

Status CudaGatherRows(const void* src_dev, int64_t row_bytes, const int64_t* src_rows_dev, int64_t num_rows,
                      void* dst_dev, Stream& stream, int64_t src_row_divisor) {
  return LaunchCopyRows<true>(src_dev, row_bytes, src_rows_dev, num_rows, src_row_divisor, dst_dev, stream,
                              "CudaGatherRows");
}

Status CudaScatterRows(const void* src_dev, int64_t row_bytes, const int64_t* dst_rows_dev, int64_t num_rows,
                       void* dst_dev, Stream& stream) {
  return LaunchCopyRows<false>(src_dev, row_bytes, dst_rows_dev, num_rows, 1, dst_dev, stream, "CudaScatterRows");
}

}  // namespace waveep::kernels
