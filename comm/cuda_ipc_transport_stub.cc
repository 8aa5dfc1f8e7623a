// Copyright 2026 The waveep Authors.
//
// The "cuda_ipc" backend in a build without CUDA. comm.cc does not register it; this symbol exists for callers that
// link against it directly.
#include "comm/cuda_ipc_transport.h"

namespace waveep::comm::internal {

StatusOr<std::unique_ptr<Communicator>> NewCudaIpcCommunicator(const ProcessContext& /*ctx*/, Options /*options*/) {
  return absl::UnavailableError("comm backend 'cuda_ipc' is not compiled into this binary (needs CUDA)");
}

}  // namespace waveep::comm::internal
