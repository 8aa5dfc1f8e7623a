// Copyright 2026 The waveep Authors.
//
// The "nccl" backend in a build without CUDA or without NCCL. comm.cc does not register it; this symbol exists for
// callers that link against it directly.
#include "comm/nccl_transport.h"

namespace waveep::comm::internal {

StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const ProcessContext& /*ctx*/, Options /*options*/) {
  return absl::UnavailableError("comm backend 'nccl' is not compiled into this binary (needs CUDA and NCCL)");
}

}  // namespace waveep::comm::internal
