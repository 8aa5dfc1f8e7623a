// Copyright 2026 The waveep Authors.
//
// BF16 / FP8 e4m3fn conversions and blockwise FP8 quantization against brute-force references that share no code
// with the bit-twiddling implementation: they decode candidates arithmetically and pick the nearest in double.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

using ::testing::HasSubstr;

uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

float FromBits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// ---- independent references --------------------------------------------------------------------------------

// Value of a BF16 pattern by its definition (sign, 8-bit exponent with bias 127, 7-bit fraction), in double.
double Bf16Value(uint16_t b) {
  const int sign = b >> 15, exp_field = (b >> 7) & 0xFF, frac = b & 0x7F;
  double v = exp_field == 0 ? std::ldexp(frac / 128.0, -126) : std::ldexp(1.0 + frac / 128.0, exp_field - 127);
  if (exp_field == 0xFF) v = std::ldexp(1.0, 128);  // infinity, as the "next value up" when rounding overflows
  return sign ? -v : v;
}

// RNE float -> bf16 by comparing distances to the two neighbouring BF16 values in double (exact here).
uint16_t Bf16Reference(float x) {
  const uint32_t u = Bits(x);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);  // truncation: same sign, magnitude <= |x|
  const uint16_t hi = static_cast<uint16_t>(lo + 1);   // next magnitude up (may be the infinity pattern)
  if ((u & 0xFFFF) == 0) return lo;
  const double d_lo = std::fabs(static_cast<double>(x) - Bf16Value(lo));
  const double d_hi = std::fabs(Bf16Value(hi) - static_cast<double>(x));
  if (d_lo < d_hi) return lo;
  if (d_hi < d_lo) return hi;
  return (lo & 1) ? hi : lo;
}

// Value of an e4m3fn code by the OCP definition: bias 7, subnormals for exponent field 0, S.1111.111 is NaN.
double Fp8Value(uint8_t c) {
  const int sign = c >> 7, exp_field = (c >> 3) & 0xF, mant = c & 7;
  if (exp_field == 15 && mant == 7) return std::numeric_limits<double>::quiet_NaN();
  const double v = exp_field == 0 ? std::ldexp(mant / 8.0, -6) : std::ldexp(1.0 + mant / 8.0, exp_field - 7);
  return sign ? -v : v;
}

// Nearest finite e4m3fn code of the same sign (ties to the even code, i.e. even mantissa), NaN -> 0x7F, and
// saturation to 448 above it. (The search alone would saturate too, but for |x| >~ 1e19 the distances to all
// codes round to the same double and the tie-break would pick 0.)
uint8_t Fp8Reference(float x) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const double ax = std::fabs(static_cast<double>(x));
  if (ax >= 448) return static_cast<uint8_t>(sign | 0x7E);
  int best = -1;
  double best_d = 0;
  for (int m = 0; m <= 0x7E; ++m) {
    const double d = std::fabs(ax - Fp8Value(static_cast<uint8_t>(m)));
    if (best < 0 || d < best_d || (d == best_d && (m & 1) == 0 && (best & 1) == 1)) {
      best = m;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(sign | best);
}

// ---- BF16 --------------------------------------------------------------------------------------------------

TEST(Bf16Test, ExhaustiveRoundTripOfAllPatterns) {
  for (uint32_t p = 0; p < 65536; ++p) {
    const uint16_t b = static_cast<uint16_t>(p);
    const float f = Bf16ToFloat(b);
    const double expected = Bf16Value(b);
    const bool is_nan = ((b >> 7) & 0xFF) == 0xFF && (b & 0x7F) != 0;
    if (is_nan) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << p;
      // NaN stays NaN, becomes quiet, keeps its sign and payload top bits.
      EXPECT_EQ(FloatToBf16(f), b | 0x0040) << std::hex << p;
      continue;
    }
    if (((b >> 7) & 0xFF) == 0xFF) {
      EXPECT_TRUE(std::isinf(f)) << std::hex << p;
    } else {
      EXPECT_EQ(static_cast<double>(f), expected) << std::hex << p;  // decoding is exact
    }
    ASSERT_EQ(FloatToBf16(f), b) << std::hex << p;  // every non-NaN pattern round-trips bit-exactly
  }
}

