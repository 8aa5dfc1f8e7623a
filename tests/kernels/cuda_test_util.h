// Copyright 2026 The waveep Authors.
//
// Helpers for the CUDA kernel tests (tests/kernels/cuda_*_test.cc): device arrays with host round trips, streams,
// and the skip rule. They compile in every build; without CUDA the copies report Unavailable and HaveGpu() is
// false, so the device tests skip and only the argument-checking tests run.
#ifndef WAVEEP_TESTS_KERNELS_CUDA_TEST_UTIL_H_
#define WAVEEP_TESTS_KERNELS_CUDA_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"

#ifdef WAVEEP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace waveep::kernels::testing {

inline bool HaveGpu() { return CudaKernelsCompiledIn() && CudaDeviceCount() > 0; }

#define WAVEEP_SKIP_WITHOUT_GPU() \
  if (!::waveep::kernels::testing::HaveGpu()) GTEST_SKIP() << "no CUDA device (or CUDA kernels not compiled in)"

inline std::unique_ptr<Stream> MakeStream(Device device, const char* name) {
  StreamOptions options;
  options.name = name;
  StatusOr<std::unique_ptr<Stream>> s = Stream::Create(device, options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// The helpers below use the legacy default stream, which the runtime's streams (cudaStreamNonBlocking) do not order
// after, and a pageable cudaMemcpy to the device or a cudaMemset may return before the data landed: each ends with a
// device synchronize, so that a kernel enqueued next on a runtime stream sees the data.
#ifdef WAVEEP_HAVE_CUDA
inline Status SyncedResult(cudaError_t rc) {
  if (rc == cudaSuccess) rc = cudaDeviceSynchronize();
  return rc == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(rc));
}
#endif

inline Status CopyToDevice(void* dst, const void* src, size_t bytes) {
#ifdef WAVEEP_HAVE_CUDA
  return SyncedResult(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
#else
  return absl::UnavailableError("built without CUDA");
#endif
}

inline Status CopyToHost(void* dst, const void* src, size_t bytes) {
#ifdef WAVEEP_HAVE_CUDA
  const cudaError_t rc = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
  return rc == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(rc));
#else
  return absl::UnavailableError("built without CUDA");
#endif
}

// Fills device memory with a byte pattern, so tests can tell "untouched" from "written".
inline Status FillDevice(void* dst, int byte, size_t bytes) {
#ifdef WAVEEP_HAVE_CUDA
  return SyncedResult(cudaMemset(dst, byte, bytes));
#else
  return absl::UnavailableError("built without CUDA");
#endif
}

// A typed device array on cuda:0.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    StatusOr<Buffer> b = Buffer::Allocate(Device::Cuda(0), MemoryKind::kDevice, std::max<size_t>(n, 1) * sizeof(T));
    EXPECT_TRUE(b.ok()) << b.status();
    if (b.ok()) buffer_ = std::move(*b);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    if (!host.empty()) {
      EXPECT_TRUE(CopyToDevice(get(), host.data(), host.size() * sizeof(T)).ok());
    }
  }
  T* get() const { return buffer_.as<T>(); }
  size_t size() const { return n_; }
  std::vector<T> ToHost() const {
    std::vector<T> out(n_);
    if (n_ > 0) {
      EXPECT_TRUE(CopyToHost(out.data(), get(), n_ * sizeof(T)).ok());
    }
    return out;
  }
  void Fill(int byte) { EXPECT_TRUE(FillDevice(get(), byte, std::max<size_t>(n_, 1) * sizeof(T)).ok()); }

 private:
  size_t n_;
  Buffer buffer_;
};

// Uniform floats in [lo, hi) from a fixed seed: fresh inputs per test, reproducible per run.
inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  ConvertF32ToBf16(v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

inline std::vector<float> FromBf16(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  ConvertBf16ToF32(v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

inline uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

}  // namespace waveep::kernels::testing

#endif  // WAVEEP_TESTS_KERNELS_CUDA_TEST_UTIL_H_
