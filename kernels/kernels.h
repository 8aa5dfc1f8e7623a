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

// ---- F16 (IEEE binary16) -> FP32 ---------------------------------------------------------------------------------
float F16ToFloat(uint16_t x);  // exact: subnormals, infinities and the sign kept; NaN -> quiet NaN

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
// The compute kernel the BLAS runs on this CPU, e.g. "Cooperlake" or "Haswell" (OpenBLAS picks it per CPU unless
// OPENBLAS_CORETYPE forces one); empty when the BLAS does not say. Low-order bits of GEMM results depend on it.
std::string BlasCoreName();

// ---- CUDA ------------------------------------------------------------------------------------------------------
// True when the CUDA kernels were compiled in (they still need a device to run).
bool CudaKernelsCompiledIn();
// Device-side BF16 <-> FP32 conversion of n elements on `stream` (a CUDA stream). Unavailable without CUDA.
Status CudaConvertF32ToBf16(const float* in_dev, uint16_t* out_dev, int64_t n, Stream& stream);
Status CudaConvertBf16ToF32(const uint16_t* in_dev, float* out_dev, int64_t n, Stream& stream);
// y[i] += x[i] for n FP32 elements on the device (one rounding per element, as the CPU's `y += x`: bitwise).
Status CudaAddF32(const float* x_dev, float* y_dev, int64_t n, Stream& stream);
// Asynchronous copy of `bytes` on `stream` between any mix of device, pinned and pageable host memory (UVA;
// pageable host memory makes the copy synchronous with the host, as cudaMemcpyAsync does).
Status CudaCopyAsync(void* dst, const void* src, int64_t bytes, Stream& stream);
// Sets `bytes` bytes of device memory at `dst_dev` to zero on `stream` (cudaMemsetAsync).
Status CudaFillZeroAsync(void* dst_dev, int64_t bytes, Stream& stream);
// Strided copy of `rows` rows of `row_bytes` each: dst + r * dst_pitch <- src + r * src_pitch (cudaMemcpy2DAsync;
// e.g. interleaving FP8 payloads and their scales into dispatch rows). Pitches must be >= row_bytes.
Status CudaCopyRowsAsync(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t row_bytes,
                         int64_t rows, Stream& stream);

// ==== CUDA kernels: device versions of the functions above ========================================================
// Conventions for every function in this section:
//  - `*_dev` pointers are device memory on stream.device(); arrays without the suffix live on the host.
//  - The work is enqueued on `stream` and runs asynchronously: outputs are valid once the stream reaches it.
//    Arguments are checked on the host before anything is enqueued, so an error Status means nothing was launched.
//    InvalidArgument for a CPU stream; Unavailable in builds without CUDA (kernels/cuda_stub.cc).
//  - Device data (indices, NaNs) cannot be checked without a synchronisation; each function says what bad data does.
//  - Scratch memory is stream-ordered (cudaMallocAsync/cudaFreeAsync on `stream`).
//  - Numerics are bitwise equal to the CPU reference unless the comment gives the difference.
//  - Thread-compatible; calls on different streams may run concurrently.

// TopkGating on the device (same parameters, same limits, plus num_experts <= 4096 and top_k <= 64). Scores use
// expf (a few ulp from std::exp) and a fixed tree for the softmax sum, so weights match the CPU to ~1e-6 relative
// and the selection is identical unless two biased scores are within that distance; exact ties (equal logits) go
// to the lower expert id as on the CPU. Run to run deterministic. NaN/+inf logits are not detected (the CPU
// rejects them): that token's output is unspecified, but its indices stay in [0, E).
Status CudaTopkGating(const float* logits_dev, const float* bias_dev, int64_t num_tokens, const GateParams& p,
                      int32_t* topk_idx_dev, float* topk_weights_dev, Stream& stream);

// BuildExpertPermutation on the device: expert_offsets_dev [E + 1], pair_of_row_dev and row_of_pair_dev [T*K]
// (int64), in exactly the CPU's order (a deterministic counting sort; no order depends on atomics). Limits:
// num_experts <= 4096, T*K < 2^31. An index outside [0, E) (e.g. -1 for "not routed here") is skipped instead of
// rejected: its row_of_pair is -1, expert_offsets[E] counts only the routed pairs, and pair_of_row rows past it are
// -1.
Status CudaBuildExpertPermutation(const int32_t* topk_idx_dev, int64_t num_tokens, int top_k, int num_experts,
                                  int64_t* expert_offsets_dev, int64_t* pair_of_row_dev, int64_t* row_of_pair_dev,
                                  Stream& stream);
// GatherRows on the device: dst row i = src row (src_rows[i] / src_row_divisor); pass top_k as the divisor to
// gather token rows by pair index. A negative index zero-fills the dst row.
Status CudaGatherRows(const void* src_dev, int64_t row_bytes, const int64_t* src_rows_dev, int64_t num_rows,
                      void* dst_dev, Stream& stream, int64_t src_row_divisor = 1);
// ScatterRows on the device: dst row dst_rows[i] = src row i; negative indices are skipped. Indices must be
// distinct (a permutation), or the surviving copy is unspecified.
Status CudaScatterRows(const void* src_dev, int64_t row_bytes, const int64_t* dst_rows_dev, int64_t num_rows,
                       void* dst_dev, Stream& stream);

// QuantizeFp8Blockwise / DequantizeFp8Blockwise on the device, bit for bit (NaN payloads excepted: the GPU returns
// the canonical NaN). The Bf16 variant reads BF16 x, exactly as the CPU path on Bf16ToFloat(x).
Status CudaQuantizeFp8Blockwise(const float* x_dev, int64_t rows, int64_t cols, int block, uint8_t* q_dev,
                                float* scales_dev, Stream& stream);