TEST(Bf16Test, TiesRoundToEven) {
  // 1 + 2^-8 is halfway between 1 (0x3F80, even) and 1 + 2^-7 (0x3F81): goes down to even.
  EXPECT_EQ(FloatToBf16(1.0f + 0x1p-8f), 0x3F80);
  // 1 + 3*2^-8 is halfway between 0x3F81 (odd) and 0x3F82 (even): goes up.
  EXPECT_EQ(FloatToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);
  EXPECT_EQ(FloatToBf16(-(1.0f + 0x1p-8f)), 0xBF80);
  EXPECT_EQ(FloatToBf16(-(1.0f + 3 * 0x1p-8f)), 0xBF82);
  // One float ulp either side of the tie decides it.
  EXPECT_EQ(FloatToBf16(std::nextafter(1.0f + 0x1p-8f, 2.0f)), 0x3F81);
  EXPECT_EQ(FloatToBf16(std::nextafter(1.0f + 3 * 0x1p-8f, 0.0f)), 0x3F81);
  // Subnormal tie: pattern 0x00010000 + 0x8000 sits between bf16 0x0001 (odd) and 0x0002 (even).
  EXPECT_EQ(FloatToBf16(FromBits(0x00018000u)), 0x0002);
  EXPECT_EQ(FloatToBf16(FromBits(0x00008000u)), 0x0000);
  // Rounding can carry into the exponent, and past the largest finite BF16 to infinity (IEEE overflow).
  EXPECT_EQ(FloatToBf16(FromBits(0x3FFFFFFFu)), 0x4000);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
}

TEST(Bf16Test, NanStaysQuietNan) {
  const float signalling = FromBits(0x7F800001u);  // payload only in the low bits: naive rounding would give inf
  EXPECT_EQ(FloatToBf16(signalling), 0x7FC0);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  EXPECT_EQ(FloatToBf16(FromBits(0xFFC00000u)), 0xFFC0);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(signalling))));
}

TEST(Bf16Test, RandomFloatsMatchReference) {
  std::mt19937 rng(1234);
  std::vector<float> in;
  for (int i = 0; i < 200000; ++i) {
    const float f = FromBits(static_cast<uint32_t>(rng()));
    if (!std::isnan(f)) in.push_back(f);
  }
  for (int i = 0; i < 100000; ++i) in.push_back(UniformSym(7, RngStream::kTest, i) * 3.0f);
  std::vector<uint16_t> out(in.size());
  ConvertF32ToBf16(in.data(), out.data(), static_cast<int64_t>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(out[i], Bf16Reference(in[i])) << "x=" << in[i] << " bits=" << std::hex << Bits(in[i]);
  }
  std::vector<float> back(in.size());
  ConvertBf16ToF32(out.data(), back.data(), static_cast<int64_t>(out.size()));
  for (size_t i = 0; i < in.size(); ++i) ASSERT_EQ(Bits(back[i]), static_cast<uint32_t>(out[i]) << 16);
}

// ---- F16 -> FP32 ------------------------------------------------------------------------------------------------

// IEEE binary16 by definition, in double: (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
double F16Value(uint16_t code) {
  const int e = (code >> 10) & 0x1F, m = code & 0x3FF;
  const double sign = (code & 0x8000) ? -1.0 : 1.0;
  if (e == 31) return m == 0 ? sign * std::numeric_limits<double>::infinity() : std::nan("");
  if (e == 0) return sign * std::ldexp(m / 1024.0, -14);
  return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

TEST(F16Test, EveryCodeDecodesByDefinition) {
  for (int c = 0; c < 65536; ++c) {
    const uint16_t code = static_cast<uint16_t>(c);
    const float f = F16ToFloat(code);
    const double want = F16Value(code);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(f)) << c;
    } else {
      ASSERT_EQ(static_cast<double>(f), want) << c;
      ASSERT_EQ(std::signbit(f), (code & 0x8000) != 0) << c;  // -0 stays -0
    }
  }
  EXPECT_EQ(F16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(F16ToFloat(0x7BFF), 65504.0f);  // largest normal
  EXPECT_EQ(F16ToFloat(0x0001), 0x1p-24f);  // smallest subnormal
}

