// Copyright 2026 The waveep Authors.
//
// runtime/mpi_context.h — the MPI side of ProcessContext, for the code that speaks MPI itself: comm's transports,
// the topology probe, token-file gathering, the CLI and the MPI tests. runtime/runtime.h does not re-export it, so a
// module that only computes (kernels) never sees <mpi.h>.
//
//   #include "runtime/mpi_context.h"
//   WAVEEP_MPI_RETURN_IF_ERROR(MPI_Bcast(&h, 1, MPI_UNSIGNED_LONG_LONG, 0, WorldComm(ctx)));     // unbounded
//   WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &mine, &sum, 1, MPI_DOUBLE, MPI_SUM, "bytes read"));  // bounded
#ifndef WAVEEP_RUNTIME_MPI_CONTEXT_H_
#define WAVEEP_RUNTIME_MPI_CONTEXT_H_

#include <mpi.h>

#include "absl/strings/string_view.h"
#include "runtime/context.h"
#include "runtime/status.h"

namespace waveep {

// The communicators InitProcess makes and FinalizeProcess frees (then both read MPI_COMM_NULL in every copy of the
// context). Errors on them return (MPI_ERRORS_RETURN) instead of aborting.
struct MpiComms {
  MPI_Comm world = MPI_COMM_NULL;  // a duplicate of MPI_COMM_WORLD: the bootstrap collectives
  MPI_Comm node = MPI_COMM_NULL;   // the processes on this node (MPI_COMM_TYPE_SHARED)
};

// MPI_COMM_NULL for a context that InitProcess did not make.
inline MPI_Comm WorldComm(const ProcessContext& ctx) { return ctx.mpi ? ctx.mpi->world : MPI_COMM_NULL; }
inline MPI_Comm NodeComm(const ProcessContext& ctx) { return ctx.mpi ? ctx.mpi->node : MPI_COMM_NULL; }

// MPI_Allreduce over WorldComm(ctx) bounded by DefaultTimeout(): DeadlineExceeded naming `what` when some rank never
// enters it (job-fatal: see IsJobFatal). Use it instead of a blocking collective wherever a peer may be stopped.
Status Allreduce(const ProcessContext& ctx, const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op,
                 absl::string_view what);

}  // namespace waveep

#endif  // WAVEEP_RUNTIME_MPI_CONTEXT_H_
