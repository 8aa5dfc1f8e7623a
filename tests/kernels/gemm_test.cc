// Copyright 2026 The waveep Authors.
//
// Grouped GEMM (BLAS) against a naive triple loop in double, SwiGLU against a double-precision formula, and the
// BLAS threading/info helpers.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using ::testing::HasSubstr;

std::vector<float> RandomVector(int64_t n, uint64_t seed) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = UniformSym(seed, RngStream::kTest, i);
  return v;
}

struct Problem {
  std::vector<int64_t> offsets;
  int64_t k = 0, n = 0;
  std::vector<float> a;
  std::vector<std::vector<float>> b;  // [g] -> [n, k]
  std::vector<const float*> b_ptrs;
};

Problem MakeProblem(const std::vector<int64_t>& rows_per_group, int64_t k, int64_t n, uint64_t seed) {
  Problem p;
  p.k = k;
  p.n = n;
  p.offsets = {0};
  for (int64_t m : rows_per_group) p.offsets.push_back(p.offsets.back() + m);
  p.a = RandomVector(p.offsets.back() * k, seed);
  for (size_t g = 0; g < rows_per_group.size(); ++g) {
    p.b.push_back(RandomVector(n * k, seed * 100 + g + 1));
    // Empty groups may pass null weights (an expert no token chose).
    p.b_ptrs.push_back(rows_per_group[g] == 0 ? nullptr : p.b.back().data());
  }
  return p;
}

// C_g = A_g * B_g^T, accumulated in double, together with sum |a||b| per element for the error bound.
void NaiveGroupedGemm(const Problem& p, std::vector<double>* c, std::vector<double>* abs_sum) {
  const int64_t rows = p.offsets.back();
  c->assign(rows * p.n, 0.0);
  abs_sum->assign(rows * p.n, 0.0);
  for (size_t g = 0; g + 1 < p.offsets.size(); ++g) {
    for (int64_t r = p.offsets[g]; r < p.offsets[g + 1]; ++r) {
      for (int64_t j = 0; j < p.n; ++j) {
        for (int64_t i = 0; i < p.k; ++i) {
          const double prod = static_cast<double>(p.a[r * p.k + i]) * p.b[g][j * p.k + i];
          (*c)[r * p.n + j] += prod;
          (*abs_sum)[r * p.n + j] += std::fabs(prod);
        }
      }
    }
  }
}

void ExpectMatchesNaive(const std::vector<int64_t>& rows_per_group, int64_t k, int64_t n, uint64_t seed) {
  const Problem p = MakeProblem(rows_per_group, k, n, seed);
  std::vector<float> c(p.offsets.back() * n + 7, -123.0f);  // sentinel tail must survive
  ASSERT_TRUE(GroupedGemmNT(p.a.data(), p.offsets.data(), static_cast<int>(rows_per_group.size()), k, p.b_ptrs.data(),
                            n, c.data())
                  .ok());
  std::vector<double> ref, abs_sum;
  NaiveGroupedGemm(p, &ref, &abs_sum);
  for (size_t i = 0; i < ref.size(); ++i) {
    // FP32 dot products of length k in BLAS's (blocked, possibly FMA) order: the rounding error is bounded by
    // about k * 2^-24 * sum|a_i b_i| in the worst case and ~sqrt(k) * 2^-24 * sum|a_i b_i| typically. 1e-5 of
    // sum|ab| covers the typical case for k up to ~10^5 and the worst case for k <= 160, and a wrong index or a
    // missing term (an error of order |a_i b_i|, i.e. ~1/k of the sum) still fails it.
    ASSERT_NEAR(c[i], ref[i], 1e-5 * abs_sum[i] + 1e-30) << "element " << i << " (k=" << k << ", n=" << n << ")";
  }
  for (size_t i = ref.size(); i < c.size(); ++i) EXPECT_EQ(c[i], -123.0f);
}

TEST(GroupedGemmTest, UnevenGroupsWithEmptyOnes) {
  ExpectMatchesNaive({0, 5, 0, 17, 1, 33, 0}, 48, 40, 1);
  ExpectMatchesNaive({3, 0, 0, 64, 2}, 96, 24, 2);
  ExpectMatchesNaive({0, 0, 0}, 16, 16, 3);
}

TEST(GroupedGemmTest, TinyPresetShapes) {
  // tiny preset: H 256, I 128: gate_up is [M, 2I] = x[M, H] * W13^T, down is [M, H] = act[M, I] * W2^T.
  ExpectMatchesNaive({64, 0, 31, 97}, 256, 256, 4);
  ExpectMatchesNaive({64, 0, 31, 97}, 128, 256, 5);
}