// ---- FP8 e4m3fn ----------------------------------------------------------------------------------------------

TEST(Fp8Test, DecodesByDefinition) {
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0xFE), -448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), 0x1p-6f);  // smallest normal
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), 0x1p-9f);  // smallest subnormal
  EXPECT_EQ(Fp8E4M3ToFloat(0x07), 7 * 0x1p-9f);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xFF)));
  EXPECT_TRUE(std::signbit(Fp8E4M3ToFloat(0x80)));
  for (int c = 0; c < 256; ++c) {
    const double v = Fp8Value(static_cast<uint8_t>(c));
    if (std::isnan(v)) continue;
    EXPECT_EQ(static_cast<double>(Fp8E4M3ToFloat(static_cast<uint8_t>(c))), v) << c;
  }
}

TEST(Fp8Test, AllCodesRoundTripExactly) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    const float f = Fp8E4M3ToFloat(code);
    if (code == 0x7F || code == 0xFF) {
      EXPECT_EQ(FloatToFp8E4M3(f), 0x7F);
    } else {
      EXPECT_EQ(FloatToFp8E4M3(f), code) << "code " << c << " value " << f;
    }
  }
}

TEST(Fp8Test, TiesBetweenAdjacentCodesRoundToEven) {
  for (int c = 0; c < 0x7E; ++c) {
    // The midpoint of two e4m3 values has at most 5 significant bits: exact in float.
    const float lo = Fp8E4M3ToFloat(static_cast<uint8_t>(c)), hi = Fp8E4M3ToFloat(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;
    const uint8_t even = static_cast<uint8_t>((c & 1) ? c + 1 : c);
    EXPECT_EQ(FloatToFp8E4M3(mid), even) << "between codes " << c << " and " << c + 1;
    EXPECT_EQ(FloatToFp8E4M3(-mid), even | 0x80) << "between codes -" << c << " and -" << c + 1;
    EXPECT_EQ(FloatToFp8E4M3(std::nextafter(mid, 0.0f)), c);
    EXPECT_EQ(FloatToFp8E4M3(std::nextafter(mid, 1000.0f)), c + 1);
  }
  EXPECT_EQ(FloatToFp8E4M3(1.0625f), 0x38);           // between 1 (0x38) and 1.125 (0x39)
  EXPECT_EQ(FloatToFp8E4M3(1.1875f), 0x3A);           // between 1.125 (0x39) and 1.25 (0x3A)
  EXPECT_EQ(FloatToFp8E4M3(15.0f * 0x1p-10f), 0x08);  // 7.5 * 2^-9: largest subnormal / smallest normal
}

TEST(Fp8Test, SaturatesToMax) {
  for (float x : {448.0f, 449.0f, 463.99f, 464.0f, 480.0f, 500.0f, 1e30f, std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(FloatToFp8E4M3(x), 0x7E) << x;
    EXPECT_EQ(FloatToFp8E4M3(-x), 0xFE) << -x;
  }
  EXPECT_EQ(Fp8E4M3ToFloat(FloatToFp8E4M3(500.0f)), 448.0f);
}

TEST(Fp8Test, Subnormals) {
  EXPECT_EQ(FloatToFp8E4M3(0x1p-9f), 0x01);
  EXPECT_EQ(FloatToFp8E4M3(0x1p-10f), 0x00);      // tie between 0 and 2^-9: even is 0
  EXPECT_EQ(FloatToFp8E4M3(3 * 0x1p-10f), 0x02);  // tie between 1 and 2 (x 2^-9): even is 2
  EXPECT_EQ(FloatToFp8E4M3(0.75f * 0x1p-9f), 0x01);
  EXPECT_EQ(FloatToFp8E4M3(0x1p-11f), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(-0x1p-11f), 0x80);
  EXPECT_EQ(FloatToFp8E4M3(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(5 * 0x1p-9f), 0x05);
  EXPECT_EQ(FloatToFp8E4M3(-0.0f), 0x80);
  EXPECT_EQ(FloatToFp8E4M3(0.0f), 0x00);
}

TEST(Fp8Test, NanMapsToCanonicalNan) {
  EXPECT_EQ(FloatToFp8E4M3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(FloatToFp8E4M3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(FloatToFp8E4M3(FromBits(0x7F800001u)), 0x7F);
}

TEST(Fp8Test, RandomFloatsMatchBruteForceReference) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<double> log2_mag(-12.0, 10.0);  // spans zero-flush, subnormal, normal, saturation
  for (int i = 0; i < 100000; ++i) {
    float x = static_cast<float>(std::exp2(log2_mag(rng)));
    if (rng() & 1) x = -x;
    ASSERT_EQ(FloatToFp8E4M3(x), Fp8Reference(x)) << "x=" << x;
  }
  for (int i = 0; i < 50000; ++i) {
    const float x = FromBits(static_cast<uint32_t>(rng()));
    ASSERT_EQ(FloatToFp8E4M3(x), Fp8Reference(x)) << "bits=" << std::hex << Bits(x);
  }
}

// ---- blockwise quantization ------------------------------------------------------------------------------------

TEST(Fp8BlockwiseTest, ScalesCodesAndErrorBound) {
  for (int block : {32, 128}) {
    constexpr int64_t kRows = 7, kCols = 512;
    std::vector<float> x(kRows * kCols);
    for (int64_t r = 0; r < kRows; ++r) {
      const float magnitude = std::ldexp(1.0f, static_cast<int>(r * 5 - 15));  // rows from 2^-15 to 2^15
      for (int64_t c = 0; c < kCols; ++c)
        x[r * kCols + c] = magnitude * UniformSym(block, RngStream::kTest, r * kCols + c);
    }
    const int64_t num_blocks = kCols / block;
    std::vector<uint8_t> q(x.size());
    std::vector<float> scales(kRows * num_blocks), deq(x.size());
    ASSERT_TRUE(QuantizeFp8Blockwise(x.data(), kRows, kCols, block, q.data(), scales.data()).ok());
    ASSERT_TRUE(DequantizeFp8Blockwise(q.data(), scales.data(), kRows, kCols, block, deq.data()).ok());
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t b = 0; b < num_blocks; ++b) {
        float amax = 0;
        for (int i = 0; i < block; ++i) amax = std::max(amax, std::fabs(x[r * kCols + b * block + i]));
        const float scale = scales[r * num_blocks + b];
        ASSERT_EQ(scale, amax / 448.0f);
        for (int i = 0; i < block; ++i) {
          const int64_t j = r * kCols + b * block + i;
          ASSERT_EQ(q[j], Fp8Reference(x[j] / scale));
          ASSERT_EQ(deq[j], Fp8E4M3ToFloat(q[j]) * scale);
          // Error bound. e4m3 keeps 3 fraction bits, so rounding y = x/scale to the nearest code errs by at most
          // half an ulp: 2^-4 * 2^floor(log2|y|) <= 2^-4 |y| for normal codes, and 2^-10 (half of 2^-9) in the
          // subnormal range. |y| <= 448 by construction, so nothing saturates. Multiplying back by the scale and
          // the two FP32 roundings (x/scale, q*scale) add at most ~2^-23 |x|. Hence
          // |x - deq| <= 2^-4 |x| + 2^-10 scale + 2^-22 |x|. (An absolute "scale * 2^-4" bound would be wrong:
          // near 448 the code spacing is 32, so the error reaches 16 * scale.)
          const float err = std::fabs(x[j] - deq[j]);
          const float bound = (0x1p-4f + 0x1p-22f) * std::fabs(x[j]) + 0x1p-10f * scale;
          ASSERT_LE(err, bound) << "x=" << x[j] << " scale=" << scale;
        }
      }
    }
  }
}

TEST(Fp8BlockwiseTest, ExactWhenInputsAreRepresentable) {
  // x = code value * 2^s with one element per block at +-448 * 2^s: amax / 448 = 2^s exactly, so x / scale is the
  // code value again and dequantization reproduces x bit for bit.
  constexpr int kBlock = 64;
  constexpr int64_t kRows = 5, kCols = 4 * kBlock;
  std::mt19937 rng(7);
  std::vector<float> x(kRows * kCols), expected_scales;
  std::vector<uint8_t> expected_q(x.size());
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t b = 0; b < kCols / kBlock; ++b) {
      const int s = static_cast<int>(rng() % 40) - 20;
      expected_scales.push_back(std::ldexp(1.0f, s));
      for (int i = 0; i < kBlock; ++i) {
        uint8_t code = static_cast<uint8_t>(rng() % 256);
        if ((code & 0x7F) == 0x7F) code = 0x3C;  // no NaN inputs
        if (i == static_cast<int>(b % kBlock)) code = (rng() & 1) ? 0x7E : 0xFE;
        const int64_t j = r * kCols + b * kBlock + i;
        expected_q[j] = code;
        x[j] = std::ldexp(Fp8E4M3ToFloat(code), s);
      }
    }
  }
  std::vector<uint8_t> q(x.size());
  std::vector<float> scales(expected_scales.size()), deq(x.size());
  ASSERT_TRUE(QuantizeFp8Blockwise(x.data(), kRows, kCols, kBlock, q.data(), scales.data()).ok());
  ASSERT_TRUE(DequantizeFp8Blockwise(q.data(), scales.data(), kRows, kCols, kBlock, deq.data()).ok());
  EXPECT_EQ(scales, expected_scales);
  EXPECT_EQ(q, expected_q);  // including the sign of zero
  for (size_t j = 0; j < x.size(); ++j) EXPECT_EQ(Bits(deq[j]), Bits(x[j])) << j;
}

