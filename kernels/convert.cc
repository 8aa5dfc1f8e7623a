// Copyright 2026 The waveep Authors.
//
// BF16 and FP8 (OCP e4m3fn) conversions and blockwise FP8 quantization. Bit manipulation only, so the results do
// not depend on the FPU rounding mode and the CUDA kernels (cuda_convert.cu) can reproduce them bit for bit.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

uint32_t FloatBits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

float BitsToFloat(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// All 256 e4m3fn codes decoded once; a table lookup is both the fastest decoder and trivially exact.
std::array<float, 256> MakeFp8Table() {
  std::array<float, 256> t{};
  for (int code = 0; code < 256; ++code) {
    const int exp_field = (code >> 3) & 0xF;
    const int mant = code & 0x7;
    float v;
    if (exp_field == 0xF && mant == 0x7) {
      v = std::numeric_limits<float>::quiet_NaN();
    } else if (exp_field == 0) {
      v = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant * 2^(1 - 7 - 3)
    } else {
      v = std::ldexp(static_cast<float>(8 + mant), exp_field - 10);  // (1 + mant/8) * 2^(exp - 7)
    }
    t[code] = (code & 0x80) ? -v : v;
  }
  return t;
}

const std::array<float, 256>& Fp8Table() {
  static const std::array<float, 256> table = MakeFp8Table();
  return table;
}

Status CheckBlockArgs(int64_t rows, int64_t cols, int block) {
  if (block <= 0) return absl::InvalidArgumentError(absl::StrCat("FP8 block must be > 0, got ", block));
  if (rows < 0 || cols < 0)
    return absl::InvalidArgumentError(absl::StrCat("FP8 rows and cols must be >= 0, got ", rows, " x ", cols));
  if (cols % block != 0)
    return absl::InvalidArgumentError(
        absl::StrCat("FP8 cols (", cols, ") must be a multiple of the block (", block, ")"));
  return absl::OkStatus();
}

}  // namespace

uint16_t FloatToBf16(float x) {
  const uint32_t u = FloatBits(x);
  // NOTES: NaN must be handled before rounding: a NaN whose payload lives only in the low 16 bits would otherwise
  // round to infinity. Setting the quiet bit keeps the sign and the top of the payload.
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  // Round to nearest even: add 0x7FFF plus the LSB that survives; carries ripple into the exponent correctly
  // (including overflow to infinity, which is the IEEE result).
  const uint32_t rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

float Bf16ToFloat(uint16_t x) { return BitsToFloat(static_cast<uint32_t>(x) << 16); }

float F16ToFloat(uint16_t x) {
  const uint32_t sign = static_cast<uint32_t>(x & 0x8000u) << 16;
  const int exp = (x >> 10) & 0x1F;
  const uint32_t mant = x & 0x3FFu;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);  // subnormal (or zero): mant * 2^(1 - 15 - 10)
  } else if (exp == 31) {
    v = mant == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else {
    v = std::ldexp(static_cast<float>(mant | 0x400u), exp - 25);  // (1 + mant/1024) * 2^(exp - 15)
  }
  return BitsToFloat(FloatBits(v) | sign);
}

void ConvertF32ToBf16(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToBf16(in[i]);
}

void ConvertBf16ToF32(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToFloat(in[i]);
}

uint8_t FloatToFp8E4M3(float x) {
  const uint32_t u = FloatBits(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t abs_bits = u & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return 0x7F;          // NaN (e4m3fn has no signed-NaN convention we rely on)
  if (abs_bits >= 0x43E00000u) return sign | 0x7E;  // |x| >= 448 (incl. inf): saturate
  if (abs_bits >= 0x3C800000u) {                    // |x| >= 2^-6: normal e4m3 range
    // Keep 3 of the 23 mantissa bits with round-to-nearest-even; a carry moves into the exponent as it should.
    const uint32_t rounded = abs_bits + 0x7FFFFu + ((abs_bits >> 20) & 1u);
    // Rebias the exponent from 127 to 7: subtract (127 - 7) << 3 from the (exp, mant3) code.
    // |x| < 448 here, so the result is at most 0x7E and never the NaN code 0x7F.
    return sign | static_cast<uint8_t>((rounded >> 20) - (120u << 3));
  }
  // Subnormal range: the code is round(|x| * 2^9) in [0, 8]; 8 is exactly the smallest normal (code 0x08).
  // |x| * 512 is exact (power-of-two scale of a value far from overflow), and so is the fraction below.
  const float t = BitsToFloat(abs_bits) * 512.0f;
  uint32_t m = static_cast<uint32_t>(t);
  const float frac = t - static_cast<float>(m);
  if (frac > 0.5f || (frac == 0.5f && (m & 1u))) ++m;
  return sign | static_cast<uint8_t>(m);
}

float Fp8E4M3ToFloat(uint8_t x) { return Fp8Table()[x]; }

Status QuantizeFp8Blockwise(const float* x, int64_t rows, int64_t cols, int block, uint8_t* q, float* scales) {
  WAVEEP_RETURN_IF_ERROR(CheckBlockArgs(rows, cols, block));
  if (rows * cols > 0 && (x == nullptr || q == nullptr || scales == nullptr))
    return absl::InvalidArgumentError("QuantizeFp8Blockwise: null x, q or scales");
  const int64_t blocks_per_row = cols / block;
  // NOTES: non-finite inputs are not rejected (that would cost a second pass): NaN is skipped by the amax and
  // encodes as NaN; an infinity makes its block's scale infinite, so the block dequantizes to NaN/0.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      const int64_t base = r * cols + b * block;
      float amax = 0.0f;
      for (int i = 0; i < block; ++i) amax = std::max(amax, std::fabs(x[base + i]));
      // An all-zero block keeps scale 1 so dequantization never divides or multiplies by zero-derived values.
      const float scale = amax > 0.0f ? amax / kFp8E4M3Max : 1.0f;
      scales[r * blocks_per_row + b] = scale;
      for (int i = 0; i < block; ++i) q[base + i] = FloatToFp8E4M3(x[base + i] / scale);
    }
  }
  return absl::OkStatus();
}

Status DequantizeFp8Blockwise(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, int block, float* x) {
  WAVEEP_RETURN_IF_ERROR(CheckBlockArgs(rows, cols, block));
  if (rows * cols > 0 && (x == nullptr || q == nullptr || scales == nullptr))
    return absl::InvalidArgumentError("DequantizeFp8Blockwise: null q, scales or x");
  const std::array<float, 256>& table = Fp8Table();
  const int64_t blocks_per_row = cols / block;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      const int64_t base = r * cols + b * block;
      const float scale = scales[r * blocks_per_row + b];
      for (int i = 0; i < block; ++i) x[base + i] = table[q[base + i]] * scale;
    }
  }
  return absl::OkStatus();
}

}  // namespace waveep::kernels
