// Copyright 2026 The waveep Authors.
//
// SwiGLU on the device against the CPU reference. The GPU's expf is not bit-identical to std::exp (CUDA documents
// expf to 2 ulp; glibc's is correctly rounded in practice), so FP32 results may differ by a few ulp: we allow
// 8 ulp (2^-20 relative), plus exact agreement on the limits (very negative gates give -0 * up). BF16 outputs may
// differ by one BF16 step where the FP32 values straddle a rounding boundary. The fused SwiGLU + FP8 quantize
// kernel computes exactly what CudaSwiGLU followed by CudaQuantizeFp8Blockwise computes, so that pair is compared
// bitwise, and the fused result is compared with the CPU pipeline code by code (adjacent codes allowed).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "tests/kernels/cuda_test_util.h"

namespace waveep::kernels {
namespace {

using testing::DeviceArray;
using testing::MakeStream;

// Gates over [-30, 30] (both tails of the sigmoid), ups over [-3, 3], with exact zeros and overflowing gates.
std::vector<float> GateUp(int64_t m, int64_t inter, uint32_t seed) {
  std::vector<float> g = testing::RandomFloats(m * 2 * inter, seed, -30.0f, 30.0f);
  const std::vector<float> u = testing::RandomFloats(m * inter, seed + 1, -3.0f, 3.0f);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t i = 0; i < inter; ++i) g[r * 2 * inter + inter + i] = u[r * inter + i];
    g[r * 2 * inter] = 0.0f;                        // silu(0) = 0
    if (inter > 1) g[r * 2 * inter + 1] = -200.0f;  // exp(200) = inf: -0 * up
  }
  return g;
}

// Steps between two BF16 values in the ordered code space (0 = identical).
int Bf16Distance(uint16_t a, uint16_t b) {
  auto ordered = [](uint16_t v) { return (v & 0x8000) ? -static_cast<int>(v & 0x7FFF) : static_cast<int>(v); };
  return std::abs(ordered(a) - ordered(b));
}

TEST(CudaSwiGLUTest, CpuStreamOrStubIsRejected) {
  auto cpu = MakeStream(Device::Cpu(), "cpu");
  ASSERT_NE(cpu, nullptr);
  std::vector<float> f(256);
  std::vector<uint16_t> b(256);
  std::vector<uint8_t> q(128);
  const absl::StatusCode want =
      CudaKernelsCompiledIn() ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
  EXPECT_EQ(CudaSwiGLU(f.data(), 1, 128, f.data(), *cpu).code(), want);
  EXPECT_EQ(CudaSwiGLUBf16(b.data(), 1, 128, b.data(), *cpu).code(), want);
  EXPECT_EQ(CudaSwiGLUQuantizeFp8(b.data(), 1, 128, 128, q.data(), f.data(), *cpu).code(), want);
}

TEST(CudaSwiGLUTest, F32WithinEightUlp) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "swiglu");
  ASSERT_NE(stream, nullptr);
  const int64_t m = 300, inter = 1536;  // Qwen3-235B intermediate size
  const std::vector<float> gate_up = GateUp(m, inter, 1);
  std::vector<float> want(m * inter);
  SwiGLU(gate_up.data(), m, inter, want.data());
  DeviceArray<float> in(gate_up), out(want.size());
  ASSERT_TRUE(CudaSwiGLU(in.get(), m, inter, out.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<float> got = out.ToHost();
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == 0.0f) {
      ASSERT_EQ(testing::Bits(got[i]), testing::Bits(want[i])) << i;  // signed zeros agree too
    } else {
      ASSERT_NEAR(got[i], want[i], 0x1p-20 * std::fabs(want[i])) << i;
    }
  }
}

