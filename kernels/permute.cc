// Copyright 2026 The waveep Authors.
//
// Expert-major permutation of (token, slot) pairs: a stable counting sort by expert, so rows of one expert stay in
// (token, slot) order and the layout is deterministic for a given routing.
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/kernels.h"

namespace waveep::kernels {

Status BuildExpertPermutation(const int32_t* topk_idx, int64_t num_tokens, int top_k, int num_experts,
                              ExpertPermutation* out) {
  if (out == nullptr) return absl::InvalidArgumentError("BuildExpertPermutation: null output");
  if (num_tokens < 0)
    return absl::InvalidArgumentError(absl::StrCat("BuildExpertPermutation: num_tokens < 0: ", num_tokens));
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("BuildExpertPermutation: top_k < 0: ", top_k));
  if (num_experts <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat("BuildExpertPermutation: num_experts must be > 0, got ", num_experts));
  const int64_t num_pairs = num_tokens * top_k;
  if (num_pairs > 0 && topk_idx == nullptr) return absl::InvalidArgumentError("BuildExpertPermutation: null topk_idx");

  // Count (and validate) first; *out is untouched unless every index is in range.
  std::vector<int64_t> offsets(static_cast<size_t>(num_experts) + 1, 0);
  for (int64_t pair = 0; pair < num_pairs; ++pair) {
    const int32_t e = topk_idx[pair];
    if (e < 0 || e >= num_experts)
      return absl::InvalidArgumentError(absl::StrCat("BuildExpertPermutation: topk_idx[token ", pair / top_k, ", slot ",
                                                     pair % top_k, "] = ", e, " is outside [0, ", num_experts, ")"));
    ++offsets[e + 1];
  }
  for (int e = 0; e < num_experts; ++e) offsets[e + 1] += offsets[e];

  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  std::vector<int64_t> pair_of_row(num_pairs);
  std::vector<int64_t> row_of_pair(num_pairs);
  for (int64_t pair = 0; pair < num_pairs; ++pair) {
    const int64_t row = cursor[topk_idx[pair]]++;
    pair_of_row[row] = pair;
    row_of_pair[pair] = row;
  }
  out->expert_offsets = std::move(offsets);
  out->pair_of_row = std::move(pair_of_row);
  out->row_of_pair = std::move(row_of_pair);
  return absl::OkStatus();
}

void GatherRows(const void* src, int64_t row_bytes, const int64_t* src_rows, int64_t num_rows, void* dst) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  for (int64_t i = 0; i < num_rows; ++i) std::memcpy(d + i * row_bytes, s + src_rows[i] * row_bytes, row_bytes);
}

void ScatterRows(const void* src, int64_t row_bytes, const int64_t* dst_rows, int64_t num_rows, void* dst) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  for (int64_t i = 0; i < num_rows; ++i) std::memcpy(d + dst_rows[i] * row_bytes, s + i * row_bytes, row_bytes);
}

}  // namespace waveep::kernels
