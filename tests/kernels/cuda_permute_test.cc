// Copyright 2026 The waveep Authors.
//
// CudaBuildExpertPermutation must reproduce BuildExpertPermutation exactly (same stable expert-major order), for
// uniform and skewed routing and pair counts that do not fill the last chunk; the row copies must be bitwise.
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "tests/kernels/cuda_test_util.h"

namespace waveep::kernels {
namespace {

using testing::DeviceArray;
using testing::MakeStream;

struct DevicePermutation {
  std::vector<int64_t> expert_offsets, pair_of_row, row_of_pair;
};

DevicePermutation RunOnDevice(const std::vector<int32_t>& idx, int64_t num_tokens, int top_k, int num_experts,
                              Stream& stream) {
  DeviceArray<int32_t> idx_dev(idx);
  DeviceArray<int64_t> offsets(num_experts + 1), por(idx.size()), rop(idx.size());
  offsets.Fill(0x5A);
  por.Fill(0x5A);
  rop.Fill(0x5A);
  const Status s = CudaBuildExpertPermutation(idx_dev.get(), num_tokens, top_k, num_experts, offsets.get(), por.get(),
                                              rop.get(), stream);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(stream.Synchronize().ok());
  return {offsets.ToHost(), por.ToHost(), rop.ToHost()};
}

void ExpectMatchesCpu(const std::vector<int32_t>& idx, int64_t num_tokens, int top_k, int num_experts) {
  auto stream = MakeStream(Device::Cuda(0), "permute");
  ASSERT_NE(stream, nullptr);
  ExpertPermutation want;
  ASSERT_TRUE(BuildExpertPermutation(idx.data(), num_tokens, top_k, num_experts, &want).ok());
  const DevicePermutation got = RunOnDevice(idx, num_tokens, top_k, num_experts, *stream);
  EXPECT_EQ(got.expert_offsets, want.expert_offsets);
  EXPECT_EQ(got.pair_of_row, want.pair_of_row);
  EXPECT_EQ(got.row_of_pair, want.row_of_pair);
  // Run to run identical (nothing depends on the order of the count atomics).
  const DevicePermutation again = RunOnDevice(idx, num_tokens, top_k, num_experts, *stream);
  EXPECT_EQ(again.pair_of_row, got.pair_of_row);
}

std::vector<int32_t> UniformRouting(int64_t num_tokens, int top_k, int num_experts, uint32_t seed) {
  // Distinct experts per token, like real top-k.
  std::mt19937 rng(seed);
  std::vector<int32_t> idx(num_tokens * top_k);
  std::vector<int32_t> experts(num_experts);
  for (int e = 0; e < num_experts; ++e) experts[e] = e;
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int k = 0; k < top_k; ++k) {
      std::swap(experts[k], experts[k + rng() % (num_experts - k)]);
      idx[t * top_k + k] = experts[k];
    }
  }
  return idx;
}

TEST(CudaPermuteTest, CpuStreamOrStubIsRejected) {
  auto cpu = MakeStream(Device::Cpu(), "cpu");
  ASSERT_NE(cpu, nullptr);
  std::vector<int32_t> idx = {0, 1};
  std::vector<int64_t> offsets(3), por(2), rop(2);
  const absl::StatusCode want =
      CudaKernelsCompiledIn() ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
  EXPECT_EQ(CudaBuildExpertPermutation(idx.data(), 1, 2, 2, offsets.data(), por.data(), rop.data(), *cpu).code(), want);
  std::vector<char> src(64), dst(64);
  EXPECT_EQ(CudaGatherRows(src.data(), 16, rop.data(), 2, dst.data(), *cpu).code(), want);
  EXPECT_EQ(CudaScatterRows(src.data(), 16, rop.data(), 2, dst.data(), *cpu).code(), want);
}

