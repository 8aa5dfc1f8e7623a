// Copyright 2026 The waveep Authors.
//
// TopkGating against a naive reference (full stable sorts, explicit masks) and hand-computed cases for
// group-limited routing, bias, normalisation, scaling and ties.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using ::testing::HasSubstr;

// Straightforward restatement of the contract in kernels.h, one token at a time, in FP32 like the implementation.
void ReferenceGate(const std::vector<float>& logits, const float* bias, int64_t num_tokens, const GateParams& p,
                   std::vector<int32_t>* idx, std::vector<float>* weights) {
  const int num_experts = p.num_experts;
  idx->assign(num_tokens * p.top_k, -1);
  weights->assign(num_tokens * p.top_k, 0.0f);
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::vector<float> score(num_experts), biased(num_experts);
    const float* l = logits.data() + t * num_experts;
    if (p.scoring == Scoring::kSoftmax) {
      float m = l[0];
      for (int e = 1; e < num_experts; ++e) m = std::max(m, l[e]);
      float sum = 0;
      for (int e = 0; e < num_experts; ++e) sum += std::exp(l[e] - m);
      for (int e = 0; e < num_experts; ++e) score[e] = std::exp(l[e] - m) / sum;
    } else {
      for (int e = 0; e < num_experts; ++e) score[e] = 1.0f / (1.0f + std::exp(-l[e]));
    }
    for (int e = 0; e < num_experts; ++e) biased[e] = score[e] + (bias ? bias[e] : 0.0f);

    std::vector<bool> allowed(num_experts, true);
    if (p.n_group > 1) {
      const int group_size = num_experts / p.n_group;
      std::vector<float> group_score(p.n_group);
      for (int g = 0; g < p.n_group; ++g) {
        std::vector<float> members(biased.begin() + g * group_size, biased.begin() + (g + 1) * group_size);
        std::sort(members.begin(), members.end(), std::greater<float>());
        group_score[g] = p.scoring == Scoring::kSigmoid && group_size >= 2 ? members[0] + members[1] : members[0];
      }
      std::vector<int> groups(p.n_group);
      std::iota(groups.begin(), groups.end(), 0);
      std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return group_score[a] > group_score[b]; });
      std::fill(allowed.begin(), allowed.end(), false);
      for (int i = 0; i < p.topk_group; ++i)
        for (int j = 0; j < group_size; ++j) allowed[groups[i] * group_size + j] = true;
    }
    std::vector<int> candidates;
    for (int e = 0; e < num_experts; ++e)
      if (allowed[e]) candidates.push_back(e);
    std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) { return biased[a] > biased[b]; });
    float sum = 0;
    for (int k = 0; k < p.top_k; ++k) sum += score[candidates[k]];
    for (int k = 0; k < p.top_k; ++k) {
      (*idx)[t * p.top_k + k] = candidates[k];
      float w = score[candidates[k]];
      if (p.norm_topk_prob) w /= sum;
      (*weights)[t * p.top_k + k] = w * p.routed_scaling_factor;
    }
  }
}

std::vector<float> RandomVector(int64_t n, float magnitude, uint64_t seed) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = magnitude * UniformSym(seed, RngStream::kTest, i);
  return v;
}

GateParams Params(int num_experts, int top_k, Scoring scoring, int n_group = 1, int topk_group = 1, bool norm = true,
                  float scaling = 1.0f) {
  GateParams p;
  p.num_experts = num_experts;
  p.top_k = top_k;
  p.scoring = scoring;
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.norm_topk_prob = norm;
  p.routed_scaling_factor = scaling;
  return p;
}

void ExpectMatchesReference(const GateParams& p, bool with_bias, uint64_t seed) {
  constexpr int64_t kTokens = 200;
  const std::vector<float> logits = RandomVector(kTokens * p.num_experts, 4.0f, seed);
  const std::vector<float> bias = RandomVector(p.num_experts, 0.3f, seed + 1000);
  const float* bias_ptr = with_bias ? bias.data() : nullptr;
  std::vector<int32_t> idx(kTokens * p.top_k), ref_idx;
  std::vector<float> w(kTokens * p.top_k), ref_w;
  ASSERT_TRUE(TopkGating(logits.data(), bias_ptr, kTokens, p, idx.data(), w.data()).ok());
  ReferenceGate(logits, bias_ptr, kTokens, p, &ref_idx, &ref_w);
  EXPECT_EQ(idx, ref_idx);
  for (size_t i = 0; i < w.size(); ++i) {
    // Same FP32 formulas as the implementation; only the evaluation order of the softmax sum may differ, a few
    // ulps (E * 2^-24 ~ 4e-6 relative at worst for E = 64), so 1e-5 relative is generous yet catches any bug.
    EXPECT_NEAR(w[i], ref_w[i], 1e-5f * std::fabs(ref_w[i])) << "pair " << i;
  }
}

