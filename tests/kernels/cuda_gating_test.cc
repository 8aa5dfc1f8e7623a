// Copyright 2026 The waveep Authors.
//
// CudaTopkGating against TopkGating (the CPU reference). The selection must be identical wherever the decision is
// not a near-tie: the GPU's expf is within a few ulp of std::exp, so a slot may differ only when the two experts'
// biased scores are within 1e-5 (checked in double precision). Weights agree to 4e-6 relative (a handful of FP32
// ulp through exp and one division; plus the softmax denominator's summation-order term when the weights are not
// renormalised). Exact ties (equal logits) must break to the lower expert id on both sides.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "tests/kernels/cuda_test_util.h"

namespace waveep::kernels {
namespace {

using testing::DeviceArray;
using testing::MakeStream;

// Biased selection scores of one token, in double: what the decision compares.
std::vector<double> BiasedScores(const float* row, const float* bias, const GateParams& p) {
  const int e_count = p.num_experts;
  std::vector<double> s(e_count);
  if (p.scoring == Scoring::kSoftmax) {
    const double mx = *std::max_element(row, row + e_count);
    double sum = 0;
    for (int e = 0; e < e_count; ++e) sum += s[e] = std::exp(static_cast<double>(row[e]) - mx);
    for (double& v : s) v /= sum;
  } else {
    for (int e = 0; e < e_count; ++e) s[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
  }
  if (bias != nullptr) {
    for (int e = 0; e < e_count; ++e) s[e] += bias[e];
  }
  return s;
}

struct GatingCase {
  GateParams params;
  int64_t num_tokens;
  bool with_bias;
  uint32_t seed;
};

void RunAndCompare(const GatingCase& c, const std::vector<float>& logits, const std::vector<float>& bias) {
  const GateParams& p = c.params;
  const int64_t t_count = c.num_tokens;
  std::vector<int32_t> want_idx(t_count * p.top_k);
  std::vector<float> want_w(t_count * p.top_k);
  const float* bias_ptr = c.with_bias ? bias.data() : nullptr;
  ASSERT_TRUE(TopkGating(logits.data(), bias_ptr, t_count, p, want_idx.data(), want_w.data()).ok());

  auto stream = MakeStream(Device::Cuda(0), "gating");
  ASSERT_NE(stream, nullptr);
  DeviceArray<float> logits_dev(logits), bias_dev(bias);
  DeviceArray<int32_t> idx_dev(want_idx.size());
  DeviceArray<float> w_dev(want_w.size());
  ASSERT_TRUE(CudaTopkGating(logits_dev.get(), c.with_bias ? bias_dev.get() : nullptr, t_count, p, idx_dev.get(),
                             w_dev.get(), *stream)
                  .ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<int32_t> got_idx = idx_dev.ToHost();
  const std::vector<float> got_w = w_dev.ToHost();

  int near_ties = 0;
  for (int64_t t = 0; t < t_count; ++t) {
    const std::vector<double> s = BiasedScores(logits.data() + t * p.num_experts, bias_ptr, p);
    bool token_differs = false;
    for (int k = 0; k < p.top_k; ++k) {
      const int64_t i = t * p.top_k + k;
      ASSERT_GE(got_idx[i], 0);
      ASSERT_LT(got_idx[i], p.num_experts);
      if (got_idx[i] != want_idx[i]) {
        token_differs = true;
        ASSERT_NEAR(s[got_idx[i]], s[want_idx[i]], 1e-5)
            << "token " << t << " slot " << k << ": GPU chose " << got_idx[i] << ", CPU " << want_idx[i];
      }
    }
    if (token_differs) {
      ++near_ties;
      continue;  // weights of a near-tie token are renormalised over a different set
    }
    // Unnormalised softmax weights keep the full E-term denominator, whose sequential (CPU) and tree (GPU) sums
    // differ by at most (E - 1) * 2^-24 relative; renormalised weights cancel it.
    const bool full_sum = p.scoring == Scoring::kSoftmax && !p.norm_topk_prob;
    const double rel_tol = 4e-6 + (full_sum ? (p.num_experts - 1) * 0x1p-24 : 0.0);
    for (int k = 0; k < p.top_k; ++k) {
      const int64_t i = t * p.top_k + k;
      EXPECT_NEAR(got_w[i], want_w[i], rel_tol * std::fabs(want_w[i]) + 1e-30) << "token " << t << " slot " << k;
    }
  }
  EXPECT_LE(near_ties, t_count / 100 + 1) << "near-ties should be rare";

  // Run to run: bitwise identical.
  DeviceArray<int32_t> idx2(want_idx.size());
  DeviceArray<float> w2(want_w.size());
  ASSERT_TRUE(CudaTopkGating(logits_dev.get(), c.with_bias ? bias_dev.get() : nullptr, t_count, p, idx2.get(), w2.get(),
                             *stream)
                  .ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(idx2.ToHost(), got_idx);
  const std::vector<float> again = w2.ToHost();
  for (size_t i = 0; i < again.size(); ++i) ASSERT_EQ(testing::Bits(again[i]), testing::Bits(got_w[i]));
}

void RunCase(const GatingCase& c) {
  std::vector<float> logits = testing::RandomFloats(c.num_tokens * c.params.num_experts, c.seed, -4.0f, 4.0f);
  std::vector<float> bias = testing::RandomFloats(c.params.num_experts, c.seed + 1, -0.05f, 0.05f);
  RunAndCompare(c, logits, bias);
}

GateParams Params(int e, int k, Scoring scoring, int n_group = 1, int topk_group = 1, bool norm = true,
                  float scale = 1.0f) {
  GateParams p;
  p.num_experts = e;
  p.top_k = k;
  p.scoring = scoring;
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.norm_topk_prob = norm;
  p.routed_scaling_factor = scale;
  return p;
}

TEST(CudaGatingTest, CpuStreamOrStubIsRejected) {
  auto cpu = MakeStream(Device::Cpu(), "cpu");
  ASSERT_NE(cpu, nullptr);
  std::vector<float> logits(8, 0.5f), w(2);
  std::vector<int32_t> idx(2);
  const Status s =
      CudaTopkGating(logits.data(), nullptr, 1, Params(8, 2, Scoring::kSoftmax), idx.data(), w.data(), *cpu);
  EXPECT_EQ(s.code(), CudaKernelsCompiledIn() ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable)
      << s;
}

TEST(CudaGatingTest, SoftmaxMatchesCpu) {
  WAVEEP_SKIP_WITHOUT_GPU();
  RunCase({Params(128, 8, Scoring::kSoftmax, 1, 1, /*norm=*/false), 1000, false, 11});  // Qwen3-235B
  RunCase({Params(8, 2, Scoring::kSoftmax), 777, false, 12});                           // Mixtral
}

TEST(CudaGatingTest, SigmoidWithBiasAndGroupsMatchesCpu) {
  WAVEEP_SKIP_WITHOUT_GPU();
  RunCase({Params(256, 8, Scoring::kSigmoid, 8, 4, true, 2.5f), 1000, true, 21});  // DeepSeek-V3
  RunCase({Params(384, 6, Scoring::kSigmoid, 1, 1, true, 2.5f), 513, true, 22});   // V4-Pro
  RunCase({Params(256, 6, Scoring::kSigmoid, 1, 1, true, 1.5f), 300, true, 23});   // V4-Flash
  RunCase({Params(64, 4, Scoring::kSoftmax, 8, 2, true), 400, false, 24});         // softmax group max
  RunCase({Params(16, 3, Scoring::kSigmoid, 16, 5, true), 200, true, 25});         // one expert per group
}

TEST(CudaGatingTest, ExactTiesGoToTheLowerExpert) {
  WAVEEP_SKIP_WITHOUT_GPU();
  // Logits drawn from four values only: many experts share a score, so most selections are decided by the id.
  for (Scoring scoring : {Scoring::kSoftmax, Scoring::kSigmoid}) {
    const GateParams p = Params(64, 8, scoring, 8, 3);
    std::mt19937 rng(31);
    std::vector<float> logits(257 * 64);
    for (float& v : logits) v = static_cast<float>(static_cast<int>(rng() % 4)) - 1.5f;
    std::vector<float> bias(64, 0.0f);
    RunAndCompare({p, 257, false, 0}, logits, bias);
    // All logits equal: experts 0..7 in order.
    std::fill(logits.begin(), logits.end(), 0.25f);
    RunAndCompare({Params(64, 8, scoring), 257, false, 0}, logits, bias);
  }
}

TEST(CudaGatingTest, MaskedLogitsAndLargeExpertCounts) {
  WAVEEP_SKIP_WITHOUT_GPU();
  std::vector<float> logits = testing::RandomFloats(50 * 4096, 41, -3.0f, 3.0f);
  for (size_t i = 0; i < logits.size(); i += 3) logits[i] = -INFINITY;  // -inf is a legitimate mask
  std::vector<float> bias(4096, 0.0f);
  RunAndCompare({Params(4096, 16, Scoring::kSoftmax), 50, false, 0}, logits, bias);
}

TEST(CudaGatingTest, EdgeCasesAndBadArguments) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "gating");
  ASSERT_NE(stream, nullptr);
  DeviceArray<float> logits(16), w(4);
  DeviceArray<int32_t> idx(4);
  EXPECT_TRUE(CudaTopkGating(nullptr, nullptr, 0, Params(8, 2, Scoring::kSoftmax), nullptr, nullptr, *stream).ok());
  EXPECT_EQ(
      CudaTopkGating(logits.get(), nullptr, 2, Params(8, 9, Scoring::kSoftmax), idx.get(), w.get(), *stream).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      CudaTopkGating(logits.get(), nullptr, -1, Params(8, 2, Scoring::kSoftmax), idx.get(), w.get(), *stream).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      CudaTopkGating(logits.get(), nullptr, 1, Params(8192, 2, Scoring::kSoftmax), idx.get(), w.get(), *stream).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaTopkGating(nullptr, nullptr, 2, Params(8, 2, Scoring::kSoftmax), idx.get(), w.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(stream->Synchronize().ok());
}

}  // namespace
}  // namespace waveep::kernels
