// Copyright 2026 The waveep Authors.
//
// Stand-ins for the CUDA kernels in builds without CUDA (WAVEEP_ENABLE_CUDA=OFF or no nvcc): every entry point
// exists and reports Unavailable, so callers need no #ifdefs.
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

Status NoCuda(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": waveep was built without CUDA"));
}

}  // namespace

bool CudaKernelsCompiledIn() { return false; }

Status CudaConvertF32ToBf16(const float* /*in_dev*/, uint16_t* /*out_dev*/, int64_t /*n*/, Stream& /*stream*/) {
  return NoCuda("CudaConvertF32ToBf16");
}

Status CudaConvertBf16ToF32(const uint16_t* /*in_dev*/, float* /*out_dev*/, int64_t /*n*/, Stream& /*stream*/) {
  return NoCuda("CudaConvertBf16ToF32");
}

Status CudaAddF32(const float* /*x_dev*/, float* /*y_dev*/, int64_t /*n*/, Stream& /*stream*/) {
  return NoCuda("CudaAddF32");
}

Status CudaCopyAsync(void* /*dst*/, const void* /*src*/, int64_t /*bytes*/, Stream& /*stream*/) {
  return NoCuda("CudaCopyAsync");
}

Status CudaFillZeroAsync(void* /*dst_dev*/, int64_t /*bytes*/, Stream& /*stream*/) {
  return NoCuda("CudaFillZeroAsync");
}

Status CudaCopyRowsAsync(const void* /*src*/, int64_t /*src_pitch*/, void* /*dst*/, int64_t /*dst_pitch*/,
                         int64_t /*row_bytes*/, int64_t /*rows*/, Stream& /*stream*/) {
  return NoCuda("CudaCopyRowsAsync");
}

Status CudaTopkGating(const float* /*logits_dev*/, const float* /*bias_dev*/, int64_t /*num_tokens*/,
                      const GateParams& /*p*/, int32_t* /*topk_idx_dev*/, float* /*topk_weights_dev*/,
                      Stream& /*stream*/) {
  return NoCuda("CudaTopkGating");
}

Status CudaBuildExpertPermutation(const int32_t* /*topk_idx_dev*/, int64_t /*num_tokens*/, int /*top_k*/,
                                  int /*num_experts*/, int64_t* /*expert_offsets_dev*/, int64_t* /*pair_of_row_dev*/,
                                  int64_t* /*row_of_pair_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaBuildExpertPermutation");
}

Status CudaGatherRows(const void* /*src_dev*/, int64_t /*row_bytes*/, const int64_t* /*src_rows_dev*/,
                      int64_t /*num_rows*/, void* /*dst_dev*/, Stream& /*stream*/, int64_t /*src_row_divisor*/) {
  return NoCuda("CudaGatherRows");
}

Status CudaScatterRows(const void* /*src_dev*/, int64_t /*row_bytes*/, const int64_t* /*dst_rows_dev*/,
                       int64_t /*num_rows*/, void* /*dst_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaScatterRows");
}

Status CudaQuantizeFp8Blockwise(const float* /*x_dev*/, int64_t /*rows*/, int64_t /*cols*/, int /*block*/,
                                uint8_t* /*q_dev*/, float* /*scales_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaQuantizeFp8Blockwise");
}

Status CudaQuantizeFp8BlockwiseBf16(const uint16_t* /*x_dev*/, int64_t /*rows*/, int64_t /*cols*/, int /*block*/,
                                    uint8_t* /*q_dev*/, float* /*scales_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaQuantizeFp8BlockwiseBf16");
}

Status CudaDequantizeFp8Blockwise(const uint8_t* /*q_dev*/, const float* /*scales_dev*/, int64_t /*rows*/,
                                  int64_t /*cols*/, int /*block*/, float* /*x_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaDequantizeFp8Blockwise");
}

Status CudaSwiGLU(const float* /*gate_up_dev*/, int64_t /*m*/, int64_t /*intermediate*/, float* /*out_dev*/,
                  Stream& /*stream*/) {
  return NoCuda("CudaSwiGLU");
}

Status CudaSwiGLUBf16(const uint16_t* /*gate_up_dev*/, int64_t /*m*/, int64_t /*intermediate*/, uint16_t* /*out_dev*/,
                      Stream& /*stream*/) {
  return NoCuda("CudaSwiGLUBf16");
}

Status CudaSwiGLUQuantizeFp8(const uint16_t* /*gate_up_dev*/, int64_t /*m*/, int64_t /*intermediate*/, int /*block*/,
                             uint8_t* /*q_dev*/, float* /*scales_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaSwiGLUQuantizeFp8");
}

Status CudaCombineReduceF32(const float* /*rows_dev*/, const int64_t* /*row_of_pair_dev*/,
                            const float* /*topk_weights_dev*/, int64_t /*num_tokens*/, int /*top_k*/,
                            int64_t /*hidden*/, float* /*out_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaCombineReduceF32");
}

Status CudaCombineReduceBf16(const uint16_t* /*rows_dev*/, const int64_t* /*row_of_pair_dev*/,
                             const float* /*topk_weights_dev*/, int64_t /*num_tokens*/, int /*top_k*/,
                             int64_t /*hidden*/, float* /*out_dev*/, Stream& /*stream*/) {
  return NoCuda("CudaCombineReduceBf16");
}

Status CudaGroupedGemmNTBf16(const uint16_t* /*a_dev*/, const int64_t* /*group_offsets*/, int /*num_groups*/,
                             int64_t /*k*/, const uint16_t* const* /*b_dev*/, int64_t /*n*/, void* /*c_dev*/,
                             DType /*c_dtype*/, Stream& /*stream*/, GemmBackend /*backend*/) {
  return NoCuda("CudaGroupedGemmNTBf16");
}

Status CudaGroupedGemmNTFp8(const uint8_t* /*a_dev*/, const float* /*a_scales_dev*/, const int64_t* /*group_offsets*/,
                            int /*num_groups*/, int64_t /*k*/, const uint8_t* const* /*b_dev*/,
                            const float* const* /*b_scales_dev*/, int64_t /*n*/, void* /*c_dev*/, DType /*c_dtype*/,
                            Stream& /*stream*/, GemmBackend /*backend*/) {
  return NoCuda("CudaGroupedGemmNTFp8");
}

}  // namespace waveep::kernels
