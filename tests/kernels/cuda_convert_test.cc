// Copyright 2026 The waveep Authors.
//
// Device BF16 <-> FP32 conversion must be bit-identical to the CPU reference. Skips without a CUDA build or a
// visible GPU; the argument checks run wherever they can.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"

#ifdef WAVEEP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace waveep::kernels {
namespace {

TEST(CudaConvertTest, StubOrCpuStreamIsRejected) {
  StreamOptions options;
  options.name = "cpu";
  StatusOr<std::unique_ptr<Stream>> cpu = Stream::Create(Device::Cpu(), options);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  std::vector<float> f(4, 1.0f);
  std::vector<uint16_t> b(4);
  const Status s1 = CudaConvertF32ToBf16(f.data(), b.data(), 4, **cpu);
  const Status s2 = CudaConvertBf16ToF32(b.data(), f.data(), 4, **cpu);
  const Status s3 = CudaFillZeroAsync(f.data(), 16, **cpu);
  const absl::StatusCode want =
      CudaKernelsCompiledIn() ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
  EXPECT_EQ(s1.code(), want) << s1;
  EXPECT_EQ(s2.code(), want) << s2;
  EXPECT_EQ(s3.code(), want) << s3;
  EXPECT_EQ(f[0], 1.0f);  // a rejected fill touches nothing
}

#ifdef WAVEEP_HAVE_CUDA

bool HaveGpu() { return CudaKernelsCompiledIn() && CudaDeviceCount() > 0; }

// Copies host -> device buffer, or reports why not.
// Synchronizes the device after the copy: a pageable cudaMemcpy may return before the data landed, and the runtime's
// non-blocking streams do not order after the legacy default stream.
Status ToDevice(const void* src, Buffer& dst, size_t bytes) {
  cudaError_t rc = cudaMemcpy(dst.data(), src, bytes, cudaMemcpyHostToDevice);
  if (rc == cudaSuccess) rc = cudaDeviceSynchronize();
  return rc == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(rc));
}

Status ToHost(const Buffer& src, void* dst, size_t bytes) {
  const cudaError_t rc = cudaMemcpy(dst, src.data(), bytes, cudaMemcpyDeviceToHost);
  return rc == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(rc));
}

// Inputs that exercise every rounding path: all BF16 patterns widened (exact), RNE ties (x.5 ulp) either side of
// even and odd patterns, signalling and quiet NaNs, infinities, overflow to inf, and random bit patterns.
std::vector<float> ConversionInputs() {
  std::vector<float> in;
  for (uint32_t p = 0; p < 65536; ++p) {
    const uint32_t base = p << 16;
    for (uint32_t low : {0x0000u, 0x7FFFu, 0x8000u, 0x8001u, 0x0001u}) {
      float f;
      const uint32_t u = base | low;
      std::memcpy(&f, &u, sizeof(f));
      in.push_back(f);
    }
  }
  std::mt19937 rng(99);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t u = static_cast<uint32_t>(rng());
    float f;
    std::memcpy(&f, &u, sizeof(f));
    in.push_back(f);
  }
  in.push_back(std::numeric_limits<float>::max());
  in.push_back(-std::numeric_limits<float>::infinity());
  return in;
}