TEST(Fp8BlockwiseTest, AllZeroBlockHasUnitScale) {
  std::vector<float> x(2 * 32, 0.0f);
  for (int i = 32; i < 64; ++i) x[i] = UniformSym(3, RngStream::kTest, i);
  std::vector<uint8_t> q(x.size(), 0xAA);
  std::vector<float> scales(2), deq(x.size());
  ASSERT_TRUE(QuantizeFp8Blockwise(x.data(), 1, 64, 32, q.data(), scales.data()).ok());
  EXPECT_EQ(scales[0], 1.0f);
  EXPECT_GT(scales[1], 0.0f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(q[i], 0);
  ASSERT_TRUE(DequantizeFp8Blockwise(q.data(), scales.data(), 1, 64, 32, deq.data()).ok());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(deq[i], 0.0f);
}

TEST(Fp8BlockwiseTest, BadShapesAreRejectedWithoutWriting) {
  std::vector<float> x(96);
  for (int i = 0; i < 96; ++i) x[i] = UniformSym(5, RngStream::kTest, i);
  std::vector<uint8_t> q(96, 0xAA);
  std::vector<float> scales(4, -1.0f);
  Status s = QuantizeFp8Blockwise(x.data(), 1, 96, 64, q.data(), scales.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("multiple"));
  EXPECT_EQ(QuantizeFp8Blockwise(x.data(), 1, 96, 0, q.data(), scales.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeFp8Blockwise(x.data(), 1, 96, -32, q.data(), scales.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeFp8Blockwise(q.data(), scales.data(), 1, 96, 64, x.data()).code(),
            absl::StatusCode::kInvalidArgument);
  for (uint8_t v : q) EXPECT_EQ(v, 0xAA);
  for (float v : scales) EXPECT_EQ(v, -1.0f);
}

}  // namespace
}  // namespace waveep::kernels
