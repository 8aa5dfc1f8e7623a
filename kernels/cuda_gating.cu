// Copyright 2026 The waveep Authors.
//
// Top-k gating on the GPU: one thread block per token, scores in shared memory, the top-k chosen by k rounds of a
// block-wide argmax. The selection rule is the CPU's strict total order (descending biased score, ties to the lower
// expert id), so identical scores select identical experts; group scores and weight normalisation are computed by
// one thread in the CPU's order.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using cuda_internal::CheckCudaStream;
using cuda_internal::DeviceGuard;
using cuda_internal::Native;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxExperts = 4096;  // shared memory: 9 bytes per expert

struct GateKernelParams {
  int num_experts;
  int top_k;
  int n_group;
  int topk_group;
  bool softmax;
  bool group_limited;
  bool norm_topk_prob;
  float routed_scaling_factor;
};

// (value, index) under the CPU order: larger value first, then lower index.
struct Candidate {
  float value;
  int index;
};

__device__ __forceinline__ bool Better(const Candidate& a, const Candidate& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ Candidate WarpArgmax(Candidate c) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    Candidate other;
    other.value = __shfl_xor_sync(0xFFFFFFFFu, c.value, offset);
    other.index = __shfl_xor_sync(0xFFFFFFFFu, c.index, offset);
    if (Better(other, c)) c = other;
  }
  return c;
}

// Block-wide argmax; every thread gets the winner. `scratch` holds kWarps candidates.
__device__ Candidate BlockArgmax(Candidate c, Candidate* scratch) {
  c = WarpArgmax(c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = c;
  __syncthreads();
  Candidate best = scratch[0];
  for (int w = 1; w < kWarps; ++w) {
    if (Better(scratch[w], best)) best = scratch[w];
  }
  __syncthreads();  // scratch is reused by the next call
  return best;
}

// Fixed-shape tree reductions: the same order on every run, so results are reproducible.
__device__ float BlockMax(float v, float* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = fmaxf(r, scratch[w]);
  __syncthreads();
  return r;
}

__device__ float BlockSum(float v, float* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = __fadd_rn(r, scratch[w]);
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(kThreads)
    TopkGatingKernel(const float* __restrict__ logits, const float* __restrict__ bias, int64_t num_tokens,
                     GateKernelParams p, int32_t* __restrict__ topk_idx, float* __restrict__ topk_weights) {
  extern __shared__ float smem[];
  const int num_experts = p.num_experts;
  float* scores = smem;                                                                 // [E]
  float* biased = scores + num_experts;                                                 // [E]
  float* group_score = biased + num_experts;                                            // [n_group]
  unsigned char* eligible = reinterpret_cast<unsigned char*>(group_score + p.n_group);  // [E]
  __shared__ float reduce_scratch[kWarps];
  __shared__ Candidate argmax_scratch[kWarps];
  __shared__ int chosen[64];  // top_k <= 64 (checked on the host)

  const int group_size = num_experts / p.n_group;
  for (int64_t t = blockIdx.x; t < num_tokens; t += gridDim.x) {
    const float* row = logits + t * num_experts;
    if (p.softmax) {
      float local_max = -INFINITY;
      for (int e = threadIdx.x; e < num_experts; e += kThreads) local_max = fmaxf(local_max, row[e]);
      const float row_max = BlockMax(local_max, reduce_scratch);
      float local_sum = 0.0f;
      for (int e = threadIdx.x; e < num_experts; e += kThreads) {
        scores[e] = expf(__fsub_rn(row[e], row_max));
        local_sum = __fadd_rn(local_sum, scores[e]);
      }
      const float sum = BlockSum(local_sum, reduce_scratch);
      for (int e = threadIdx.x; e < num_experts; e += kThreads) scores[e] = __fdiv_rn(scores[e], sum);
    } else {
      for (int e = threadIdx.x; e < num_experts; e += kThreads)
        scores[e] = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-row[e])));
    }
    for (int e = threadIdx.x; e < num_experts; e += kThreads) {
      biased[e] = bias != nullptr ? __fadd_rn(scores[e], bias[e]) : scores[e];
      eligible[e] = p.group_limited ? 0 : 1;
    }
    __syncthreads();

    if (p.group_limited) {
      // One thread per group, in the CPU's sequential order (the top-2 sum is one addition either way).
      for (int g = threadIdx.x; g < p.n_group; g += kThreads) {
        const float* gs = biased + g * group_size;
        float best = -INFINITY, second = -INFINITY;
        if (!p.softmax) {
          for (int i = 0; i < group_size; ++i) {
            if (gs[i] > best) {
              second = best;
              best = gs[i];
            } else if (gs[i] > second) {
              second = gs[i];
            }
          }
          group_score[g] = group_size >= 2 ? __fadd_rn(best, second) : best;
        } else {
          for (int i = 0; i < group_size; ++i) best = fmaxf(best, gs[i]);
          group_score[g] = best;
        }
      }
      __syncthreads();
      // topk_group rounds of argmax over the groups; the winners' experts become eligible.
      for (int round = 0; round < p.topk_group; ++round) {
        Candidate c{-INFINITY, 0x7FFFFFFF};
        for (int g = threadIdx.x; g < p.n_group; g += kThreads) {
          const Candidate mine{group_score[g], g};
          if (Better(mine, c)) c = mine;
        }
        const Candidate winner = BlockArgmax(c, argmax_scratch);
        // Every remaining score is NaN (NaN or +inf logits, which the CPU path rejects and a kernel cannot report
        // per token): no group to mark. The same winner on every thread, so the whole block leaves together.
        if (winner.index >= p.n_group) break;
        for (int i = threadIdx.x; i < group_size; i += kThreads) eligible[winner.index * group_size + i] = 1;
        if (threadIdx.x == 0) group_score[winner.index] = NAN;  // never wins again: NaN compares false
        __syncthreads();
      }
    }

    for (int k = 0; k < p.top_k; ++k) {
      Candidate c{-INFINITY, 0x7FFFFFFF};
      for (int e = threadIdx.x; e < num_experts; e += kThreads) {
        if (!eligible[e]) continue;
        // NaN (from NaN / +inf logits) competes as -inf, so the chosen index stays in [0, E) whatever the input.
        const Candidate mine{isnan(biased[e]) ? -INFINITY : biased[e], e};
        if (Better(mine, c)) c = mine;
      }
      const Candidate winner = BlockArgmax(c, argmax_scratch);
      if (threadIdx.x == 0) {
        const int index = winner.index < num_experts ? winner.index : 0;  // no eligible expert left: NaN input
        chosen[k] = index;
        eligible[index] = 0;
      }
      __syncthreads();
    }

    if (threadIdx.x == 0) {
      int32_t* idx_out = topk_idx + t * p.top_k;
      float* w_out = topk_weights + t * p.top_k;
      float sum = 0.0f;
      for (int k = 0; k < p.top_k; ++k) sum = __fadd_rn(sum, scores[chosen[k]]);
      const bool renormalise = p.norm_topk_prob && sum > 0.0f;
      for (int k = 0; k < p.top_k; ++k) {
        const float w = renormalise ? __fdiv_rn(scores[chosen[k]], sum) : scores[chosen[k]];
        idx_out[k] = chosen[k];
        w_out[k] = __fmul_rn(w, p.routed_scaling_factor);
      }
    }
    __syncthreads();  // shared arrays are rewritten by the next token
  }
}

}  // namespace