TEST(CudaSwiGLUTest, Bf16WithinOneStep) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "swiglu");
  ASSERT_NE(stream, nullptr);
  const int64_t m = 257, inter = 2048;
  const std::vector<uint16_t> gate_up = testing::ToBf16(GateUp(m, inter, 2));
  const std::vector<float> widened = testing::FromBf16(gate_up);
  std::vector<float> want_f(m * inter);
  SwiGLU(widened.data(), m, inter, want_f.data());
  const std::vector<uint16_t> want = testing::ToBf16(want_f);
  DeviceArray<uint16_t> in(gate_up), out(want.size());
  ASSERT_TRUE(CudaSwiGLUBf16(in.get(), m, inter, out.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<uint16_t> got = out.ToHost();
  int64_t off_by_one = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const int d = Bf16Distance(got[i], want[i]);
    ASSERT_LE(d, 1) << i;
    off_by_one += d;
  }
  EXPECT_LT(off_by_one, static_cast<int64_t>(want.size()) / 100) << "rounding-boundary cases should be rare";
}

TEST(CudaSwiGLUTest, FusedQuantizeEqualsTheTwoStepPath) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "swiglu");
  ASSERT_NE(stream, nullptr);
  const int64_t m = 129, inter = 3072;  // V4-Pro intermediate size
  const int block = 128;
  const std::vector<uint16_t> gate_up = testing::ToBf16(GateUp(m, inter, 3));
  const std::vector<float> widened = testing::FromBf16(gate_up);
  const int64_t n = m * inter, num_scales = n / block;

  DeviceArray<uint16_t> in_b(gate_up);
  DeviceArray<uint8_t> fused_q(n), two_step_q(n);
  DeviceArray<float> fused_s(num_scales), two_step_s(num_scales), in_f(widened), act(n);
  ASSERT_TRUE(CudaSwiGLUQuantizeFp8(in_b.get(), m, inter, block, fused_q.get(), fused_s.get(), *stream).ok());
  ASSERT_TRUE(CudaSwiGLU(in_f.get(), m, inter, act.get(), *stream).ok());
  ASSERT_TRUE(CudaQuantizeFp8Blockwise(act.get(), m, inter, block, two_step_q.get(), two_step_s.get(), *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const std::vector<uint8_t> got_q = fused_q.ToHost();
  const std::vector<float> got_s = fused_s.ToHost();
  EXPECT_EQ(got_q, two_step_q.ToHost());
  const std::vector<float> two_s = two_step_s.ToHost();
  for (int64_t b = 0; b < num_scales; ++b) ASSERT_EQ(testing::Bits(got_s[b]), testing::Bits(two_s[b])) << b;

  // Against the CPU pipeline: scales within the SwiGLU tolerance, codes equal or adjacent.
  std::vector<float> cpu_act(n), cpu_s(num_scales);
  std::vector<uint8_t> cpu_q(n);
  SwiGLU(widened.data(), m, inter, cpu_act.data());
  ASSERT_TRUE(QuantizeFp8Blockwise(cpu_act.data(), m, inter, block, cpu_q.data(), cpu_s.data()).ok());
  for (int64_t b = 0; b < num_scales; ++b) ASSERT_NEAR(got_s[b], cpu_s[b], 0x1p-20 * cpu_s[b]) << b;
  for (int64_t i = 0; i < n; ++i) {
    const int got_code = (got_q[i] & 0x80) ? -(got_q[i] & 0x7F) : (got_q[i] & 0x7F);
    const int want_code = (cpu_q[i] & 0x80) ? -(cpu_q[i] & 0x7F) : (cpu_q[i] & 0x7F);
    ASSERT_LE(std::abs(got_code - want_code), 1) << i;
  }
  EXPECT_EQ(CudaSwiGLUQuantizeFp8(in_b.get(), m, 3000, block, fused_q.get(), fused_s.get(), *stream).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CudaSwiGLUTest, EmptyIsANoOp) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "swiglu");
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(CudaSwiGLU(nullptr, 0, 128, nullptr, *stream).ok());
  EXPECT_TRUE(CudaSwiGLUBf16(nullptr, 7, 0, nullptr, *stream).ok());
  EXPECT_TRUE(CudaSwiGLUQuantizeFp8(nullptr, 0, 128, 128, nullptr, nullptr, *stream).ok());
  EXPECT_EQ(CudaSwiGLU(nullptr, -1, 128, nullptr, *stream).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace waveep::kernels