TEST(CudaConvertTest, F32ToBf16MatchesCpuBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device (or CUDA kernels not compiled in)";
  const std::vector<float> in = ConversionInputs();
  const int64_t n = static_cast<int64_t>(in.size());
  StreamOptions options;
  options.name = "convert";
  auto stream = Stream::Create(Device::Cuda(0), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto in_dev = Buffer::Allocate(Device::Cuda(0), MemoryKind::kDevice, n * sizeof(float));
  auto out_dev = Buffer::Allocate(Device::Cuda(0), MemoryKind::kDevice, n * sizeof(uint16_t));
  ASSERT_TRUE(in_dev.ok() && out_dev.ok()) << in_dev.status() << out_dev.status();
  ASSERT_TRUE(ToDevice(in.data(), *in_dev, n * sizeof(float)).ok());
  ASSERT_TRUE(CudaConvertF32ToBf16(in_dev->as<float>(), out_dev->as<uint16_t>(), n, **stream).ok());
  ASSERT_TRUE((*stream)->Synchronize().ok());
  std::vector<uint16_t> got(n), want(n);
  ASSERT_TRUE(ToHost(*out_dev, got.data(), n * sizeof(uint16_t)).ok());
  ConvertF32ToBf16(in.data(), want.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << "input #" << i << " = " << in[i];
}

TEST(CudaConvertTest, Bf16ToF32MatchesCpuBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device (or CUDA kernels not compiled in)";
  // Every pattern, repeated so the grid-stride loop runs more than one iteration per thread.
  constexpr int64_t kRepeat = 40;
  std::vector<uint16_t> in(65536 * kRepeat);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint16_t>(i * 40503u);
  const int64_t n = static_cast<int64_t>(in.size());
  StreamOptions options;
  options.name = "convert";
  auto stream = Stream::Create(Device::Cuda(0), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto in_dev = Buffer::Allocate(Device::Cuda(0), MemoryKind::kDevice, n * sizeof(uint16_t));
  auto out_dev = Buffer::Allocate(Device::Cuda(0), MemoryKind::kDevice, n * sizeof(float));
  ASSERT_TRUE(in_dev.ok() && out_dev.ok()) << in_dev.status() << out_dev.status();
  ASSERT_TRUE(ToDevice(in.data(), *in_dev, n * sizeof(uint16_t)).ok());
  ASSERT_TRUE(CudaConvertBf16ToF32(in_dev->as<uint16_t>(), out_dev->as<float>(), n, **stream).ok());
  ASSERT_TRUE((*stream)->Synchronize().ok());
  std::vector<float> got(n), want(n);
  ASSERT_TRUE(ToHost(*out_dev, got.data(), n * sizeof(float)).ok());
  ConvertBf16ToF32(in.data(), want.data(), n);
  ASSERT_EQ(0, std::memcmp(got.data(), want.data(), n * sizeof(float)));
  // Zero elements is a no-op; a negative count is rejected.
  EXPECT_TRUE(CudaConvertBf16ToF32(in_dev->as<uint16_t>(), out_dev->as<float>(), 0, **stream).ok());
  EXPECT_EQ(CudaConvertBf16ToF32(in_dev->as<uint16_t>(), out_dev->as<float>(), -1, **stream).code(),
            absl::StatusCode::kInvalidArgument);
}

// Zeroes exactly the bytes asked for: random bytes around an odd-sized, odd-offset range stay as they were.
TEST(CudaConvertTest, FillZeroTouchesOnlyItsRange) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device (or CUDA kernels not compiled in)";
  constexpr int64_t kBytes = 1 << 20, kBegin = 4099, kCount = 300001;
  std::vector<uint8_t> in(kBytes);
  std::mt19937 rng(7);
  for (uint8_t& b : in) b = static_cast<uint8_t>(1 + rng() % 255);  // never zero
  StreamOptions options;
  options.name = "fill";
  auto stream = Stream::Create(Device::Cuda(0), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto dev = Buffer::Allocate(Device::Cuda(0), MemoryKind::kDevice, kBytes);
  ASSERT_TRUE(dev.ok()) << dev.status();
  ASSERT_TRUE(ToDevice(in.data(), *dev, kBytes).ok());
  ASSERT_TRUE(CudaFillZeroAsync(dev->as<uint8_t>() + kBegin, kCount, **stream).ok());
  ASSERT_TRUE((*stream)->Synchronize().ok());
  std::vector<uint8_t> got(kBytes);
  ASSERT_TRUE(ToHost(*dev, got.data(), kBytes).ok());
  for (int64_t i = 0; i < kBytes; ++i) {
    const bool inside = i >= kBegin && i < kBegin + kCount;
    ASSERT_EQ(got[i], inside ? 0 : in[i]) << "byte " << i;
  }
  EXPECT_TRUE(CudaFillZeroAsync(dev->data(), 0, **stream).ok());
  EXPECT_EQ(CudaFillZeroAsync(dev->data(), -1, **stream).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaFillZeroAsync(nullptr, 16, **stream).code(), absl::StatusCode::kInvalidArgument);
}

#else

TEST(CudaConvertTest, DeviceComparison) { GTEST_SKIP() << "built without CUDA"; }

#endif  // WAVEEP_HAVE_CUDA

}  // namespace
}  // namespace waveep::kernels