TEST(TopkGatingTest, SoftmaxMatchesReference) {
  ExpectMatchesReference(Params(8, 2, Scoring::kSoftmax), false, 1);                         // Mixtral-8x7B
  ExpectMatchesReference(Params(64, 8, Scoring::kSoftmax), false, 2);                        // Qwen3-style
  ExpectMatchesReference(Params(64, 8, Scoring::kSoftmax, 1, 1, /*norm=*/false), false, 3);  // norm off
  ExpectMatchesReference(Params(64, 6, Scoring::kSoftmax, 1, 1, true, 1.5f), true, 4);       // with bias
}

TEST(TopkGatingTest, SigmoidGroupLimitedMatchesReference) {
  ExpectMatchesReference(Params(64, 8, Scoring::kSigmoid, 8, 4, true, 2.5f), true, 5);  // DeepSeek-V3 shape
  ExpectMatchesReference(Params(64, 8, Scoring::kSigmoid, 8, 4, true, 2.5f), false, 6);
  ExpectMatchesReference(Params(16, 4, Scoring::kSigmoid, 4, 2, true, 2.5f), true, 7);  // tiny preset
  ExpectMatchesReference(Params(32, 4, Scoring::kSigmoid, 1, 1, false, 1.0f), true, 8);
  ExpectMatchesReference(Params(32, 4, Scoring::kSoftmax, 8, 3, true, 1.0f), true, 9);  // softmax groups: max
  ExpectMatchesReference(Params(8, 3, Scoring::kSigmoid, 8, 5, true, 1.0f), true, 10);  // one expert per group
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(TopkGatingTest, GroupMaskExcludesTheBestExpertOfAWeakGroup) {
  // Groups {0,1} {2,3} {4,5} {6,7}. Expert 0 has the best score, but its group's top-2 sum is the lowest but one.
  const std::vector<float> logits = {3, -3, 2, 2, 1, 1, 0, 0};
  std::vector<int32_t> idx(2);
  std::vector<float> w(2);
  ASSERT_TRUE(TopkGating(logits.data(), nullptr, 1, Params(8, 2, Scoring::kSigmoid, 4, 2), idx.data(), w.data()).ok());
  EXPECT_EQ(idx, (std::vector<int32_t>{2, 3}));  // groups 1 and 2 win; 2 and 3 tie, lower id first
  EXPECT_FLOAT_EQ(w[0], 0.5f);
  EXPECT_FLOAT_EQ(w[1], 0.5f);
  // Without group limits expert 0 is chosen.
  ASSERT_TRUE(TopkGating(logits.data(), nullptr, 1, Params(8, 2, Scoring::kSigmoid), idx.data(), w.data()).ok());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 2}));
}

TEST(TopkGatingTest, BiasChangesSelectionButNotWeights) {
  const std::vector<float> logits = {3, -3, 2, 2, 1, 1, 0.5f, 0};
  const std::vector<float> bias = {0, 0, 0, 0, 0, 0, 0.6f, 0.6f};
  std::vector<int32_t> idx(2);
  std::vector<float> w(2);
  const GateParams p = Params(8, 2, Scoring::kSigmoid, 4, 2, true, 2.5f);
  ASSERT_TRUE(TopkGating(logits.data(), bias.data(), 1, p, idx.data(), w.data()).ok());
  // Group 3's biased top-2 sum (0.62 + 0.6 + 0.5 + 0.6 = 2.32) now beats group 1's (1.76): experts 6 and 7 win.
  EXPECT_EQ(idx, (std::vector<int32_t>{6, 7}));
  // Weights are the *unbiased* sigmoid scores renormalised (not (s + b) / sum(s + b) = 0.526 / 0.474), times 2.5.
  const double s6 = Sigmoid(0.5), s7 = Sigmoid(0.0);
  EXPECT_NEAR(w[0], 2.5 * s6 / (s6 + s7), 1e-6);
  EXPECT_NEAR(w[1], 2.5 * s7 / (s6 + s7), 1e-6);
}

