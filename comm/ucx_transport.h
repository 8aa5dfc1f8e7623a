// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/comm.h"
//
// comm/ucx_transport.h — the "ucx" Communicator backend (host memory; one-sided puts, explicit progress, peer-failure
// detection). Only comm.cc (the factory), tests/comm and bench/comm_bench.cc include this file; everyone else goes
// through comm/comm.h:
//
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, CreateCommunicator("ucx", ctx));
//
// How the backend works (the contract is in comm.h; docs/comm_backends.md has the picture):
// - One UCP context and one worker per communicator. Ranks are still launched by mpirun: the workers' addresses (and
//   each rank's node and host name) are exchanged once through an MPI allgather, then every rank connects an endpoint
//   to every other rank, in UCP_ERR_HANDLING_MODE_PEER. UCX picks the transports (UCX_TLS and the other UCX_*
//   variables are honoured): shared memory inside a host, TCP between hosts, RDMA where a cluster has it.
// - An exchange (blocking or async) moves every block with one ucp_put_nbx straight into the receiver's buffer:
//     receiver: registers its receive range (ucp_mem_map, cached) and sends each sender a clear-to-send (CTS) active
//               message: exchange id, remote address, bytes, and the packed remote key the first time that peer
//               meets that registration;
//     sender:   on CTS, puts the block, flushes the endpoint (the put has landed), then sends a FIN active message;
//     receiver: done when every sender's FIN has arrived. The block to self is a memcpy.
//   The CTS is what makes a one-sided put safe: it is sent only when the receiver's stream reaches the exchange, so
//   the receiver is done with the buffer's previous contents. Exchanges are told apart by (channel, sequence number),
//   fixed on the host when the call is issued (identical order on every rank), so exchanges on different streams may
//   run concurrently, and a CTS or FIN that arrives early waits in a table until its exchange runs.
// - Barrier, Allgather and AlltoallCounts are eager active messages, one per peer, matched by their own sequence
//   numbers (an Allgather of more than kMaxControlBytes per rank goes as a put exchange instead). Everything therefore
//   runs over UCX, and every wait sees a dead peer.
// - Progress is driven by the thread that waits (ucp_worker_progress under the communicator's mutex; the worker is
//   UCS_THREAD_MODE_SERIALIZED). A waiter polls back to back for UcxTuning::busy_poll, then yields for `spin`, then
//   sleeps in ppoll(2) on the worker's event file descriptor (ucp_worker_arm), min_sleep at first and twice as long
//   each time up to max_sleep — a waiting rank costs no CPU while its data is on the wire.
// - A peer whose endpoint fails (process died, connection reset; over shared memory, UCX's keepalive finds it) fails
//   every exchange and collective that waits on it at once, with an error naming the rank and its host. Unless
//   UCX_KEEPALIVE_INTERVAL is set, the keepalive runs every second (UCX's default is far longer).
// - After an error or a timeout, puts and sends still in flight cannot be cancelled: they are released to complete
//   on their own and may still read their send buffers (the message says how many); a peer that received our CTS may
//   still put into the receive buffer later. The job is expected to end (waveep run does).
// - Registrations are cached by address range (at most kMaxRegistrations, least recently used evicted). The cache
//   does not see free(): a range freed and reused keeps its registration, which is correct for the transports that
//   do not pin memory (tcp, shared memory through cma/posix) and relies on UCX's memory hooks where they do (RDMA).
// - Debian's UCX is built without CUDA: capabilities().device_memory is false and device blocks are refused with an
//   error saying so (use --backend=mpi, which stages them, or nccl/cuda_ipc).
#ifndef WAVEEP_COMM_UCX_TRANSPORT_H_
#define WAVEEP_COMM_UCX_TRANSPORT_H_

#include <cstddef>
#include <memory>

#include "absl/time/time.h"
#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// An Allgather larger than this per rank travels as a put exchange instead of eager active messages.
inline constexpr size_t kMaxControlBytes = size_t{16} << 10;
// Receive ranges kept registered per communicator.
inline constexpr int kMaxRegistrations = 64;

// How a waiting thread spends its time (process-wide; read when a wait starts).
struct UcxTuning {
  absl::Duration busy_poll = absl::Microseconds(20);  // ucp_worker_progress back to back
  absl::Duration spin = absl::Microseconds(200);      // then progress and yield the core between polls
  // Then sleep on the worker's event fd: the first sleep min_sleep, each next one twice as long, up to max_sleep.
  absl::Duration min_sleep = absl::Microseconds(20);
  absl::Duration max_sleep = absl::Milliseconds(1);
  // The data path, read when a communicator is created and required to be the same on every rank:
  //   false ("am", the default): no handshake; each block is an active message that UCX sends eagerly (small) or by
  //          rendezvous (large: the receiver pulls it straight into the receive block, zero-copy where the transport
  //          can — cma inside a host, TCP zcopy between hosts). A block that arrives before its exchange started
  //          waits (eager: copied; rendezvous: only its descriptor).
  //   true  ("put"): the receiver registers its receive range and sends a clear-to-send with the address and remote
  //          key; the sender puts the block (ucp_put_nbx), flushes, and sends a FIN. One-sided, but over transports
  //          without RDMA (TCP, shared memory here) UCX 1.13 emulates the put with active messages and is slower:
  //          docs/comm_backends.md has the figures. capabilities().one_sided says which one runs.
  bool put = false;
};

UcxTuning GetUcxTuning();
// InvalidArgument for a negative duration or unless 0 < min_sleep <= max_sleep. Thread-safe.
Status SetUcxTuning(const UcxTuning& tuning);

// The "ucx" backend. Collective over WorldComm(ctx). FailedPrecondition without a world communicator, Unavailable
// when UCX cannot be initialised (the message carries UCX's reason).
StatusOr<std::unique_ptr<Communicator>> NewUcxCommunicator(const ProcessContext& ctx, Options options);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_UCX_TRANSPORT_H_
