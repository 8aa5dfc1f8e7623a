// Copyright 2026 The waveep Authors.
// IWYU pragma: private
//
// comm/cuda_status_internal.h — CUDA runtime and NCCL return codes as Statuses, for the comm/ files compiled with
// CUDA (WAVEEP_HAVE_CUDA). Include only from those files: it includes cuda_runtime_api.h.
#ifndef WAVEEP_COMM_CUDA_STATUS_INTERNAL_H_
#define WAVEEP_COMM_CUDA_STATUS_INTERNAL_H_

#include <cuda_runtime_api.h>

#include "runtime/status.h"

// WAVEEP_CUDA_RETURN_IF_ERROR comes from runtime/status.h.

#endif  // WAVEEP_COMM_CUDA_STATUS_INTERNAL_H_