TEST(TopkGatingTest, ConstantBiasLeavesResultUnchanged) {
  // Adding the same bias to every expert shifts all scores and group scores uniformly: selection and (unbiased)
  // weights must be bit-identical.
  constexpr int64_t kTokens = 64;
  const GateParams p = Params(32, 4, Scoring::kSigmoid, 4, 2, true, 2.5f);
  const std::vector<float> logits = RandomVector(kTokens * 32, 3.0f, 11);
  const std::vector<float> bias(32, 0.25f);
  std::vector<int32_t> idx_a(kTokens * 4), idx_b(kTokens * 4);
  std::vector<float> w_a(kTokens * 4), w_b(kTokens * 4);
  ASSERT_TRUE(TopkGating(logits.data(), nullptr, kTokens, p, idx_a.data(), w_a.data()).ok());
  ASSERT_TRUE(TopkGating(logits.data(), bias.data(), kTokens, p, idx_b.data(), w_b.data()).ok());
  EXPECT_EQ(idx_a, idx_b);
  EXPECT_EQ(w_a, w_b);
}

TEST(TopkGatingTest, NormalisationAndScaling) {
  constexpr int64_t kTokens = 50;
  const std::vector<float> logits = RandomVector(kTokens * 16, 2.0f, 12);
  std::vector<int32_t> idx(kTokens * 4);
  std::vector<float> w(kTokens * 4);
  // norm on: the K weights sum to routed_scaling_factor (FP32 sum of 4 terms: 1e-6 relative).
  ASSERT_TRUE(TopkGating(logits.data(), nullptr, kTokens, Params(16, 4, Scoring::kSigmoid, 1, 1, true, 2.5f),
                         idx.data(), w.data())
                  .ok());
  for (int64_t t = 0; t < kTokens; ++t) {
    EXPECT_NEAR(w[t * 4] + w[t * 4 + 1] + w[t * 4 + 2] + w[t * 4 + 3], 2.5f, 2.5e-6f);
  }
  // norm off: each weight is the raw score times the factor.
  ASSERT_TRUE(TopkGating(logits.data(), nullptr, kTokens, Params(16, 4, Scoring::kSigmoid, 1, 1, false, 2.0f),
                         idx.data(), w.data())
                  .ok());
  for (int64_t t = 0; t < kTokens; ++t) {
    for (int k = 0; k < 4; ++k) {
      EXPECT_NEAR(w[t * 4 + k], 2.0 * Sigmoid(logits[t * 16 + idx[t * 4 + k]]), 1e-6);
      if (k > 0) {
        EXPECT_GE(w[t * 4 + k - 1], w[t * 4 + k]);  // slots in descending score order
      }
    }
  }
  // Softmax with norm off: weights are softmax probabilities, summing to < 1.
  ASSERT_TRUE(TopkGating(logits.data(), nullptr, kTokens, Params(16, 4, Scoring::kSoftmax, 1, 1, false, 1.0f),
                         idx.data(), w.data())
                  .ok());
  for (int64_t t = 0; t < kTokens; ++t) EXPECT_LT(w[t * 4] + w[t * 4 + 1] + w[t * 4 + 2] + w[t * 4 + 3], 1.0f);
}

TEST(TopkGatingTest, TiesGoToTheLowerExpertId) {
  std::vector<int32_t> idx(3);
  std::vector<float> w(3);
  const std::vector<float> flat(8, 0.7f);
  ASSERT_TRUE(TopkGating(flat.data(), nullptr, 1, Params(8, 3, Scoring::kSoftmax), idx.data(), w.data()).ok());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2}));
  for (float v : w) EXPECT_FLOAT_EQ(v, 1.0f / 3);
  // Tied groups too: groups 0 and 1 win, then experts 0, 1, 2.
  ASSERT_TRUE(TopkGating(flat.data(), nullptr, 1, Params(8, 3, Scoring::kSigmoid, 4, 2), idx.data(), w.data()).ok());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2}));
  const std::vector<float> partial = {1, 5, 0, 5, 5, 2, 0, 0};
  ASSERT_TRUE(TopkGating(partial.data(), nullptr, 1, Params(8, 3, Scoring::kSoftmax), idx.data(), w.data()).ok());
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3, 4}));
}

