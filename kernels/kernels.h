// Copyright 2026 The waveep Authors.
//
// kernels/kernels.h — the compute of one MoE layer, as plain functions over host (CPU) memory.
//
// These CPU implementations are the reference every other implementation (CUDA: kernels/*.cu) is tested against.
// All functions are synchronous, thread-compatible (no shared state beyond BLAS's), take raw pointers that the
// caller owns, and write outputs only on success.
//
//   // route: logits [T, E] -> top-k experts and weights
//   WAVEEP_RETURN_IF_ERROR(TopkGating(logits, bias, T, GateParamsFrom(model), idx, w));
//   // permute: rows grouped by expert (expert-major, then token, then slot)
//   WAVEEP_RETURN_IF_ERROR(BuildExpertPermutation(idx, T, K, E, &perm));
//   GatherRows(x, H * sizeof(float), perm.pair_of_row.data(), perm.num_rows(), x_perm);   // pair -> token row
//   // expert FFN (SwiGLU) as grouped GEMMs, one per expert, variable M (0 allowed)
//   WAVEEP_RETURN_IF_ERROR(GroupedGemmNT(x_perm, perm.expert_offsets.data(), E, H, w13_ptrs, 2 * I, gate_up));
//   SwiGLU(gate_up, M, I, act);
//   WAVEEP_RETURN_IF_ERROR(GroupedGemmNT(act, perm.expert_offsets.data(), E, I, w2_ptrs, H, y));
//   // combine: out[t] = sum_k w[t,k] * y[row_of_pair[t*K+k]], in slot order k = 0..K-1, FP32
//   CombineReduceF32(y, perm.row_of_pair.data(), w, T, K, H, out);
//
// Numerics: BF16 and FP8 conversions round to nearest, ties to even. FP8 is OCP e4m3fn (bias 7, max 448, NaN
// 0x7F/0xFF, no infinities); conversion saturates to +-448 and is exact at representable values. Block scales are
// amax / 448 per `block` consecutive elements of a row (1.0 for an all-zero block), so q * scale reproduces x.
#ifndef WAVEEP_KERNELS_KERNELS_H_
#define WAVEEP_KERNELS_KERNELS_H_

#include <cstdint>
#include <vector>

#include "runtime/runtime.h"

