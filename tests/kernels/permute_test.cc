// Copyright 2026 The waveep Authors.
//
// Expert-major permutation, gather (permute) and scatter (unpermute) against a naive per-expert scan.
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using ::testing::HasSubstr;

// Random routing with distinct experts per token (as top-k produces) and experts 2 and 5 never chosen, so some
// groups are empty.
std::vector<int32_t> RandomRouting(int64_t num_tokens, int top_k, int num_experts, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> idx(num_tokens * top_k);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int k = 0; k < top_k; ++k) {
      int32_t e;
      bool fresh;
      do {
        e = static_cast<int32_t>(rng() % num_experts);
        fresh = e != 2 && e != 5;
        for (int j = 0; j < k; ++j) fresh = fresh && idx[t * top_k + j] != e;
      } while (!fresh);
      idx[t * top_k + k] = e;
    }
  }
  return idx;
}

TEST(ExpertPermutationTest, ExpertMajorThenTokenThenSlot) {
  constexpr int64_t kTokens = 37;
  constexpr int kTopK = 4, kExperts = 9;
  const std::vector<int32_t> idx = RandomRouting(kTokens, kTopK, kExperts, 1);
  ExpertPermutation perm;
  ASSERT_TRUE(BuildExpertPermutation(idx.data(), kTokens, kTopK, kExperts, &perm).ok());

  // Naive: for each expert in order, scan all pairs in (t, k) order.
  std::vector<int64_t> expected_pairs, expected_offsets = {0};
  for (int e = 0; e < kExperts; ++e) {
    for (int64_t pair = 0; pair < kTokens * kTopK; ++pair)
      if (idx[pair] == e) expected_pairs.push_back(pair);
    expected_offsets.push_back(static_cast<int64_t>(expected_pairs.size()));
  }
  EXPECT_EQ(perm.expert_offsets, expected_offsets);
  EXPECT_EQ(perm.pair_of_row, expected_pairs);
  EXPECT_EQ(perm.num_rows(), kTokens * kTopK);
  EXPECT_EQ(perm.expert_offsets[3] - perm.expert_offsets[2], 0);  // expert 2 is empty
  ASSERT_EQ(perm.row_of_pair.size(), perm.pair_of_row.size());
  for (int64_t r = 0; r < perm.num_rows(); ++r) EXPECT_EQ(perm.row_of_pair[perm.pair_of_row[r]], r);
}

TEST(ExpertPermutationTest, DuplicateExpertsInOneTokenAreKept) {
  const std::vector<int32_t> idx = {1, 1, 0, 1};  // two tokens, K = 2
  ExpertPermutation perm;
  ASSERT_TRUE(BuildExpertPermutation(idx.data(), 2, 2, 3, &perm).ok());
  EXPECT_EQ(perm.expert_offsets, (std::vector<int64_t>{0, 1, 4, 4}));
  EXPECT_EQ(perm.pair_of_row, (std::vector<int64_t>{2, 0, 1, 3}));
}

TEST(ExpertPermutationTest, GatherThenScatterRoundTrips) {
  constexpr int64_t kTokens = 29, kHidden = 24;
  constexpr int kTopK = 3, kExperts = 7;
  const std::vector<int32_t> idx = RandomRouting(kTokens, kTopK, kExperts, 2);
  ExpertPermutation perm;
  ASSERT_TRUE(BuildExpertPermutation(idx.data(), kTokens, kTopK, kExperts, &perm).ok());
  std::vector<float> x(kTokens * kHidden);
  for (size_t i = 0; i < x.size(); ++i) x[i] = UniformSym(3, RngStream::kTest, i);
  const int64_t row_bytes = kHidden * sizeof(float);

  // Permute: row r <- token of pair_of_row[r].
  std::vector<int64_t> token_of_row(perm.num_rows());
  for (int64_t r = 0; r < perm.num_rows(); ++r) token_of_row[r] = perm.pair_of_row[r] / kTopK;
  std::vector<float> x_perm(perm.num_rows() * kHidden);
  GatherRows(x.data(), row_bytes, token_of_row.data(), perm.num_rows(), x_perm.data());
  for (int64_t r = 0; r < perm.num_rows(); ++r) {
    const int64_t t = perm.pair_of_row[r] / kTopK;
    ASSERT_EQ(0, std::memcmp(&x_perm[r * kHidden], &x[t * kHidden], row_bytes)) << "row " << r;
  }
  // Unpermute: scatter rows back into (t, k) pair order; every pair sees its token's row.
  std::vector<float> by_pair(kTokens * kTopK * kHidden, -1.0f);
  ScatterRows(x_perm.data(), row_bytes, perm.pair_of_row.data(), perm.num_rows(), by_pair.data());
  for (int64_t pair = 0; pair < kTokens * kTopK; ++pair)
    ASSERT_EQ(0, std::memcmp(&by_pair[pair * kHidden], &x[(pair / kTopK) * kHidden], row_bytes)) << pair;
  // Gathering through the inverse map gives the same pair-ordered rows.
  std::vector<float> by_pair2(by_pair.size(), -2.0f);
  GatherRows(x_perm.data(), row_bytes, perm.row_of_pair.data(), perm.num_rows(), by_pair2.data());
  EXPECT_EQ(by_pair, by_pair2);
  // Scattering the pair-ordered rows through row_of_pair restores the permuted layout.
  std::vector<float> x_perm2(x_perm.size(), -3.0f);
  ScatterRows(by_pair.data(), row_bytes, perm.row_of_pair.data(), perm.num_rows(), x_perm2.data());
  EXPECT_EQ(x_perm, x_perm2);
}

TEST(ExpertPermutationTest, OutOfRangeIndexNamesTokenSlotAndValue) {
  std::vector<int32_t> idx = RandomRouting(6, 2, 4, 3);
  ExpertPermutation perm;
  perm.expert_offsets = {42};
  idx[3 * 2 + 1] = 4;
  Status s = BuildExpertPermutation(idx.data(), 6, 2, 4, &perm);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token 3, slot 1] = 4"));
  idx[3 * 2 + 1] = 0;
  idx[5 * 2 + 0] = -1;
  s = BuildExpertPermutation(idx.data(), 6, 2, 4, &perm);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token 5, slot 0] = -1"));
  EXPECT_EQ(perm.expert_offsets, std::vector<int64_t>{42});  // untouched on error
  EXPECT_EQ(BuildExpertPermutation(idx.data(), 6, 2, 0, &perm).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildExpertPermutation(idx.data(), 6, 2, 4, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExpertPermutationTest, NoTokens) {
  ExpertPermutation perm;
  ASSERT_TRUE(BuildExpertPermutation(nullptr, 0, 8, 4, &perm).ok());
  EXPECT_EQ(perm.expert_offsets, (std::vector<int64_t>{0, 0, 0, 0, 0}));
  EXPECT_EQ(perm.num_rows(), 0);
}

}  // namespace
}  // namespace waveep::kernels
