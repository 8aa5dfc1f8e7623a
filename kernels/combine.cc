// Copyright 2026 The waveep Authors.
//
// Weighted combine of expert outputs back into token order.
//
// NOTES: bitwise reproducibility (docs/architecture.md) rests on a fixed evaluation order: out starts at +0 and each
// slot adds fl(w * row) in k order. The loop over `hidden` vectorises without reassociating anything, and the target is
// compiled with -ffp-contract=off so no compiler may fuse the multiply-add into an FMA behind our back.
#include <cstring>

#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

template <typename RowT, typename ToFloat>
void CombineReduce(const RowT* rows, const int64_t* row_of_pair, const float* topk_weights, int64_t num_tokens,
                   int top_k, int64_t hidden, float* out, ToFloat to_float) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* o = out + t * hidden;
    for (int64_t h = 0; h < hidden; ++h) o[h] = 0.0f;
    for (int k = 0; k < top_k; ++k) {
      const int64_t row = row_of_pair[t * top_k + k];
      if (row < 0) continue;  // slot dropped by the caller (e.g. expert not computed here)
      const float w = topk_weights[t * top_k + k];
      const RowT* src = rows + row * hidden;
      for (int64_t h = 0; h < hidden; ++h) o[h] += w * to_float(src[h]);
    }
  }
}

}  // namespace

void CombineReduceF32(const float* rows, const int64_t* row_of_pair, const float* topk_weights, int64_t num_tokens,
                      int top_k, int64_t hidden, float* out) {
  CombineReduce(rows, row_of_pair, topk_weights, num_tokens, top_k, hidden, out, [](float v) { return v; });
}

void CombineReduceBf16(const uint16_t* rows, const int64_t* row_of_pair, const float* topk_weights, int64_t num_tokens,
                       int top_k, int64_t hidden, float* out) {
  // Inline widening (not a call to Bf16ToFloat in another translation unit) keeps the inner loop vectorisable.
  CombineReduce(rows, row_of_pair, topk_weights, num_tokens, top_k, hidden, out, [](uint16_t v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  });
}

}  // namespace waveep::kernels
