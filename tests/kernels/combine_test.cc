// Copyright 2026 The waveep Authors.
//
// Combine-reduce against a naive loop in slot order (bitwise), and the whole CPU MoE layer (gating, permute,
// grouped GEMMs, SwiGLU, combine) against a per-token evaluation of the layer's formula (docs/architecture.md) in
// double.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

std::vector<float> RandomVector(int64_t n, uint64_t seed, float magnitude = 1.0f) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = magnitude * UniformSym(seed, RngStream::kTest, i);
  return v;
}

// out starts at +0 and adds w * row slot by slot: the order the contract fixes. This file is compiled with
// -ffp-contract=off (see CMakeLists.txt) so `acc += w * x` is two roundings here as in the library.
std::vector<float> NaiveCombine(const std::vector<float>& rows, const std::vector<int64_t>& row_of_pair,
                                const std::vector<float>& w, int64_t num_tokens, int top_k, int64_t hidden) {
  std::vector<float> out(num_tokens * hidden);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t h = 0; h < hidden; ++h) {
      float acc = 0.0f;
      for (int k = 0; k < top_k; ++k) {
        const int64_t r = row_of_pair[t * top_k + k];
        if (r >= 0) acc += w[t * top_k + k] * rows[r * hidden + h];
      }
      out[t * hidden + h] = acc;
    }
  }
  return out;
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(CombineReduceTest, F32MatchesSlotOrderBitwise) {
  constexpr int64_t kTokens = 41, kHidden = 72;
  constexpr int kTopK = 6;
  constexpr int64_t kRows = kTokens * kTopK;
  const std::vector<float> rows = RandomVector(kRows * kHidden, 1, 10.0f);
  const std::vector<float> w = RandomVector(kTokens * kTopK, 2);
  std::mt19937 rng(3);
  std::vector<int64_t> row_of_pair(kTokens * kTopK);
  for (int64_t i = 0; i < kTokens * kTopK; ++i) row_of_pair[i] = rng() % 5 == 0 ? -1 : rng() % kRows;
  std::vector<float> out(kTokens * kHidden, 77.0f);  // overwritten, not accumulated into
  CombineReduceF32(rows.data(), row_of_pair.data(), w.data(), kTokens, kTopK, kHidden, out.data());
  EXPECT_TRUE(BitwiseEqual(out, NaiveCombine(rows, row_of_pair, w, kTokens, kTopK, kHidden)));
  // And the slot-order sum is a faithful sum: within K roundings of the exact value (checked in double).
  for (int64_t t = 0; t < kTokens; ++t) {
    for (int64_t h = 0; h < kHidden; ++h) {
      double exact = 0, magnitude = 0;
      for (int k = 0; k < kTopK; ++k) {
        const int64_t r = row_of_pair[t * kTopK + k];
        if (r < 0) continue;
        exact += static_cast<double>(w[t * kTopK + k]) * rows[r * kHidden + h];
        magnitude += std::fabs(static_cast<double>(w[t * kTopK + k]) * rows[r * kHidden + h]);
      }
      // 2K roundings of at most 2^-24 relative each, on partial sums bounded by `magnitude`.
      ASSERT_NEAR(out[t * kHidden + h], exact, 2 * kTopK * 0x1p-24 * magnitude);
    }
  }
}

TEST(CombineReduceTest, AllSlotsSkippedGivesZero) {
  const std::vector<float> rows = RandomVector(4 * 8, 4);
  const std::vector<int64_t> row_of_pair = {-1, -1, 0, 3};
  const std::vector<float> w = {0.5f, 0.25f, 1.0f, 2.0f};
  std::vector<float> out(2 * 8, 5.0f);
  CombineReduceF32(rows.data(), row_of_pair.data(), w.data(), 2, 2, 8, out.data());
  for (int h = 0; h < 8; ++h) {
    EXPECT_EQ(out[h], 0.0f);
    EXPECT_EQ(out[8 + h], 0.0f + 1.0f * rows[h] + 2.0f * rows[3 * 8 + h]);
  }
}

TEST(CombineReduceTest, Bf16RowsEqualF32CombineOfWidenedRows) {
  constexpr int64_t kTokens = 17, kHidden = 40;
  constexpr int kTopK = 4;
  const std::vector<float> rows_f = RandomVector(kTokens * kTopK * kHidden, 5, 3.0f);
  std::vector<uint16_t> rows_bf(rows_f.size());
  ConvertF32ToBf16(rows_f.data(), rows_bf.data(), static_cast<int64_t>(rows_f.size()));
  std::vector<float> widened(rows_f.size());
  ConvertBf16ToF32(rows_bf.data(), widened.data(), static_cast<int64_t>(rows_f.size()));
  const std::vector<float> w = RandomVector(kTokens * kTopK, 6);
  std::vector<int64_t> row_of_pair(kTokens * kTopK);
  for (int64_t i = 0; i < kTokens * kTopK; ++i) row_of_pair[i] = (i * 7) % (kTokens * kTopK);
  row_of_pair[5] = -1;
  std::vector<float> out_bf(kTokens * kHidden);
  CombineReduceBf16(rows_bf.data(), row_of_pair.data(), w.data(), kTokens, kTopK, kHidden, out_bf.data());
  EXPECT_TRUE(BitwiseEqual(out_bf, NaiveCombine(widened, row_of_pair, w, kTokens, kTopK, kHidden)));
}

