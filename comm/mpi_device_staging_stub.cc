// Copyright 2026 The waveep Authors.
//
// The device path of the "mpi" backend in a build without CUDA: no device memory exists, so mpi_transport.cc never
// builds a StagedPlan; the entry points only exist to link.
#include "comm/mpi_device_staging_internal.h"
#include "runtime/mpi_context.h"

namespace waveep::comm::internal {

bool DeviceStagingAvailable() { return false; }

Status RunStagedExchange(MPI_Comm /*comm*/, const StagedPlan& plan, absl::Duration /*timeout*/,
                         const MpiTuning& /*tuning*/) {
  return absl::UnavailableError(plan.what + ": device buffers need a build with CUDA");
}

StatusOr<std::unique_ptr<DeviceProxy>> NewStagingProxy(int /*device*/) {
  return absl::UnavailableError("device staging needs a build with CUDA");
}

Status EnqueueStagedExchange(std::shared_ptr<void> /*keep_alive*/, MPI_Comm /*comm*/,
                             std::shared_ptr<const StagedPlan> plan, absl::Duration /*timeout*/,
                             const MpiTuning& /*tuning*/, Stream& /*stream*/, DeviceProxy* /*proxy*/) {
  return absl::UnavailableError(plan->what + ": device buffers need a build with CUDA");
}

}  // namespace waveep::comm::internal