TEST(CudaPermuteTest, UniformRoutingMatchesCpu) {
  WAVEEP_SKIP_WITHOUT_GPU();
  ExpectMatchesCpu(UniformRouting(4096, 8, 256, 1), 4096, 8, 256);  // DeepSeek-V3: 32 full chunks
  ExpectMatchesCpu(UniformRouting(1000, 6, 384, 2), 1000, 6, 384);  // V4-Pro: 6000 pairs, last chunk partial
  ExpectMatchesCpu(UniformRouting(33, 2, 8, 3), 33, 2, 8);
  ExpectMatchesCpu(UniformRouting(1, 1, 1, 4), 1, 1, 1);
}

TEST(CudaPermuteTest, SkewedRoutingMatchesCpu) {
  WAVEEP_SKIP_WITHOUT_GPU();
  // Half of all pairs to expert 3, the rest spread over a few: many equal keys inside every warp step.
  std::mt19937 rng(5);
  const int64_t num_tokens = 20000;
  const int top_k = 4, num_experts = 4096;
  std::vector<int32_t> idx(num_tokens * top_k);
  for (int32_t& e : idx) e = rng() % 2 == 0 ? 3 : static_cast<int32_t>(rng() % 7) * 500;
  ExpectMatchesCpu(idx, num_tokens, top_k, num_experts);
  // Every pair to one expert.
  std::fill(idx.begin(), idx.end(), 4095);
  ExpectMatchesCpu(idx, num_tokens, top_k, num_experts);
}

TEST(CudaPermuteTest, OutOfRangeIndicesAreSkipped) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "permute");
  ASSERT_NE(stream, nullptr);
  const int num_experts = 16, top_k = 4;
  const int64_t num_tokens = 3000;
  std::vector<int32_t> idx = UniformRouting(num_tokens, top_k, num_experts, 9);
  std::mt19937 rng(10);
  for (int32_t& e : idx) {
    const uint32_t r = rng() % 10;
    if (r == 0) e = -1;
    if (r == 1) e = num_experts + static_cast<int32_t>(rng() % 100);
  }
  // Reference: the CPU counting sort over the routed pairs only.
  std::vector<int64_t> offsets(num_experts + 1, 0);
  for (int32_t e : idx) {
    if (e >= 0 && e < num_experts) ++offsets[e + 1];
  }
  for (int e = 0; e < num_experts; ++e) offsets[e + 1] += offsets[e];
  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  std::vector<int64_t> por(idx.size(), -1), rop(idx.size(), -1);
  for (size_t pair = 0; pair < idx.size(); ++pair) {
    const int32_t e = idx[pair];
    if (e < 0 || e >= num_experts) continue;
    const int64_t row = cursor[e]++;
    por[row] = static_cast<int64_t>(pair);
    rop[pair] = row;
  }
  const DevicePermutation got = RunOnDevice(idx, num_tokens, top_k, num_experts, *stream);
  EXPECT_EQ(got.expert_offsets, offsets);
  EXPECT_EQ(got.pair_of_row, por);
  EXPECT_EQ(got.row_of_pair, rop);
}