// ---- the whole layer -------------------------------------------------------------------------------------------

TEST(MoeLayerCpuTest, PipelineMatchesPerTokenFormula) {
  // A tiny-preset-shaped layer: sigmoid, groups, bias, scaling 2.5.
  constexpr int64_t kTokens = 24, kHidden = 64, kInter = 32;
  GateParams p;
  p.num_experts = 16;
  p.top_k = 4;
  p.scoring = Scoring::kSigmoid;
  p.n_group = 4;
  p.topk_group = 2;
  p.routed_scaling_factor = 2.5f;
  const int num_experts = p.num_experts, top_k = p.top_k;
  const std::vector<float> x = RandomVector(kTokens * kHidden, 10);
  const std::vector<float> logits = RandomVector(kTokens * num_experts, 11, 3.0f);
  const std::vector<float> bias = RandomVector(num_experts, 12, 0.2f);
  // Weights scaled like nn.Linear's init (1/sqrt(fan_in)) so activations stay O(1).
  std::vector<std::vector<float>> w13(num_experts), w2(num_experts);
  std::vector<const float*> w13_ptrs(num_experts), w2_ptrs(num_experts);
  for (int e = 0; e < num_experts; ++e) {
    w13[e] = RandomVector(2 * kInter * kHidden, 100 + e, 1.0f / std::sqrt(static_cast<float>(kHidden)));
    w2[e] = RandomVector(kHidden * kInter, 200 + e, 1.0f / std::sqrt(static_cast<float>(kInter)));
    w13_ptrs[e] = w13[e].data();
    w2_ptrs[e] = w2[e].data();
  }

  std::vector<int32_t> idx(kTokens * top_k);
  std::vector<float> weights(kTokens * top_k);
  ASSERT_TRUE(TopkGating(logits.data(), bias.data(), kTokens, p, idx.data(), weights.data()).ok());
  ExpertPermutation perm;
  ASSERT_TRUE(BuildExpertPermutation(idx.data(), kTokens, top_k, num_experts, &perm).ok());
  const int64_t num_rows = perm.num_rows();
  std::vector<int64_t> token_of_row(num_rows);
  for (int64_t r = 0; r < num_rows; ++r) token_of_row[r] = perm.pair_of_row[r] / top_k;
  std::vector<float> x_perm(num_rows * kHidden), gate_up(num_rows * 2 * kInter), act(num_rows * kInter),
      y(num_rows * kHidden), out(kTokens * kHidden);
  GatherRows(x.data(), kHidden * sizeof(float), token_of_row.data(), num_rows, x_perm.data());
  ASSERT_TRUE(GroupedGemmNT(x_perm.data(), perm.expert_offsets.data(), num_experts, kHidden, w13_ptrs.data(),
                            2 * kInter, gate_up.data())
                  .ok());
  SwiGLU(gate_up.data(), num_rows, kInter, act.data());
  ASSERT_TRUE(
      GroupedGemmNT(act.data(), perm.expert_offsets.data(), num_experts, kInter, w2_ptrs.data(), kHidden, y.data())
          .ok());
  CombineReduceF32(y.data(), perm.row_of_pair.data(), weights.data(), kTokens, top_k, kHidden, out.data());

  // out[t] = sum_k w[t,k] * W2_e (silu(W1_e x) * (W3_e x)), straight from the definition, in double.
  for (int64_t t = 0; t < kTokens; ++t) {
    std::vector<double> ref(kHidden, 0.0);
    for (int k = 0; k < top_k; ++k) {
      const int e = idx[t * top_k + k];
      std::vector<double> a(kInter);
      for (int64_t i = 0; i < kInter; ++i) {
        double g = 0, u = 0;
        for (int64_t h = 0; h < kHidden; ++h) {
          g += static_cast<double>(w13[e][i * kHidden + h]) * x[t * kHidden + h];
          u += static_cast<double>(w13[e][(kInter + i) * kHidden + h]) * x[t * kHidden + h];
        }
        a[i] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t h = 0; h < kHidden; ++h) {
        double yh = 0;
        for (int64_t i = 0; i < kInter; ++i) yh += static_cast<double>(w2[e][h * kInter + i]) * a[i];
        ref[h] += weights[t * top_k + k] * yh;
      }
    }
    // Two chained FP32 GEMMs (k = 64 and 32) plus SwiGLU and combine: errors of a few 1e-7 relative to the O(1)
    // intermediate magnitudes; 1e-5 absolute on O(0.1..1) outputs leaves ample margin.
    for (int64_t h = 0; h < kHidden; ++h) ASSERT_NEAR(out[t * kHidden + h], ref[h], 1e-5) << t << "," << h;
  }
}

}  // namespace
}  // namespace waveep::kernels
