// Copyright 2026 The waveep Authors.
//
// The device grouped GEMM against the CPU GEMM (GroupedGemmNT, FP32 BLAS) on the same inputs: the BF16 values
// widened exactly, or the FP8 values dequantized exactly as DequantizeFp8Blockwise does. Every backend is run
// (auto, cuBLASLt per group, cuBLAS grouped-batched, the experimental sm90 kernel where it is compiled in, and the
// portable simt kernel).
//
// Tolerance, per output element: |got - want| <= 2^-18 * sum_k |a_k * b_k| (+ 2^-8 * |want| for BF16 C).
// Why: products of BF16 (or FP8 x FP32-scale) values are exact or nearly so in FP32, and both sides accumulate in
// FP32 in different orders. Higham's bound for any order is (K - 1) * 2^-24 * sum |a_k b_k|; tensor cores add
// short chains per k-block and then sum the blocks, so the realised error stays near a 64-term chain's bound,
// 2^-18 = 64 * 2^-24. A wrong element, transposition, scale or group offset is off by O(sum |a b| / sqrt(K)),
// orders of magnitude above it. BF16 output adds one rounding (half an ulp = 2^-9 relative; 2^-8 allows both
// sides' accumulation noise to push a tie across).
// FP8 inputs: 2^-13 * sum_k |a_k * b_k| instead. Hopper's FP8 tensor-core MMA does not accumulate in full FP32: it
// keeps about 14 bits of the running sum (DeepSeek-V3 technical report, section 3.3.2), and cuBLASLt's block-scaled
// path promotes to FP32 once per 128-wide scale block, so within a block the error is ~2^-14 of its sum |a b|. The
// first H200 run saw errors of ~2^-14 of sum |a b| at the V4-Pro shapes. A wrong scale or block is still off by
// O(sum |a b| / sqrt(K)), a factor 2^13 / sqrt(K) (>= 96 for K <= 7168) above this bound. The simt kernel
// accumulates the dequantized values in FP32 (FMA), so it is held to the BF16 bound, 2^-18, on FP8 inputs too.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "tests/kernels/cuda_test_util.h"

