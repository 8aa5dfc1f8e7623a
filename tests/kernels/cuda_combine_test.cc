// Copyright 2026 The waveep Authors.
//
// The weighted combine on the device performs the CPU reference's exact operation sequence (start at +0, add
// fl(w * x) in slot order, no FMA), so it must agree bit for bit, on every run.
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "tests/kernels/cuda_test_util.h"

namespace waveep::kernels {
namespace {

using testing::DeviceArray;
using testing::MakeStream;

struct CombineInputs {
  std::vector<float> rows, weights;
  std::vector<int64_t> row_of_pair;
};

// A real permutation of T*K pairs, with ~5% of the slots dropped (-1), and weights that do not sum to 1.
CombineInputs MakeInputs(int64_t num_tokens, int top_k, int64_t hidden, uint32_t seed) {
  CombineInputs in;
  const int64_t num_pairs = num_tokens * top_k;
  in.rows = testing::RandomFloats(num_pairs * hidden, seed, -8.0f, 8.0f);
  in.weights = testing::RandomFloats(num_pairs, seed + 1, 0.0f, 2.5f);
  in.row_of_pair.resize(num_pairs);
  for (int64_t i = 0; i < num_pairs; ++i) in.row_of_pair[i] = i;
  std::mt19937 rng(seed + 2);
  std::shuffle(in.row_of_pair.begin(), in.row_of_pair.end(), rng);
  for (int64_t& r : in.row_of_pair) {
    if (rng() % 20 == 0) r = -1;
  }
  return in;
}

void ExpectBitwise(int64_t num_tokens, int top_k, int64_t hidden, bool bf16, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "T=" << num_tokens << " K=" << top_k << " H=" << hidden
                                    << (bf16 ? " bf16" : " f32"));
  auto stream = MakeStream(Device::Cuda(0), "combine");
  ASSERT_NE(stream, nullptr);
  const CombineInputs in = MakeInputs(num_tokens, top_k, hidden, seed);
  std::vector<float> want(num_tokens * hidden);
  const std::vector<uint16_t> rows_bf16 = testing::ToBf16(in.rows);
  if (bf16) {
    CombineReduceBf16(rows_bf16.data(), in.row_of_pair.data(), in.weights.data(), num_tokens, top_k, hidden,
                      want.data());
  } else {
    CombineReduceF32(in.rows.data(), in.row_of_pair.data(), in.weights.data(), num_tokens, top_k, hidden, want.data());
  }
  DeviceArray<float> rows_f(in.rows), weights(in.weights), out(want.size()), out2(want.size());
  DeviceArray<uint16_t> rows_b(rows_bf16);
  DeviceArray<int64_t> rop(in.row_of_pair);
  out.Fill(0x7F);  // NaN pattern: every element must be written
  for (DeviceArray<float>* o : {&out, &out2}) {
    const Status s = bf16 ? CudaCombineReduceBf16(rows_b.get(), rop.get(), weights.get(), num_tokens, top_k, hidden,
                                                  o->get(), *stream)
                          : CudaCombineReduceF32(rows_f.get(), rop.get(), weights.get(), num_tokens, top_k, hidden,
                                                 o->get(), *stream);
    ASSERT_TRUE(s.ok()) << s;
  }
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<float> got = out.ToHost(), again = out2.ToHost();
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(testing::Bits(got[i]), testing::Bits(want[i])) << "element " << i;
    ASSERT_EQ(testing::Bits(again[i]), testing::Bits(want[i])) << "element " << i << " (second run)";
  }
}

TEST(CudaCombineTest, CpuStreamOrStubIsRejected) {
  auto cpu = MakeStream(Device::Cpu(), "cpu");
  ASSERT_NE(cpu, nullptr);
  std::vector<float> rows(8), w(2), out(4);
  std::vector<uint16_t> rows_b(8);
  std::vector<int64_t> rop = {0, 1};
  const absl::StatusCode want =
      CudaKernelsCompiledIn() ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
  EXPECT_EQ(CudaCombineReduceF32(rows.data(), rop.data(), w.data(), 1, 2, 4, out.data(), *cpu).code(), want);
  EXPECT_EQ(CudaCombineReduceBf16(rows_b.data(), rop.data(), w.data(), 1, 2, 4, out.data(), *cpu).code(), want);
}

TEST(CudaCombineTest, MatchesCpuBitwise) {
  WAVEEP_SKIP_WITHOUT_GPU();
  for (bool bf16 : {false, true}) {
    ExpectBitwise(513, 8, 7168, bf16, 1);  // DeepSeek-V3: vectorised path
    ExpectBitwise(300, 6, 4096, bf16, 2);  // V4-Flash
    ExpectBitwise(97, 1, 13, bf16, 3);     // odd hidden: scalar path
    ExpectBitwise(5, 2, 1, bf16, 4);
  }
}

TEST(CudaCombineTest, EmptyAndBadArguments) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "combine");
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(CudaCombineReduceF32(nullptr, nullptr, nullptr, 0, 8, 7168, nullptr, *stream).ok());
  // top_k = 0: every output is +0.
  DeviceArray<float> out(64);
  out.Fill(0x7F);
  ASSERT_TRUE(CudaCombineReduceF32(nullptr, nullptr, nullptr, 4, 0, 16, out.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  for (float v : out.ToHost()) EXPECT_EQ(testing::Bits(v), 0u);
  EXPECT_EQ(CudaCombineReduceF32(nullptr, nullptr, nullptr, -1, 8, 16, out.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaCombineReduceF32(nullptr, nullptr, nullptr, 4, 8, 16, out.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace waveep::kernels
