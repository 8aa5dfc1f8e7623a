// Copyright 2026 The waveep Authors.
//
// Stand-ins for the CUDA kernels in builds without CUDA (WAVEEP_ENABLE_CUDA=OFF or no nvcc): every entry point
// exists and reports Unavailable, so callers need no #ifdefs.
#include "kernels/kernels.h"

namespace waveep::kernels {

bool CudaKernelsCompiledIn() { return false; }

Status CudaConvertF32ToBf16(const float* /*in_dev*/, uint16_t* /*out_dev*/, int64_t /*n*/, Stream& /*stream*/) {
  return absl::UnavailableError("CudaConvertF32ToBf16: waveep was built without CUDA");
}

Status CudaConvertBf16ToF32(const uint16_t* /*in_dev*/, float* /*out_dev*/, int64_t /*n*/, Stream& /*stream*/) {
  return absl::UnavailableError("CudaConvertBf16ToF32: waveep was built without CUDA");
}

}  // namespace waveep::kernels