namespace waveep::kernels {
namespace {

using testing::DeviceArray;
using testing::MakeStream;

constexpr int kBlock = 128;
constexpr int64_t kLeadingRows = 3;   // rows before group 0 (group_offsets[0] > 0): must stay untouched
constexpr int64_t kTrailingRows = 2;  // rows after the last group: must stay untouched

struct GemmCase {
  std::vector<int64_t> rows;  // per group
  int64_t n, k;
};

std::vector<int64_t> Offsets(const std::vector<int64_t>& rows) {
  std::vector<int64_t> offsets = {kLeadingRows};
  for (int64_t m : rows) offsets.push_back(offsets.back() + m);
  return offsets;
}

// want = CPU GEMM of a, b; bound = 2^-18 * CPU GEMM of |a|, |b|.
void Reference(const std::vector<float>& a, const std::vector<std::vector<float>>& b,
               const std::vector<int64_t>& offsets, int64_t n, int64_t k, std::vector<float>* want,
               std::vector<float>* bound) {
  const int num_groups = static_cast<int>(b.size());
  const int64_t total_rows = offsets.back() + kTrailingRows;
  std::vector<const float*> b_ptrs, abs_ptrs;
  std::vector<std::vector<float>> abs_b(b.size());
  for (int g = 0; g < num_groups; ++g) {
    b_ptrs.push_back(b[g].data());
    for (float v : b[g]) abs_b[g].push_back(std::fabs(v));
    abs_ptrs.push_back(abs_b[g].data());
  }
  std::vector<float> abs_a(a.size());
  for (size_t i = 0; i < a.size(); ++i) abs_a[i] = std::fabs(a[i]);
  want->assign(total_rows * n, 0.0f);
  bound->assign(total_rows * n, 0.0f);
  ASSERT_TRUE(GroupedGemmNT(a.data(), offsets.data(), num_groups, k, b_ptrs.data(), n, want->data()).ok());
  ASSERT_TRUE(GroupedGemmNT(abs_a.data(), offsets.data(), num_groups, k, abs_ptrs.data(), n, bound->data()).ok());
  for (float& v : *bound) v *= 0x1p-18f;
}

// Compares the group rows with the reference and checks that the rows around them kept the fill pattern.
void ExpectClose(const std::vector<uint8_t>& c_bytes, DType c_dtype, const std::vector<float>& want,
                 const std::vector<float>& bound, const std::vector<int64_t>& offsets, int64_t n,
                 const std::string& what) {
  const size_t elem = DTypeSize(c_dtype);
  const int64_t total_rows = offsets.back() + kTrailingRows;
  for (int64_t r = 0; r < total_rows; ++r) {
    const bool inside = r >= offsets.front() && r < offsets.back();
    for (int64_t j = 0; j < n; ++j) {
      const size_t i = static_cast<size_t>(r * n + j);
      if (!inside) {
        for (size_t byte = 0; byte < elem; ++byte)
          ASSERT_EQ(c_bytes[i * elem + byte], 0x7F) << what << ": row " << r << " outside the groups was written";
        continue;
      }
      float got;
      if (c_dtype == DType::kF32) {
        std::memcpy(&got, &c_bytes[i * 4], 4);
      } else {
        uint16_t h;
        std::memcpy(&h, &c_bytes[i * 2], 2);
        got = Bf16ToFloat(h);
      }
      const double tol = bound[i] + (c_dtype == DType::kBF16 ? 0x1p-8 * std::fabs(want[i]) : 0.0) + 1e-30;
      ASSERT_NEAR(got, want[i], tol) << what << ": row " << r << " col " << j;
    }
  }
}

// The experimental sm90 kernel has its own tests (Sm90*): a hang or fault there must not take the other backends'
// results with it (scripts/gpu_check.sh runs them as a step of their own, in its gemm stage).
std::vector<GemmBackend> AllBackends() {
  return {GemmBackend::kAuto, GemmBackend::kCublasLt, GemmBackend::kCublasGrouped, GemmBackend::kSimt};
}

void RunBf16Case(const GemmCase& c, uint32_t seed, const std::vector<GemmBackend>& backends = AllBackends()) {
  auto stream = MakeStream(Device::Cuda(0), "gemm");
  ASSERT_NE(stream, nullptr);
  const std::vector<int64_t> offsets = Offsets(c.rows);
  const int num_groups = static_cast<int>(c.rows.size());
  const int64_t total_rows = offsets.back() + kTrailingRows;
  const std::vector<uint16_t> a_b = testing::ToBf16(testing::RandomFloats(total_rows * c.k, seed));
  const std::vector<float> a = testing::FromBf16(a_b);
  std::vector<std::vector<float>> b(num_groups);
  std::vector<DeviceArray<uint16_t>> b_dev;
  std::vector<const uint16_t*> b_ptrs;
  b_dev.reserve(num_groups);
  for (int g = 0; g < num_groups; ++g) {
    const std::vector<uint16_t> bg = testing::ToBf16(testing::RandomFloats(c.n * c.k, seed + 1 + g));
    b[g] = testing::FromBf16(bg);
    b_dev.emplace_back(bg);
    b_ptrs.push_back(b_dev.back().get());
  }
  std::vector<float> want, bound;
  Reference(a, b, offsets, c.n, c.k, &want, &bound);
  DeviceArray<uint16_t> a_dev(a_b);
  for (DType c_dtype : {DType::kBF16, DType::kF32}) {
    for (GemmBackend backend : backends) {
      const std::string what =
          absl::StrCat("bf16 -> ", DTypeName(c_dtype), " via ", GemmBackendName(backend), ", n=", c.n, " k=", c.k);
      DeviceArray<uint8_t> c_dev(total_rows * c.n * DTypeSize(c_dtype));
      c_dev.Fill(0x7F);
      const Status s = CudaGroupedGemmNTBf16(a_dev.get(), offsets.data(), num_groups, c.k, b_ptrs.data(), c.n,
                                             c_dev.get(), c_dtype, *stream, backend);
      if (backend == GemmBackend::kSm90 && s.code() == absl::StatusCode::kUnavailable) {
        std::printf("[ INFO ] %s: not compiled in or not a CC 9.0 device: %s\n", what.c_str(),
                    std::string(s.message()).c_str());
        continue;
      }
      if (backend == GemmBackend::kCublasGrouped && c_dtype == DType::kF32) {
        EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;  // bf16 output only
        continue;
      }
      ASSERT_TRUE(s.ok()) << what << ": " << s;
      ASSERT_TRUE(stream->Synchronize().ok()) << what;
      const std::vector<uint8_t> got = c_dev.ToHost();
      ExpectClose(got, c_dtype, want, bound, offsets, c.n, what);
      // Run to run: the same algorithm on the same inputs gives the same bits.
      DeviceArray<uint8_t> again(got.size());
      again.Fill(0x7F);
      ASSERT_TRUE(CudaGroupedGemmNTBf16(a_dev.get(), offsets.data(), num_groups, c.k, b_ptrs.data(), c.n, again.get(),
                                        c_dtype, *stream, backend)
                      .ok());
      ASSERT_TRUE(stream->Synchronize().ok());
      EXPECT_EQ(again.ToHost(), got) << what << ": not reproducible run to run";
    }
  }
}

void RunFp8Case(const GemmCase& c, uint32_t seed) {
  auto stream = MakeStream(Device::Cuda(0), "gemm");
  ASSERT_NE(stream, nullptr);
  const std::vector<int64_t> offsets = Offsets(c.rows);
  const int num_groups = static_cast<int>(c.rows.size());
  const int64_t total_rows = offsets.back() + kTrailingRows;
  const int64_t kb = c.k / kBlock;
  // Activations with a per-row spread of magnitudes, so the block scales matter.
  std::vector<float> a_f = testing::RandomFloats(total_rows * c.k, seed);
  for (int64_t r = 0; r < total_rows; ++r) {
    for (int64_t j = 0; j < c.k; ++j) a_f[r * c.k + j] *= std::ldexp(1.0f, static_cast<int>((r + j / kBlock) % 7) - 3);
  }
  std::vector<uint8_t> a_q(a_f.size());
  std::vector<float> a_s(total_rows * kb), a(a_f.size());
  ASSERT_TRUE(QuantizeFp8Blockwise(a_f.data(), total_rows, c.k, kBlock, a_q.data(), a_s.data()).ok());
  ASSERT_TRUE(DequantizeFp8Blockwise(a_q.data(), a_s.data(), total_rows, c.k, kBlock, a.data()).ok());
  std::vector<std::vector<float>> b(num_groups);
  std::vector<DeviceArray<uint8_t>> bq_dev;
  std::vector<DeviceArray<float>> bs_dev;
  std::vector<const uint8_t*> bq_ptrs;
  std::vector<const float*> bs_ptrs;
  bq_dev.reserve(num_groups);
  bs_dev.reserve(num_groups);
  for (int g = 0; g < num_groups; ++g) {
    const std::vector<float> bf = testing::RandomFloats(c.n * c.k, seed + 1 + g, -0.05f, 0.05f);
    std::vector<uint8_t> bq(bf.size());
    std::vector<float> bs(c.n * kb);
    b[g].resize(bf.size());
    ASSERT_TRUE(QuantizeFp8Blockwise(bf.data(), c.n, c.k, kBlock, bq.data(), bs.data()).ok());
    ASSERT_TRUE(DequantizeFp8Blockwise(bq.data(), bs.data(), c.n, c.k, kBlock, b[g].data()).ok());
    bq_dev.emplace_back(bq);
    bs_dev.emplace_back(bs);
    bq_ptrs.push_back(bq_dev.back().get());
    bs_ptrs.push_back(bs_dev.back().get());
  }
  std::vector<float> want, bound, tensor_bound;
  Reference(a, b, offsets, c.n, c.k, &want, &bound);
  tensor_bound = bound;
  for (float& v : tensor_bound) v *= 0x1p5f;  // 2^-18 -> 2^-13: FP8 tensor-core accumulation (see the header)
  DeviceArray<uint8_t> aq_dev(a_q);
  DeviceArray<float> as_dev(a_s);
  for (DType c_dtype : {DType::kBF16, DType::kF32}) {
    for (GemmBackend backend : {GemmBackend::kAuto, GemmBackend::kCublasLt, GemmBackend::kSimt}) {
      const std::string what =
          absl::StrCat("fp8 -> ", DTypeName(c_dtype), " via ", GemmBackendName(backend), ", n=", c.n, " k=", c.k);
      DeviceArray<uint8_t> c_dev(total_rows * c.n * DTypeSize(c_dtype));
      c_dev.Fill(0x7F);
      const Status s = CudaGroupedGemmNTFp8(aq_dev.get(), as_dev.get(), offsets.data(), num_groups, c.k, bq_ptrs.data(),
                                            bs_ptrs.data(), c.n, c_dev.get(), c_dtype, *stream, backend);
      ASSERT_TRUE(s.ok()) << what << ": " << s;
      ASSERT_TRUE(stream->Synchronize().ok()) << what;
      ExpectClose(c_dev.ToHost(), c_dtype, want, backend == GemmBackend::kSimt ? bound : tensor_bound, offsets, c.n,
                  what);
    }
  }
}

TEST(CudaGroupedGemmTest, CpuStreamOrStubIsRejected) {
  auto cpu = MakeStream(Device::Cpu(), "cpu");
  ASSERT_NE(cpu, nullptr);
  const std::vector<int64_t> offsets = {0, 4};
  std::vector<uint16_t> a(4 * 64), b(64 * 64);
  std::vector<uint8_t> q(4 * 128);
  std::vector<float> s(4), c(4 * 64);
  const uint16_t* b_ptrs[] = {b.data()};
  const uint8_t* bq_ptrs[] = {q.data()};
  const float* bs_ptrs[] = {s.data()};
  const absl::StatusCode want =
      CudaKernelsCompiledIn() ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
  EXPECT_EQ(CudaGroupedGemmNTBf16(a.data(), offsets.data(), 1, 64, b_ptrs, 64, c.data(), DType::kF32, *cpu).code(),
            want);
  EXPECT_EQ(CudaGroupedGemmNTFp8(q.data(), s.data(), offsets.data(), 1, 128, bq_ptrs, bs_ptrs, 16, c.data(),
                                 DType::kF32, *cpu)
                .code(),
            want);
}

TEST(CudaGroupedGemmTest, Bf16SmallGroupsIncludingEmpty) {
  WAVEEP_SKIP_WITHOUT_GPU();
  // M = 0, 1, 3, 5 (not multiples of 4 or of any tile), a full tile, one row short of two tiles.
  RunBf16Case({{0, 1, 3, 0, 5, 64, 127, 128, 300, 0}, 256, 512}, 100);
}

TEST(CudaGroupedGemmTest, Bf16SkewedAndPartialTiles) {
  WAVEEP_SKIP_WITHOUT_GPU();
  // One hot expert, N not a multiple of 128 (partial n tiles), several k tiles.
  RunBf16Case({{2000, 1, 0, 70, 3, 700, 0, 64}, 1000, 2048}, 200);
}

TEST(CudaGroupedGemmTest, Bf16OddShapesAndAlignments) {
  WAVEEP_SKIP_WITHOUT_GPU();
  // K and N odd: rows start at 2-byte offsets (A) and C rows at 2- or 4-byte ones. cuBLASLt must be told (or fall
  // back to the simt kernel); the experimental sm90 kernel needs k % 64 == 0 and is not asked.
  RunBf16Case({{0, 7, 65, 1}, 50, 37}, 250, {GemmBackend::kAuto, GemmBackend::kCublasLt, GemmBackend::kSimt});
}

TEST(CudaGroupedGemmTest, Sm90Bf16SmallGroupsIncludingEmpty) {
  WAVEEP_SKIP_WITHOUT_GPU();
  RunBf16Case({{0, 1, 3, 0, 5, 64, 127, 128, 300, 0}, 256, 512}, 100, {GemmBackend::kSm90});
}

TEST(CudaGroupedGemmTest, Sm90Bf16SkewedAndPartialTiles) {
  WAVEEP_SKIP_WITHOUT_GPU();
  RunBf16Case({{2000, 1, 0, 70, 3, 700, 0, 64}, 1000, 2048}, 200, {GemmBackend::kSm90});
}

TEST(CudaGroupedGemmTest, Fp8SmallGroupsIncludingEmpty) {
  WAVEEP_SKIP_WITHOUT_GPU();
  // M % 4 != 0 checks the padded scale layout cuBLASLt is given.
  RunFp8Case({{0, 1, 3, 0, 5, 64, 127, 128, 300, 0}, 256, 512}, 300);
}

TEST(CudaGroupedGemmTest, Fp8SkewedDeepK) {
  WAVEEP_SKIP_WITHOUT_GPU();
  RunFp8Case({{1500, 2, 0, 33, 400}, 512, 4096}, 400);
}

TEST(CudaGroupedGemmTest, DegenerateShapes) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "gemm");
  ASSERT_NE(stream, nullptr);
  const std::vector<int64_t> offsets = {1, 4, 4, 6};
  DeviceArray<uint16_t> a(8 * 64), b(64 * 64);
  const uint16_t* b_ptrs[] = {b.get(), nullptr, b.get()};
  // k == 0: the group rows become zero, the rest is untouched.
  DeviceArray<float> c(8 * 64);
  c.Fill(0x7F);
  ASSERT_TRUE(CudaGroupedGemmNTBf16(a.get(), offsets.data(), 3, 0, b_ptrs, 64, c.get(), DType::kF32, *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  std::vector<float> got = c.ToHost();
  for (int64_t r = 0; r < 8; ++r) {
    for (int64_t j = 0; j < 64; ++j) {
      const uint32_t bits = testing::Bits(got[r * 64 + j]);
      EXPECT_EQ(bits, r >= 1 && r < 6 ? 0u : 0x7F7F7F7Fu) << r;
    }
  }
  // Every group empty, n == 0 and no groups at all: nothing is written.
  const std::vector<int64_t> empty = {2, 2, 2, 2};
  c.Fill(0x7F);
  EXPECT_TRUE(CudaGroupedGemmNTBf16(a.get(), empty.data(), 3, 64, b_ptrs, 64, c.get(), DType::kF32, *stream).ok());
  EXPECT_TRUE(CudaGroupedGemmNTBf16(a.get(), offsets.data(), 3, 64, b_ptrs, 0, c.get(), DType::kF32, *stream).ok());
  EXPECT_TRUE(CudaGroupedGemmNTBf16(nullptr, nullptr, 0, 64, nullptr, 64, nullptr, DType::kF32, *stream).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  for (float v : c.ToHost()) EXPECT_EQ(testing::Bits(v), 0x7F7F7F7Fu);
}

TEST(CudaGroupedGemmTest, BadArguments) {
  WAVEEP_SKIP_WITHOUT_GPU();
  auto stream = MakeStream(Device::Cuda(0), "gemm");
  ASSERT_NE(stream, nullptr);
  DeviceArray<uint16_t> a(8 * 128), b(128 * 128);
  DeviceArray<uint8_t> q(8 * 128);
  DeviceArray<float> s(128), c(8 * 128);
  const uint16_t* b_ptrs[] = {b.get(), b.get()};
  const uint16_t* null_b[] = {b.get(), nullptr};
  const uint8_t* bq_ptrs[] = {q.get(), q.get()};
  const float* bs_ptrs[] = {s.get(), s.get()};
  const std::vector<int64_t> good = {0, 4, 8}, decreasing = {0, 5, 4}, negative = {-1, 4, 8};
  auto bf16 = [&](const std::vector<int64_t>& off, const uint16_t* const* bp, DType c_dtype, GemmBackend be) {
    return CudaGroupedGemmNTBf16(a.get(), off.data(), 2, 128, bp, 128, c.get(), c_dtype, *stream, be).code();
  };
  EXPECT_EQ(bf16(decreasing, b_ptrs, DType::kF32, GemmBackend::kAuto), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bf16(negative, b_ptrs, DType::kF32, GemmBackend::kAuto), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bf16(good, null_b, DType::kF32, GemmBackend::kAuto), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bf16(good, b_ptrs, DType::kFP8E4M3, GemmBackend::kAuto), absl::StatusCode::kInvalidArgument);
  auto fp8 = [&](int64_t k, int64_t n, GemmBackend be) {
    return CudaGroupedGemmNTFp8(q.get(), s.get(), good.data(), 2, k, bq_ptrs, bs_ptrs, n, c.get(), DType::kF32, *stream,
                                be)
        .code();
  };
  EXPECT_EQ(fp8(100, 16, GemmBackend::kAuto), absl::StatusCode::kInvalidArgument);  // K % 128
  EXPECT_EQ(fp8(128, 10, GemmBackend::kAuto), absl::StatusCode::kInvalidArgument);  // N % 16
  EXPECT_EQ(fp8(128, 16, GemmBackend::kCublasGrouped), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(stream->Synchronize().ok());
}

}  // namespace
}  // namespace waveep::kernels
