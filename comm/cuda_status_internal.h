// Copyright 2026 The waveep Authors.
// IWYU pragma: private
//
// comm/cuda_status_internal.h — CUDA runtime and NCCL return codes as Statuses, for the comm/ files compiled with
// CUDA (WAVEEP_HAVE_CUDA). Include only from those files: it includes cuda_runtime_api.h.
#ifndef WAVEEP_COMM_CUDA_STATUS_INTERNAL_H_
#define WAVEEP_COMM_CUDA_STATUS_INTERNAL_H_

#include <cuda_runtime_api.h>

#include "runtime/status.h"

// CUDA runtime return code -> Status (Internal) with the expression and file:line.
#define WAVEEP_CUDA_RETURN_IF_ERROR(expr)                                                                           \
  do {                                                                                                              \
    cudaError_t waveep_cuda_rc_ = (expr);                                                                           \
    if (waveep_cuda_rc_ != cudaSuccess)                                                                             \
      return ::waveep::internal::MakeForeignError(::absl::StatusCode::kInternal, "CUDA", #expr, __FILE__, __LINE__, \
                                                  cudaGetErrorString(waveep_cuda_rc_));                             \
  } while (0)

#endif  // WAVEEP_COMM_CUDA_STATUS_INTERNAL_H_