namespace waveep::kernels {

// ---- BF16 <-> FP32 -----------------------------------------------------------------------------------------------
uint16_t FloatToBf16(float x);  // round to nearest even; NaN stays NaN (quiet)
float Bf16ToFloat(uint16_t x);  // exact
void ConvertF32ToBf16(const float* in, uint16_t* out, int64_t n);
void ConvertBf16ToF32(const uint16_t* in, float* out, int64_t n);

// ---- FP8 e4m3fn ------------------------------------------------------------------------------------------------
inline constexpr float kFp8E4M3Max = 448.0f;
uint8_t FloatToFp8E4M3(float x);  // RNE, saturating to +-448; NaN -> 0x7F
float Fp8E4M3ToFloat(uint8_t x);  // exact

// Quantizes x [rows, cols] (row-major) with one FP32 scale per `block` consecutive elements of a row:
// scales [rows, cols / block], q = fp8(x / scale). InvalidArgument unless cols % block == 0 and block > 0.
Status QuantizeFp8Blockwise(const float* x, int64_t rows, int64_t cols, int block, uint8_t* q, float* scales);
// Inverse: x = float(q) * scale.
Status DequantizeFp8Blockwise(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, int block, float* x);

// ---- top-k gating ----------------------------------------------------------------------------------------------
struct GateParams {
  int num_experts = 0;
  int top_k = 0;
  Scoring scoring = Scoring::kSoftmax;
  int n_group = 1;     // group-limited selection: keep the best topk_group of n_group groups, ...
  int topk_group = 1;  // ... group score = sum of its top-2 biased scores (sigmoid) or its max (softmax)
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};
GateParams GateParamsFrom(const ModelConfig& m);

// logits [T, E] -> topk_idx [T, K], topk_weights [T, K].
// scores = softmax(logits) or sigmoid(logits). `bias` [E] (nullable; DeepSeek's e_score_correction_bias) is added to
// the scores for *selection only*; weights are the unbiased scores of the selected experts, renormalised to sum 1
// when norm_topk_prob, then multiplied by routed_scaling_factor. Slots are ordered by descending biased score, ties
// by lower expert id. InvalidArgument on inconsistent params.
Status TopkGating(const float* logits, const float* bias, int64_t num_tokens, const GateParams& p, int32_t* topk_idx,
                  float* topk_weights);

// ---- permute / unpermute -----------------------------------------------------------------------------------------
// Grouping of the T*K (token, slot) pairs by expert. Row r of the permuted order holds pair pair_of_row[r]
// (= t*K + k); pairs of expert e occupy rows [expert_offsets[e], expert_offsets[e+1]), in (t, k) order.
struct ExpertPermutation {
  std::vector<int64_t> expert_offsets;  // [E + 1]
  std::vector<int64_t> pair_of_row;     // [T*K]
  std::vector<int64_t> row_of_pair;     // [T*K], inverse of pair_of_row
  int64_t num_rows() const { return static_cast<int64_t>(pair_of_row.size()); }
};
// InvalidArgument naming the token and slot if any index is outside [0, E).
Status BuildExpertPermutation(const int32_t* topk_idx, int64_t num_tokens, int top_k, int num_experts,
                              ExpertPermutation* out);

// dst row i = src row src_rows[i] (rows of `row_bytes` bytes). Permute: src_rows = pair / K (token of the pair).
void GatherRows(const void* src, int64_t row_bytes, const int64_t* src_rows, int64_t num_rows, void* dst);
// dst row dst_rows[i] = src row i. Unpermute.
void ScatterRows(const void* src, int64_t row_bytes, const int64_t* dst_rows, int64_t num_rows, void* dst);

// ---- expert compute --------------------------------------------------------------------------------------------
// One GEMM per group g: C[rows of g, N] = A[rows of g, K] * B[g]^T, B[g] is [N, K] row-major (nn.Linear [out, in]).
// Rows of group g are [group_offsets[g], group_offsets[g+1]); M = 0 groups are skipped. FP32 via BLAS (sgemm).
// InvalidArgument on decreasing offsets or a null B for a non-empty group.
Status GroupedGemmNT(const float* a, const int64_t* group_offsets, int num_groups, int64_t k, const float* const* b,
                     int64_t n, float* c);

// out[m, i] = silu(gate_up[m, i]) * gate_up[m, I + i] for gate_up [M, 2I]; silu(x) = x / (1 + exp(-x)).
void SwiGLU(const float* gate_up, int64_t m, int64_t intermediate, float* out);

// ---- combine ---------------------------------------------------------------------------------------------------
// out[t, :] = sum_{k=0..K-1} topk_weights[t, k] * rows[row_of_pair[t*K + k], :], accumulated in FP32 in slot order
// (k ascending) so the result is bitwise reproducible. row_of_pair < 0 skips the slot. out is overwritten.
void CombineReduceF32(const float* rows, const int64_t* row_of_pair, const float* topk_weights, int64_t num_tokens,
                      int top_k, int64_t hidden, float* out);
void CombineReduceBf16(const uint16_t* rows, const int64_t* row_of_pair, const float* topk_weights, int64_t num_tokens,
                       int top_k, int64_t hidden, float* out);

// ---- BLAS threading ---------------------------------------------------------------------------------------------
// Sets the BLAS library's thread count (OpenBLAS) for this process; returns the previous count (or -1 if unknown).
// num_threads < 1 leaves the count unchanged, so SetBlasThreads(0) just queries it.
int SetBlasThreads(int num_threads);
// Name and version string of the BLAS in use, e.g. "OpenBLAS 0.3.21 Haswell".
std::string BlasInfo();

// ---- CUDA ------------------------------------------------------------------------------------------------------
// True when the CUDA kernels were compiled in (they still need a device to run).
bool CudaKernelsCompiledIn();
// Device-side BF16 <-> FP32 conversion of n elements on `stream` (a CUDA stream). Unavailable without CUDA.
Status CudaConvertF32ToBf16(const float* in_dev, uint16_t* out_dev, int64_t n, Stream& stream);
Status CudaConvertBf16ToF32(const uint16_t* in_dev, float* out_dev, int64_t n, Stream& stream);

}  // namespace waveep::kernels

#endif  // WAVEEP_KERNELS_KERNELS_H_