Status CudaTopkGating(const float* logits_dev, const float* bias_dev, int64_t num_tokens, const GateParams& p,
                      int32_t* topk_idx_dev, float* topk_weights_dev, Stream& stream) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, "CudaTopkGating"));
  // The CPU entry point validates the parameters and returns before touching any pointer when there are no tokens.
  WAVEEP_RETURN_IF_ERROR(Annotate(TopkGating(nullptr, nullptr, 0, p, nullptr, nullptr), "CudaTopkGating"));
  if (num_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("CudaTopkGating: num_tokens < 0: ", num_tokens));
  if (p.num_experts > kMaxExperts)
    return absl::InvalidArgumentError(
        absl::StrCat("CudaTopkGating: num_experts ", p.num_experts, " exceeds the kernel's limit ", kMaxExperts));
  if (p.top_k > 64) return absl::InvalidArgumentError(absl::StrCat("CudaTopkGating: top_k ", p.top_k, " > 64"));
  if (num_tokens == 0) return absl::OkStatus();
  if (logits_dev == nullptr || topk_idx_dev == nullptr || topk_weights_dev == nullptr)
    return absl::InvalidArgumentError("CudaTopkGating: null logits, topk_idx or topk_weights");

  GateKernelParams kp;
  kp.num_experts = p.num_experts;
  kp.top_k = p.top_k;
  kp.n_group = p.n_group;
  kp.topk_group = p.topk_group;
  kp.softmax = p.scoring == Scoring::kSoftmax;
  kp.group_limited = p.n_group > 1 && p.topk_group < p.n_group;
  kp.norm_topk_prob = p.norm_topk_prob;
  kp.routed_scaling_factor = p.routed_scaling_factor;
  const size_t smem = sizeof(float) * (2 * static_cast<size_t>(p.num_experts) + p.n_group) + p.num_experts;
  constexpr size_t kMaxSmem = 48 << 10;  // the default dynamic shared memory limit per block
  if (smem > kMaxSmem)
    return absl::InvalidArgumentError(absl::StrCat("CudaTopkGating: num_experts ", p.num_experts, " with n_group ",
                                                   p.n_group, " needs ", smem, " bytes of shared memory, over the ",
                                                   kMaxSmem, " a block gets"));

  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(stream.device().ordinal));
  const int blocks = static_cast<int>(num_tokens < 65536 ? num_tokens : 65536);
  TopkGatingKernel<<<blocks, kThreads, smem, Native(stream)>>>(logits_dev, bias_dev, num_tokens, kp, topk_idx_dev,
                                                               topk_weights_dev);
  WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  return absl::OkStatus();
}

}  // namespace waveep::kernels
