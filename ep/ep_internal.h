// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "ep/ep.h"
#ifndef WAVEEP_EP_EP_INTERNAL_H_
#define WAVEEP_EP_EP_INTERNAL_H_

#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::ep::internal {

// OK only if `local` is OK on every rank of `comm`; otherwise every rank returns the lowest failing rank's error
// ("rank R: ..."). Collective.
Status AgreeStatus(comm::Communicator& comm, const Status& local);

}  // namespace waveep::ep::internal

#endif  // WAVEEP_EP_EP_INTERNAL_H_
