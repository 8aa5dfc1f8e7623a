// Copyright 2026 The waveep Authors.
//
// cuda_util.cc in a build without CUDA: no device memory exists and no CUDA stream can be gated.
#include "comm/comm_internal.h"
#include "comm/device_proxy_internal.h"

namespace waveep::comm::internal {

bool IsDevicePointer(const void* /*p*/, int* /*device*/) { return false; }

StatusOr<std::unique_ptr<StreamGate>> NewCudaStreamGate(int /*device*/) {
  return absl::UnavailableError("CUDA stream gate: waveep was built without CUDA");
}

}  // namespace waveep::comm::internal