Status CudaQuantizeFp8BlockwiseBf16(const uint16_t* x_dev, int64_t rows, int64_t cols, int block, uint8_t* q_dev,
                                    float* scales_dev, Stream& stream);
Status CudaDequantizeFp8Blockwise(const uint8_t* q_dev, const float* scales_dev, int64_t rows, int64_t cols, int block,
                                  float* x_dev, Stream& stream);

// SwiGLU on the device (expf: within a few FP32 ulp of the CPU). The Bf16 variant reads and writes BF16 and
// computes in FP32 (within one BF16 ulp of FloatToBf16(SwiGLU(widened input)). CudaSwiGLUQuantizeFp8 fuses SwiGLU
// with QuantizeFp8Blockwise of the FP32 result (no BF16 rounding in between): q [m, I], scales [m, I / block].
Status CudaSwiGLU(const float* gate_up_dev, int64_t m, int64_t intermediate, float* out_dev, Stream& stream);
Status CudaSwiGLUBf16(const uint16_t* gate_up_dev, int64_t m, int64_t intermediate, uint16_t* out_dev, Stream& stream);
Status CudaSwiGLUQuantizeFp8(const uint16_t* gate_up_dev, int64_t m, int64_t intermediate, int block, uint8_t* q_dev,
                             float* scales_dev, Stream& stream);

// CombineReduceF32 / CombineReduceBf16 on the device, bitwise (same slot order, FP32, no FMA contraction).
Status CudaCombineReduceF32(const float* rows_dev, const int64_t* row_of_pair_dev, const float* topk_weights_dev,
                            int64_t num_tokens, int top_k, int64_t hidden, float* out_dev, Stream& stream);
Status CudaCombineReduceBf16(const uint16_t* rows_dev, const int64_t* row_of_pair_dev, const float* topk_weights_dev,
                             int64_t num_tokens, int top_k, int64_t hidden, float* out_dev, Stream& stream);

// ---- grouped GEMM on the device ----------------------------------------------------------------------------------
enum class GemmBackend {
  kAuto,           // the launch heuristic (kernels/gemm_heuristics.cc) picks per call
  kCublasLt,       // one cublasLtMatmul per non-empty group (BF16 and FP8); the default library path
  kCublasGrouped,  // one cublasGemmGroupedBatchedEx over all groups (BF16 only)
  kSm90,           // EXPERIMENTAL: our persistent TMA + wgmma kernel (BF16; sm_90a builds on CC 9.0 only).
                   // kAuto picks it only when WAVEEP_GEMM_EXPERIMENTAL=1 is set in the environment.
  kSimt,           // our portable CUDA-core kernel (BF16 and FP8, any shape and alignment, every GPU): the device-side
                   // reference, and what kCublasLt runs a shape on when cuBLASLt has no algorithm for it. Slow;
                   // kAuto never picks it.
};
// "auto", "cublaslt", "cublas_grouped", "sm90", "simt"
absl::string_view GemmBackendName(GemmBackend backend);

// C[rows of g, N] = A[rows of g, K] * B[g]^T on the device, FP32 accumulation, like GroupedGemmNT: rows of group g
// are [group_offsets[g], group_offsets[g+1]) of A and C (no padding; M = 0 groups are skipped). `group_offsets`
// [num_groups + 1] and `b_dev` [num_groups] (device pointers to [N, K] row-major weights) are HOST arrays: the
// per-expert counts are known on the host once the dispatch layout is exchanged. C is BF16 (round to nearest even)
// or F32 per `c_dtype`. The host arrays may be reused as soon as the call returns.
// Accuracy (tests/kernels/cuda_grouped_gemm_test.cc): versus the CPU GEMM on the widened inputs, |err| <=
// 2^-18 * sum_k |a_k * b_k| + (BF16 C: 2^-8 * |c|).
Status CudaGroupedGemmNTBf16(const uint16_t* a_dev, const int64_t* group_offsets, int num_groups, int64_t k,
                             const uint16_t* const* b_dev, int64_t n, void* c_dev, DType c_dtype, Stream& stream,
                             GemmBackend backend = GemmBackend::kAuto);
// FP8 e4m3 inputs with one FP32 scale per 128 consecutive K elements of every row of A and of every B[g]: the
// layout QuantizeFp8Blockwise(block = 128) produces, a_scales_dev [M_total, K / 128] (row r of A owns row r) and
// b_scales_dev[g] [N, K / 128] (a host array of device pointers). 128 x 128 weight scales (DeepSeek checkpoints)
// are this with each scale repeated over its 128 rows. Value = fp8 * scale; requires K % 128 == 0 and N % 16 == 0.
// Accuracy: against the CPU GEMM on the dequantized inputs, 2^-13 * sum_k |a_k * b_k| + (BF16 C: 2^-8 * |c|): Hopper's
// FP8 MMA keeps ~14 bits of the running sum within a scale block (see tests/kernels/cuda_grouped_gemm_test.cc).
Status CudaGroupedGemmNTFp8(const uint8_t* a_dev, const float* a_scales_dev, const int64_t* group_offsets,
                            int num_groups, int64_t k, const uint8_t* const* b_dev, const float* const* b_scales_dev,
                            int64_t n, void* c_dev, DType c_dtype, Stream& stream,
                            GemmBackend backend = GemmBackend::kAuto);

}  // namespace waveep::kernels

#endif  // WAVEEP_KERNELS_KERNELS_H_
