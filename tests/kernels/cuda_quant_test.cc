// Copyright 2026 The waveep Authors.
//
// FP8 blockwise quantize/dequantize on the device must be bit-identical to the CPU reference (convert.cc): both do
// the same exact operations (an order-free amax, IEEE divisions, the same RNE bit manipulation). The inputs cover
// magnitudes over 12 decades, all-zero blocks, FP8 rounding ties (normal and subnormal), saturation, infinities and
// NaN. Only NaN payloads may differ after dequantization (the GPU returns the canonical NaN).
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "tests/kernels/cuda_test_util.h"

namespace waveep::kernels {
namespace {

using testing::DeviceArray;
using testing::MakeStream;

// rows x cols values, one magnitude per block (10^-6 .. 10^6), with special blocks mixed in.
std::vector<float> QuantInputs(int64_t rows, int64_t cols, int block, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), decade(-6.0f, 6.0f);
  std::vector<float> x(rows * cols);
  const int64_t num_blocks = rows * cols / block;
  for (int64_t b = 0; b < num_blocks; ++b) {
    float* v = x.data() + b * block;
    const float magnitude = std::pow(10.0f, decade(rng));
    for (int i = 0; i < block; ++i) v[i] = magnitude * unit(rng);
    switch (b % 11) {
      case 0:  // all zero (scale 1), with a negative zero
        for (int i = 0; i < block; ++i) v[i] = 0.0f;
        v[block / 2] = -0.0f;
        break;
      case 1:  // amax exactly 448: scale 1, so x / scale = x and the ties below are exact ties
        v[0] = 448.0f;
        if (block > 8) {
          v[1] = 1.0625f;     // between 1.0 and 1.125: ties to even (1.0)
          v[2] = 1.1875f;     // between 1.125 and 1.25: ties to even (1.25)
          v[3] = 0x1.8p-9f;   // subnormal tie between codes 1 and 2
          v[4] = 0x1.4p-8f;   // 2.5 * 2^-9: subnormal tie, to even (code 2)
          v[5] = -232.0f;     // between 224 and 240: ties to even (224)
          v[6] = 0x1p-12f;    // underflows to zero
          v[7] = -0x1.fp-7f;  // near the normal/subnormal boundary
        }
        break;
      case 2:  // a NaN: skipped by the amax, encoded as NaN
        v[block - 1] = std::numeric_limits<float>::quiet_NaN();
        break;
      case 3:  // an infinity: the block's scale is infinite
        v[0] = -std::numeric_limits<float>::infinity();
        break;
      case 4:  // tiny values: subnormal FP32 inputs
        for (int i = 0; i < block; ++i) v[i] = 1e-40f * static_cast<float>(i % 5);
        break;
      default:
        break;
    }
  }
  return x;
}

void ExpectBitwiseQuantize(int64_t rows, int64_t cols, int block, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << rows << " x " << cols << ", block " << block);
  auto stream = MakeStream(Device::Cuda(0), "quant");
  ASSERT_NE(stream, nullptr);
  const std::vector<float> x = QuantInputs(rows, cols, block, seed);
  std::vector<uint8_t> want_q(x.size());
  std::vector<float> want_s(x.size() / block);
  ASSERT_TRUE(QuantizeFp8Blockwise(x.data(), rows, cols, block, want_q.data(), want_s.data()).ok());

