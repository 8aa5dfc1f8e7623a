// Copyright 2026 The waveep Authors.
//
// Top-k gating (router) on the CPU: softmax (Mixtral, Qwen) or sigmoid with bias and group-limited selection
// (DeepSeek-V3 `Gate`, HF DeepseekV3TopkRouter).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

Status ValidateGateParams(const GateParams& p) {
  auto bad = [](absl::string_view field, auto&&... msg) {
    return absl::InvalidArgumentError(absl::StrCat("TopkGating: GateParams.", field, " ", msg...));
  };
  if (p.num_experts <= 0) return bad("num_experts", "must be > 0, got ", p.num_experts);
  if (p.top_k <= 0 || p.top_k > p.num_experts)
    return bad("top_k", "must be in [1, num_experts=", p.num_experts, "], got ", p.top_k);
  if (p.n_group <= 0 || p.num_experts % p.n_group != 0)
    return bad("n_group", "must be > 0 and divide num_experts=", p.num_experts, ", got ", p.n_group);
  if (p.topk_group <= 0 || p.topk_group > p.n_group)
    return bad("topk_group", "must be in [1, n_group=", p.n_group, "], got ", p.topk_group);
  const int64_t eligible = static_cast<int64_t>(p.topk_group) * (p.num_experts / p.n_group);
  if (eligible < p.top_k)
    return bad("topk_group", "too small: topk_group * experts per group = ", eligible, " < top_k ", p.top_k);
  if (!std::isfinite(p.routed_scaling_factor) || !(p.routed_scaling_factor > 0))
    return bad("routed_scaling_factor", "must be finite and > 0, got ", p.routed_scaling_factor);
  return absl::OkStatus();
}

}  // namespace

GateParams GateParamsFrom(const ModelConfig& m) {
  GateParams p;
  p.num_experts = m.num_experts;
  p.top_k = m.top_k;
  p.scoring = m.scoring;
  p.n_group = m.n_group;
  p.topk_group = m.topk_group;
  p.norm_topk_prob = m.norm_topk_prob;
  p.routed_scaling_factor = static_cast<float>(m.routed_scaling_factor);
  return p;
}

Status TopkGating(const float* logits, const float* bias, int64_t num_tokens, const GateParams& p, int32_t* topk_idx,
                  float* topk_weights) {
  WAVEEP_RETURN_IF_ERROR(ValidateGateParams(p));
  if (num_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("TopkGating: num_tokens < 0: ", num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  if (logits == nullptr || topk_idx == nullptr || topk_weights == nullptr)
    return absl::InvalidArgumentError("TopkGating: null logits, topk_idx or topk_weights");

  const int num_experts = p.num_experts;
  const int top_k = p.top_k;
  // Validate every input before writing any output (outputs are set only on success). NaN would break the strict
  // ordering the selection relies on, and +inf would turn softmax into NaN; -inf is a legitimate mask.
  for (int64_t t = 0; t < num_tokens; ++t) {
    bool all_masked = true;
    for (int e = 0; e < num_experts; ++e) {
      const float v = logits[t * num_experts + e];
      if (std::isnan(v) || v == std::numeric_limits<float>::infinity())
        return absl::InvalidArgumentError(absl::StrCat("TopkGating: logits[token ", t, ", expert ", e, "] = ", v));
      all_masked = all_masked && v == -std::numeric_limits<float>::infinity();
    }
    // Softmax over nothing but -inf is 0/0; sigmoid is fine (all scores 0).
    if (all_masked && p.scoring == Scoring::kSoftmax)
      return absl::InvalidArgumentError(absl::StrCat("TopkGating: every logit of token ", t, " is -inf (softmax)"));
  }
  if (bias != nullptr) {
    for (int e = 0; e < num_experts; ++e) {
      if (!std::isfinite(bias[e]))
        return absl::InvalidArgumentError(absl::StrCat("TopkGating: bias[expert ", e, "] = ", bias[e]));
    }
  }

  const int group_size = num_experts / p.n_group;
  const bool group_limited = p.n_group > 1 && p.topk_group < p.n_group;
  std::vector<float> scores(num_experts);
  std::vector<float> biased(num_experts);
  std::vector<float> group_score(p.n_group);
  std::vector<int> order(std::max(num_experts, p.n_group));
  std::vector<char> eligible(num_experts);

  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* row = logits + t * num_experts;
    if (p.scoring == Scoring::kSoftmax) {
      // Max-subtracted softmax: exp never overflows, and at least one term is exp(0) = 1 so the sum is >= 1.
      const float row_max = *std::max_element(row, row + num_experts);
      float sum = 0.0f;
      for (int e = 0; e < num_experts; ++e) {
        scores[e] = std::exp(row[e] - row_max);
        sum += scores[e];
      }
      for (int e = 0; e < num_experts; ++e) scores[e] /= sum;
    } else {
      for (int e = 0; e < num_experts; ++e) scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
    }
    for (int e = 0; e < num_experts; ++e) biased[e] = bias != nullptr ? scores[e] + bias[e] : scores[e];

    // Descending score, ties to the lower id: a strict total order, so the selection is deterministic.
    auto by_biased = [&](int a, int b) { return biased[a] > biased[b] || (biased[a] == biased[b] && a < b); };

    if (group_limited) {
      for (int g = 0; g < p.n_group; ++g) {
        const float* gs = biased.data() + g * group_size;
        if (p.scoring == Scoring::kSigmoid) {
          // DeepSeek-V3: a group is as good as its two best experts (one when groups hold a single expert).
          float best = -std::numeric_limits<float>::infinity(), second = best;
          for (int i = 0; i < group_size; ++i) {
            if (gs[i] > best) {
              second = best;
              best = gs[i];
            } else if (gs[i] > second) {
              second = gs[i];
            }
          }
          group_score[g] = group_size >= 2 ? best + second : best;
        } else {
          group_score[g] = *std::max_element(gs, gs + group_size);
        }
      }
      std::iota(order.begin(), order.begin() + p.n_group, 0);
      std::partial_sort(order.begin(), order.begin() + p.topk_group, order.begin() + p.n_group, [&](int a, int b) {
        return group_score[a] > group_score[b] || (group_score[a] == group_score[b] && a < b);
      });
      std::fill(eligible.begin(), eligible.end(), 0);
      for (int i = 0; i < p.topk_group; ++i) {
        std::fill(eligible.begin() + order[i] * group_size, eligible.begin() + (order[i] + 1) * group_size, 1);
      }
    } else {
      std::fill(eligible.begin(), eligible.end(), 1);
    }

    int num_candidates = 0;
    for (int e = 0; e < num_experts; ++e) {
      if (eligible[e]) order[num_candidates++] = e;
    }
    std::partial_sort(order.begin(), order.begin() + top_k, order.begin() + num_candidates, by_biased);

    int32_t* idx_out = topk_idx + t * top_k;
    float* w_out = topk_weights + t * top_k;
    float sum = 0.0f;
    for (int k = 0; k < top_k; ++k) {
      idx_out[k] = order[k];
      w_out[k] = scores[order[k]];
      sum += w_out[k];
    }
    // A zero sum (every selected softmax score underflowed) leaves the weights at zero rather than NaN.
    const bool renormalise = p.norm_topk_prob && sum > 0.0f;
    for (int k = 0; k < top_k; ++k) {
      const float w = renormalise ? w_out[k] / sum : w_out[k];
      w_out[k] = w * p.routed_scaling_factor;
    }
  }
  return absl::OkStatus();
}

}  // namespace waveep::kernels