TEST(TopkGatingTest, MinusInfinityMasksAnExpert) {
  const std::vector<float> logits = {5, -INFINITY, 1, 2};
  std::vector<int32_t> idx(2);
  std::vector<float> w(2);
  ASSERT_TRUE(TopkGating(logits.data(), nullptr, 1, Params(4, 2, Scoring::kSoftmax), idx.data(), w.data()).ok());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 3}));
  const std::vector<float> two_live = {-INFINITY, 0.5f, -INFINITY, -INFINITY};
  ASSERT_TRUE(
      TopkGating(two_live.data(), nullptr, 1, Params(4, 2, Scoring::kSoftmax, 1, 1, false), idx.data(), w.data()).ok());
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 0}));  // the masked runner-up has weight 0, ties to the lower id
  EXPECT_EQ(w[0], 1.0f);
  EXPECT_EQ(w[1], 0.0f);
}

TEST(TopkGatingTest, InvalidParamsNameTheField) {
  const std::vector<float> logits = RandomVector(2 * 8, 1.0f, 13);
  std::vector<int32_t> idx(16, -7);
  std::vector<float> w(16, -7.0f);
  struct Case {
    GateParams p;
    const char* field;
  };
  const Case cases[] = {
      {Params(0, 1, Scoring::kSoftmax), "num_experts"},
      {Params(8, 0, Scoring::kSoftmax), "top_k"},
      {Params(8, 9, Scoring::kSoftmax), "top_k"},
      {Params(8, 2, Scoring::kSigmoid, 3, 1), "n_group"},
      {Params(8, 2, Scoring::kSigmoid, 0, 1), "n_group"},
      {Params(8, 2, Scoring::kSigmoid, 4, 0), "topk_group"},
      {Params(8, 2, Scoring::kSigmoid, 4, 5), "topk_group"},
      {Params(8, 5, Scoring::kSigmoid, 4, 2), "topk_group"},  // 2 groups x 2 experts < 5
      {Params(8, 2, Scoring::kSigmoid, 1, 1, true, 0.0f), "routed_scaling_factor"},
      {Params(8, 2, Scoring::kSigmoid, 1, 1, true, std::nanf("")), "routed_scaling_factor"},
  };
  for (const Case& c : cases) {
    Status s = TopkGating(logits.data(), nullptr, 2, c.p, idx.data(), w.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.field));
  }
  std::vector<float> bad = logits;
  bad[1 * 8 + 5] = std::nanf("");
  Status s = TopkGating(bad.data(), nullptr, 2, Params(8, 2, Scoring::kSoftmax), idx.data(), w.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token 1, expert 5"));
  bad[1 * 8 + 5] = INFINITY;
  EXPECT_EQ(TopkGating(bad.data(), nullptr, 2, Params(8, 2, Scoring::kSigmoid), idx.data(), w.data()).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> masked(16, -INFINITY);
  EXPECT_EQ(TopkGating(masked.data(), nullptr, 2, Params(8, 2, Scoring::kSoftmax), idx.data(), w.data()).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> bad_bias(8, 0.0f);
  bad_bias[3] = INFINITY;
  EXPECT_EQ(TopkGating(logits.data(), bad_bias.data(), 2, Params(8, 2, Scoring::kSigmoid), idx.data(), w.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TopkGating(logits.data(), nullptr, 2, Params(8, 2, Scoring::kSigmoid), nullptr, w.data()).code(),
            absl::StatusCode::kInvalidArgument);
  // Outputs are written only on success.
  for (int32_t v : idx) EXPECT_EQ(v, -7);
  for (float v : w) EXPECT_EQ(v, -7.0f);
  EXPECT_TRUE(TopkGating(nullptr, nullptr, 0, Params(8, 2, Scoring::kSigmoid), nullptr, nullptr).ok());
}

TEST(TopkGatingTest, GateParamsFromModelConfig) {
  ModelConfig m;
  m.num_experts = 256;
  m.top_k = 8;
  m.scoring = Scoring::kSigmoid;
  m.n_group = 8;
  m.topk_group = 4;
  m.norm_topk_prob = false;
  m.routed_scaling_factor = 2.5;
  const GateParams p = GateParamsFrom(m);
  EXPECT_EQ(p.num_experts, 256);
  EXPECT_EQ(p.top_k, 8);
  EXPECT_EQ(p.scoring, Scoring::kSigmoid);
  EXPECT_EQ(p.n_group, 8);
  EXPECT_EQ(p.topk_group, 4);
  EXPECT_FALSE(p.norm_topk_prob);
  EXPECT_EQ(p.routed_scaling_factor, 2.5f);
}

}  // namespace
}  // namespace waveep::kernels