  DeviceArray<float> x_dev(x), s_dev(want_s.size());
  DeviceArray<uint8_t> q_dev(want_q.size());
  ASSERT_TRUE(CudaQuantizeFp8Blockwise(x_dev.get(), rows, cols, block, q_dev.get(), s_dev.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<uint8_t> got_q = q_dev.ToHost();
  const std::vector<float> got_s = s_dev.ToHost();
  for (size_t i = 0; i < want_q.size(); ++i) ASSERT_EQ(got_q[i], want_q[i]) << "element " << i << " = " << x[i];
  for (size_t b = 0; b < want_s.size(); ++b) ASSERT_EQ(testing::Bits(got_s[b]), testing::Bits(want_s[b])) << b;

  // Dequantize what the CPU quantized.
  std::vector<float> want_x(x.size());
  ASSERT_TRUE(DequantizeFp8Blockwise(want_q.data(), want_s.data(), rows, cols, block, want_x.data()).ok());
  DeviceArray<uint8_t> q_in(want_q);
  DeviceArray<float> s_in(want_s), x_out(x.size());
  ASSERT_TRUE(CudaDequantizeFp8Blockwise(q_in.get(), s_in.get(), rows, cols, block, x_out.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<float> got_x = x_out.ToHost();
  for (size_t i = 0; i < want_x.size(); ++i) {
    if (std::isnan(want_x[i])) {
      ASSERT_TRUE(std::isnan(got_x[i])) << i;
    } else {
      ASSERT_EQ(testing::Bits(got_x[i]), testing::Bits(want_x[i])) << "element " << i;
    }
  }
}

TEST(CudaQuantTest, CpuStreamOrStubIsRejected) {
  auto cpu = MakeStream(Device::Cpu(), "cpu");
  ASSERT_NE(cpu, nullptr);
  std::vector<float> x(128, 1.0f), s(1);
  std::vector<uint8_t> q(128);
  std::vector<uint16_t> xb(128);
  const absl::StatusCode want =
      CudaKernelsCompiledIn() ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
  EXPECT_EQ(CudaQuantizeFp8Blockwise(x.data(), 1, 128, 128, q.data(), s.data(), *cpu).code(), want);
  EXPECT_EQ(CudaQuantizeFp8BlockwiseBf16(xb.data(), 1, 128, 128, q.data(), s.data(), *cpu).code(), want);
  EXPECT_EQ(CudaDequantizeFp8Blockwise(q.data(), s.data(), 1, 128, 128, x.data(), *cpu).code(), want);
}

TEST(CudaQuantTest, QuantizeAndDequantizeAreBitwise) {
  WAVEEP_SKIP_WITHOUT_GPU();
  ExpectBitwiseQuantize(257, 7168, 128, 1);  // DeepSeek hidden size, 128-element blocks
  ExpectBitwiseQuantize(64, 2048, 32, 2);    // 32-element blocks: one element per lane
  ExpectBitwiseQuantize(33, 21, 7, 3);       // blocks smaller than a warp, odd sizes
  ExpectBitwiseQuantize(3, 1024, 1024, 4);   // one block per row, longer than the warp
}

TEST(CudaQuantTest, EveryFp8CodeRoundTrips) {
  WAVEEP_SKIP_WITHOUT_GPU();
  // Scale 1 blocks holding every finite e4m3 value: quantize must return the code, dequantize the value.
  std::vector<float> x;
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;  // NaN codes
    x.push_back(Fp8E4M3ToFloat(static_cast<uint8_t>(code)));
  }
  while (x.size() % 127 != 0) x.push_back(0.0f);
  // Rows of 127 values plus 448, so every block's scale is exactly 1.
  std::vector<float> rows_x;
  for (size_t i = 0; i < x.size(); i += 127) {
    rows_x.insert(rows_x.end(), x.begin() + i, x.begin() + i + 127);
    rows_x.push_back(448.0f);
  }
  const int64_t rows = static_cast<int64_t>(rows_x.size() / 128);
  auto stream = MakeStream(Device::Cuda(0), "quant");
  ASSERT_NE(stream, nullptr);
  DeviceArray<float> x_dev(rows_x), s_dev(rows), back(rows_x.size());
  DeviceArray<uint8_t> q_dev(rows_x.size());
  ASSERT_TRUE(CudaQuantizeFp8Blockwise(x_dev.get(), rows, 128, 128, q_dev.get(), s_dev.get(), *stream).ok());
  ASSERT_TRUE(CudaDequantizeFp8Blockwise(q_dev.get(), s_dev.get(), rows, 128, 128, back.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<float> got = back.ToHost();
  for (size_t i = 0; i < rows_x.size(); ++i) ASSERT_EQ(got[i], rows_x[i]) << i;
}

TEST(CudaQuantTest, Bf16InputMatchesCpuOnWidenedValues) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "quant");
  ASSERT_NE(stream, nullptr);
  const int64_t rows = 129, cols = 4096;
  const std::vector<uint16_t> xb = testing::ToBf16(QuantInputs(rows, cols, 128, 7));
  const std::vector<float> widened = testing::FromBf16(xb);
  std::vector<uint8_t> want_q(widened.size());
  std::vector<float> want_s(widened.size() / 128);
  ASSERT_TRUE(QuantizeFp8Blockwise(widened.data(), rows, cols, 128, want_q.data(), want_s.data()).ok());
  DeviceArray<uint16_t> x_dev(xb);
  DeviceArray<uint8_t> q_dev(want_q.size());
  DeviceArray<float> s_dev(want_s.size());
  ASSERT_TRUE(CudaQuantizeFp8BlockwiseBf16(x_dev.get(), rows, cols, 128, q_dev.get(), s_dev.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(q_dev.ToHost(), want_q);
  const std::vector<float> got_s = s_dev.ToHost();
  for (size_t b = 0; b < want_s.size(); ++b) ASSERT_EQ(testing::Bits(got_s[b]), testing::Bits(want_s[b])) << b;
}

TEST(CudaQuantTest, EmptyAndBadArguments) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "quant");
  ASSERT_NE(stream, nullptr);
  DeviceArray<float> x(256), s(2);
  DeviceArray<uint8_t> q(256);
  EXPECT_TRUE(CudaQuantizeFp8Blockwise(nullptr, 0, 128, 128, nullptr, nullptr, *stream).ok());
  EXPECT_EQ(CudaQuantizeFp8Blockwise(x.get(), 2, 100, 128, q.get(), s.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaQuantizeFp8Blockwise(x.get(), 2, 128, 0, q.get(), s.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaQuantizeFp8Blockwise(nullptr, 2, 128, 128, q.get(), s.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaDequantizeFp8Blockwise(q.get(), s.get(), -1, 128, 128, x.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(stream->Synchronize().ok());
}

}  // namespace
}  // namespace waveep::kernels