TEST(CudaPermuteTest, EmptyRoutingAndBadArguments) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "permute");
  ASSERT_NE(stream, nullptr);
  DeviceArray<int64_t> offsets(9);
  offsets.Fill(0x11);
  ASSERT_TRUE(CudaBuildExpertPermutation(nullptr, 0, 4, 8, offsets.get(), nullptr, nullptr, *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(offsets.ToHost(), std::vector<int64_t>(9, 0));
  EXPECT_EQ(CudaBuildExpertPermutation(nullptr, 0, 4, 0, offsets.get(), nullptr, nullptr, *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaBuildExpertPermutation(nullptr, 0, 4, 5000, offsets.get(), nullptr, nullptr, *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaBuildExpertPermutation(nullptr, 4, 4, 8, offsets.get(), nullptr, nullptr, *stream).code(),
            absl::StatusCode::kInvalidArgument);
}

// Gather by pair (divisor = K) then scatter back: bitwise equal to the CPU copies for every vector width.
TEST(CudaPermuteTest, GatherAndScatterRowsAreBitwise) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "permute");
  ASSERT_NE(stream, nullptr);
  const int64_t num_tokens = 777;
  const int top_k = 6, num_experts = 64;
  const std::vector<int32_t> idx = UniformRouting(num_tokens, top_k, num_experts, 17);
  ExpertPermutation perm;
  ASSERT_TRUE(BuildExpertPermutation(idx.data(), num_tokens, top_k, num_experts, &perm).ok());
  const int64_t num_rows = perm.num_rows();
  // 14336 bytes (a 7168-wide BF16 row: 16-byte path), 12 bytes (4-byte path), 3 bytes (byte path).
  for (int64_t row_bytes : {int64_t{14336}, int64_t{12}, int64_t{3}}) {
    std::vector<uint8_t> x(num_tokens * row_bytes);
    std::mt19937 rng(static_cast<uint32_t>(row_bytes));
    for (uint8_t& b : x) b = static_cast<uint8_t>(rng());
    std::vector<int64_t> src_rows(num_rows);
    for (int64_t r = 0; r < num_rows; ++r) src_rows[r] = perm.pair_of_row[r] / top_k;
    std::vector<uint8_t> want(num_rows * row_bytes);
    GatherRows(x.data(), row_bytes, src_rows.data(), num_rows, want.data());

    DeviceArray<uint8_t> x_dev(x), gathered(want.size());
    DeviceArray<int64_t> por_dev(perm.pair_of_row), rop_dev(perm.row_of_pair);
    ASSERT_TRUE(CudaGatherRows(x_dev.get(), row_bytes, por_dev.get(), num_rows, gathered.get(), *stream, top_k).ok());
    ASSERT_TRUE(stream->Synchronize().ok());
    EXPECT_EQ(gathered.ToHost(), want) << row_bytes << "-byte rows";

    // Unpermute: row r goes back to pair slot pair_of_row[r].
    std::vector<uint8_t> back(num_rows * row_bytes);
    ScatterRows(want.data(), row_bytes, perm.pair_of_row.data(), num_rows, back.data());
    DeviceArray<uint8_t> back_dev(back.size());
    back_dev.Fill(0);
    ASSERT_TRUE(CudaScatterRows(gathered.get(), row_bytes, por_dev.get(), num_rows, back_dev.get(), *stream).ok());
    ASSERT_TRUE(stream->Synchronize().ok());
    EXPECT_EQ(back_dev.ToHost(), back) << row_bytes << "-byte rows";
  }
}

TEST(CudaPermuteTest, NegativeRowIndices) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "permute");
  ASSERT_NE(stream, nullptr);
  const int64_t row_bytes = 32;
  std::vector<uint8_t> src(4 * row_bytes);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i + 1);
  DeviceArray<uint8_t> src_dev(src), dst(4 * row_bytes);
  DeviceArray<int64_t> rows(std::vector<int64_t>{2, -1, 0, -7});
  dst.Fill(0xEE);
  // Gather: a negative index zero-fills its row.
  ASSERT_TRUE(CudaGatherRows(src_dev.get(), row_bytes, rows.get(), 4, dst.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  std::vector<uint8_t> got = dst.ToHost();
  for (int64_t i = 0; i < row_bytes; ++i) {
    EXPECT_EQ(got[i], src[2 * row_bytes + i]);
    EXPECT_EQ(got[row_bytes + i], 0);
    EXPECT_EQ(got[2 * row_bytes + i], src[i]);
    EXPECT_EQ(got[3 * row_bytes + i], 0);
  }
  // Scatter: a negative index skips its row.
  dst.Fill(0xEE);
  ASSERT_TRUE(CudaScatterRows(src_dev.get(), row_bytes, rows.get(), 4, dst.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  got = dst.ToHost();
  for (int64_t i = 0; i < row_bytes; ++i) {
    EXPECT_EQ(got[2 * row_bytes + i], src[i]);
    EXPECT_EQ(got[i], src[2 * row_bytes + i]);
    EXPECT_EQ(got[row_bytes + i], 0xEE);
    EXPECT_EQ(got[3 * row_bytes + i], 0xEE);
  }
  EXPECT_EQ(CudaGatherRows(src_dev.get(), row_bytes, rows.get(), 4, dst.get(), *stream, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace waveep::kernels
