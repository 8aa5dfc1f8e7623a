// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/comm.h"
//
// comm/nccl_transport.h — the "nccl" Communicator backend: device-memory all-to-all-v as grouped ncclSend/ncclRecv
// on the caller's CUDA stream. Only comm.cc (the factory) and tests/comm include this file:
//
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, CreateCommunicator("nccl", ctx));   // one GPU per rank
//
// How the backend works (the contract is in comm.h):
// - Rank r uses CUDA device ctx.local_rank % CudaDeviceCount(). Before ncclCommInitRank, every rank's PCI bus id and
//   node are allgathered over MPI; two ranks of one node on one GPU fail creation with FailedPrecondition naming
//   both (NCCL refuses duplicate GPUs; use --backend=mpi or cuda_ipc for several ranks per GPU under MPS).
// - The ncclUniqueId comes from rank 0 through an MPI allgather. The communicator is created non-blocking
//   (ncclConfig_t.blocking = 0) so that init, grouped launches and hangs are bounded by Options::timeout: on expiry
//   ncclCommAbort releases the kernels and the communicator refuses further exchanges (FailedPrecondition).
// - Barrier, Allgather and AlltoallCounts are host collectives through an internal "mpi" communicator.
// - AlltoallvAsync needs a CUDA stream (FailedPrecondition for a CPU stream) and device buffers (InvalidArgument
//   otherwise): capabilities() = {host_memory = false, device_memory = true}. Blocks go as ncclUint8; zero-size
//   blocks are skipped; the block to self is a cudaMemcpyAsync. A watchdog thread bounds each queued exchange by the
//   timeout, counted from when the stream reaches it; its verdict becomes the stream's sticky error through a host
//   function queued after the group.
// - The blocking Alltoallv runs on a private CUDA stream and polls it.
// - Thread-safety: NCCL communicators are not thread-safe, so every NCCL call on the communicator (AlltoallvAsync's
//   and the blocking Alltoallv's group launches, the error polls of the blocking path and of the watchdog, the abort)
//   is serialised by one mutex per communicator, held per call and never across a wait for a stream.
#ifndef WAVEEP_COMM_NCCL_TRANSPORT_H_
#define WAVEEP_COMM_NCCL_TRANSPORT_H_

#include <memory>

#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// The "nccl" backend. Collective over WorldComm(ctx). Unavailable without a CUDA device (or in a build without NCCL:
// nccl_transport_stub.cc), FailedPrecondition when two ranks share a GPU or ctx has no world communicator,
// DeadlineExceeded when ncclCommInitRank does not finish within the timeout.
StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const ProcessContext& ctx, Options options);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_NCCL_TRANSPORT_H_