TEST(GroupedGemmTest, NonZeroFirstOffsetLeavesEarlierRowsAlone) {
  Problem p = MakeProblem({0, 4, 6}, 20, 12, 6);
  std::vector<int64_t> shifted = {3, 3, 7, 13};  // rows 0..2 are not part of any group
  std::vector<float> a(13 * 20);
  for (size_t i = 0; i < a.size(); ++i) a[i] = UniformSym(7, RngStream::kTest, i);
  std::vector<float> c(13 * 12, -5.0f);
  ASSERT_TRUE(GroupedGemmNT(a.data(), shifted.data(), 3, 20, p.b_ptrs.data(), 12, c.data()).ok());
  for (int i = 0; i < 3 * 12; ++i) EXPECT_EQ(c[i], -5.0f);
  // Row 3 belongs to group 1: check one element by hand.
  double ref = 0;
  for (int i = 0; i < 20; ++i) ref += static_cast<double>(a[3 * 20 + i]) * p.b[1][5 * 20 + i];
  EXPECT_NEAR(c[3 * 12 + 5], ref, 1e-5);
}

TEST(GroupedGemmTest, EmptyReductionGivesZeros) {
  std::vector<int64_t> offsets = {0, 2, 3};
  std::vector<float> b_dummy(1);
  const float* b[] = {b_dummy.data(), b_dummy.data()};
  std::vector<float> c(3 * 4, -1.0f);
  ASSERT_TRUE(GroupedGemmNT(nullptr, offsets.data(), 2, 0, b, 4, c.data()).ok());
  for (float v : c) EXPECT_EQ(v, 0.0f);
}

TEST(GroupedGemmTest, BadInputIsRejectedWithoutWriting) {
  Problem p = MakeProblem({4, 4}, 8, 8, 8);
  std::vector<float> c(8 * 8, -9.0f);
  std::vector<int64_t> decreasing = {0, 5, 4};
  Status s = GroupedGemmNT(p.a.data(), decreasing.data(), 2, 8, p.b_ptrs.data(), 8, c.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("group 1"));
  std::vector<const float*> null_b = {p.b_ptrs[0], nullptr};
  s = GroupedGemmNT(p.a.data(), p.offsets.data(), 2, 8, null_b.data(), 8, c.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("group 1"));
  std::vector<int64_t> negative = {-1, 3, 8};
  EXPECT_EQ(GroupedGemmNT(p.a.data(), negative.data(), 2, 8, p.b_ptrs.data(), 8, c.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GroupedGemmNT(p.a.data(), p.offsets.data(), 2, -1, p.b_ptrs.data(), 8, c.data()).code(),
            absl::StatusCode::kInvalidArgument);
  for (float v : c) EXPECT_EQ(v, -9.0f);
}

TEST(SwiGLUTest, MatchesDoublePrecisionFormula) {
  constexpr int64_t kRows = 13, kInter = 40;
  std::vector<float> gate_up = RandomVector(kRows * 2 * kInter, 9);
  for (float& v : gate_up) v *= 8.0f;
  gate_up[0] = 100.0f;   // silu -> x
  gate_up[1] = -100.0f;  // exp(100) overflows FP32: silu -> -0, still finite
  gate_up[2] = 0.0f;
  std::vector<float> out(kRows * kInter);
  SwiGLU(gate_up.data(), kRows, kInter, out.data());
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t i = 0; i < kInter; ++i) {
      const double g = gate_up[r * 2 * kInter + i], u = gate_up[r * 2 * kInter + kInter + i];
      const double ref = g / (1.0 + std::exp(-g)) * u;
      // expf, one add, one divide and one multiply in FP32: a few ulps, so 2^-20 relative. The absolute term
      // covers silu(-100) ~ -4e-42, which FP32 flushes to -0 via exp overflow.
      ASSERT_NEAR(out[r * kInter + i], ref, 0x1p-20 * std::fabs(ref) + 1e-38) << r << "," << i;
      ASSERT_TRUE(std::isfinite(out[r * kInter + i]));
    }
  }
}

TEST(BlasTest, ThreadsAndInfo) {
  const int previous = SetBlasThreads(1);
  if (previous < 0) GTEST_SKIP() << "BLAS thread count unknown: " << BlasInfo();
  EXPECT_GE(previous, 1);
  EXPECT_EQ(SetBlasThreads(previous), 1);
  EXPECT_EQ(SetBlasThreads(0), previous);  // < 1 leaves the setting alone
  EXPECT_EQ(SetBlasThreads(previous), previous);
  EXPECT_THAT(BlasInfo(), HasSubstr("OpenBLAS"));
  // The core the checksum line names is the one the config string reports.
  ASSERT_FALSE(BlasCoreName().empty());
  EXPECT_THAT(BlasInfo(), HasSubstr(BlasCoreName()));
}

}  // namespace
}  // namespace waveep::kernels
