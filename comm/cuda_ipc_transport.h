// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/comm.h"
//
// comm/cuda_ipc_transport.h — the "cuda_ipc" Communicator backend: ranks of one node copy their device blocks
// straight into the peers' GPU memory through CUDA IPC, on the copy engine. Only comm.cc and tests/comm include it:
//
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, CreateCommunicator("cuda_ipc", ctx));   // every rank on one node
//
// How the backend works (the contract is in comm.h):
// - Every rank owns a receive arena in device memory, allocated on first use and grown (by at least 2x, never shrunk)
//   when an exchange needs more; outgrown arenas are freed only at destruction (cudaFree would synchronize with the
//   stream that waits on the running exchange). Its cudaIpcMemHandle_t travels to the senders with the per-exchange
//   control message and is opened once per (peer, arena generation) with cudaIpcMemLazyEnablePeerAccess, so one process
//   per GPU and several processes on one GPU (MPS) both work.
// - An exchange, run in issue order on every rank: (1) each receiver tells each sender, in a small MPI message, where
//   in its arena the sender's block goes (the arena is laid out by peer); (2) each sender cudaMemcpyAsync's its block
//   into the peer's arena (copy engine, no SMs) on a private stream, waits for it, and sends a one-word completion
//   message; (3) each receiver, once every sender completed, copies its arena into the caller's receive blocks
//   (device-to-device, local HBM bandwidth). The block to self is a local copy.
// - Control and completion signalling go over MPI point-to-point on a private communicator, polled with the timeout;
//   a timeout names the peers whose offset or completion never arrived. Never spins forever.
// - Ranks on different nodes cannot reach each other: creation fails with FailedPrecondition naming them.
// - Device buffers only: capabilities() = {host_memory = false, device_memory = true}. Every exchange (blocking, on a
//   CUDA stream, on a CPU stream) is a job of the communicator's proxy thread (device_proxy_internal.h), whose FIFO
//   keeps the issue order the shared arena needs. A CUDA stream is released by a cuStreamWaitValue32 on a
//   host-mapped flag once the copies into the caller's blocks completed, never by a host function that waits; a CPU
//   stream's thread is held by a task; the blocking caller waits on the job with a deadline. Creation fails
//   (collectively) when the device cannot run stream memory operations.
// - Blocking collectives (Barrier, Allgather, AlltoallCounts) go through an internal "mpi" communicator.
#ifndef WAVEEP_COMM_CUDA_IPC_TRANSPORT_H_
#define WAVEEP_COMM_CUDA_IPC_TRANSPORT_H_

#include <memory>

#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// The "cuda_ipc" backend. Collective over WorldComm(ctx). Unavailable without a CUDA device (or without CUDA:
// cuda_ipc_transport_stub.cc), FailedPrecondition when the ranks span several nodes (naming two of them) or ctx has
// no world communicator.
StatusOr<std::unique_ptr<Communicator>> NewCudaIpcCommunicator(const ProcessContext& ctx, Options options);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_CUDA_IPC_TRANSPORT_H_
