// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/comm.h"
//
// comm/ucx_transport.h — the "ucx" and "ucx_put" Communicator backends (host memory; shared-memory rings, tagged
// and active messages or one-sided puts, explicit progress, peer-failure detection). Only comm.cc (the factory),
// tests/comm and bench/comm_bench.cc include this file; everyone else goes through comm/comm.h:
//
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, CreateCommunicator("ucx", ctx));      // data path "am"
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, CreateCommunicator("ucx_put", ctx));  // data path "put"
//
// How the backend works (the contract is in comm.h; docs/comm_backends.md has the measurements):
// - One UCP context and one worker per communicator. Ranks are still launched by mpirun: the workers' addresses (and
//   each rank's node, host name and process id) are exchanged once through an MPI allgather, then every rank connects
//   an endpoint to every other rank and all endpoints are wired up before the factory returns. UCX picks the
//   transports (UCX_TLS and the other UCX_* variables are honoured): shared memory inside a host, TCP between hosts,
//   RDMA where a cluster has it.
// - Exchanges (blocking or async) are told apart by (channel, sequence number), fixed on the host when the call is
//   issued (identical order on every rank), so exchanges on different streams may run concurrently. Data path "am"
//   (backend "ucx"): inside a host each nonzero block goes through a shared-memory ring (shm_ring_internal.h: chunked,
//   copied in by the sender and out by the receiver, no page pinning; UcxTuning::shm_rings), or, where the rings
//   could not be set up, as a tagged message (sender, channel, sequence number), which UCX matches to the posted
//   receive and lands in the receive block (eager fragments, or rendezvous over cma: the receiver pulls it); a block
//   that comes early waits in the ring's inbox or UCX's unexpected queue. Between hosts each block is a tagged
//   message too, always eager (UCX 1.13's TCP rendezvous made the two directions of a link take turns): its fragments
//   land in the posted receive block, and the sender's are read from the caller's block as UCX sends them (a generic
//   datatype; an exchange that gives up repoints the rest of a block to a copy). Data path
//   "put" (backend "ucx_put"): the receiver takes a landing buffer from its pool of communicator-owned registered
//   buffers (ucp_mem_map allocates them; reused, so their remote keys go to each peer once), sends a clear-to-send
//   (CTS) with the block's address in it and, the first time, the packed remote key; the sender puts (ucp_put_nbx),
//   flushes the endpoint and sends a FIN; the receiver copies the block out into the caller's receive block. The CTS
//   makes the put safe (the receiver sends it only when its stream reaches the exchange); the landing buffer makes a
//   late put safe: a receiver that gives up (timeout, error) cannot revoke a CTS already sent, so the landing buffer
//   of an abandoned exchange is quarantined (never reused, freed with the worker) instead of the caller's block being
//   written after the caller freed it.
// - Barrier, Allgather and AlltoallCounts are eager active messages, one per peer, matched by their own sequence
//   numbers (an Allgather of more than kMaxControlBytes per rank goes as an exchange). Everything runs over UCX, and
//   every wait sees a dead peer.
// - Progress is driven by the thread that waits (ucp_worker_progress under the communicator's mutex; the worker is
//   UCS_THREAD_MODE_SERIALIZED). A waiter polls back to back for UcxTuning::busy_poll, then yields for `spin`, then
//   sleeps in ppoll(2) on the worker's event file descriptor (ucp_worker_arm), min_sleep at first and twice as long
//   each time up to max_sleep — a waiting rank costs no CPU while its data is on the wire. A waiter with same-host
//   ring work pending (shm_ring_internal.h; no event fd announces it) sleeps min_sleep at a time without arming.
// - Dead peers: endpoints between hosts run in UCP_ERR_HANDLING_MODE_PEER, so a peer whose process died or whose
//   connection reset fails every exchange and collective that waits on it at once, with an error naming the rank and
//   its host. UCX's shared-memory transports do not offer that mode, so same-host endpoints run without it and their
//   peers are watched by process id (/proc/<pid>/stat, at most every 100 ms).
// - A rank that gives up on an exchange (timeout or error) sends an abort message to the peers it still waited on, so
//   that they fail at once rather than after their own timeout, and progresses for kCancelGrace so that its last
//   messages leave. Blocks already handed to UCX cannot be cancelled: they may still read their send buffers (the
//   message says how many). The job is expected to end (waveep run does).
// - Debian's UCX is built without CUDA: capabilities().device_memory is false and device blocks are refused with an
//   error saying so (use --backend=mpi, which stages them, or nccl/cuda_ipc).
#ifndef WAVEEP_COMM_UCX_TRANSPORT_H_
#define WAVEEP_COMM_UCX_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// An Allgather larger than this per rank travels as a put exchange instead of eager active messages.
inline constexpr size_t kMaxControlBytes = size_t{16} << 10;

// How a waiting thread spends its time (process-wide; read when a wait starts).
struct UcxTuning {
  absl::Duration busy_poll = absl::Microseconds(20);  // ucp_worker_progress back to back
  // Skip busy_poll where this host runs more ranks (ProcessContext::local_size) than this process may use cores (its
  // affinity mask), as Open MPI yields when it knows it is oversubscribed: a rank spinning there holds the core its
  // peer needs to send (np 4 on 2 cores: blocking exchanges 1.2-4.8x faster at 1-256 KiB per peer without it,
  // docs/perf/ucx-2026-11-30).
  // Emulated hosts that share one machine's cores (scripts/cluster.sh) each see only their own ranks.
  bool no_busy_poll_when_oversubscribed = true;
  absl::Duration spin = absl::Microseconds(200);  // then progress and yield the core between polls
  // Then sleep on the worker's event fd: the first sleep min_sleep, each next one twice as long, up to max_sleep.
  absl::Duration min_sleep = absl::Microseconds(20);
  absl::Duration max_sleep = absl::Milliseconds(1);
  // Same-host blocks (data path "am"): through shared-memory rings (shm_ring_internal.h: two copies, no page
  // pinning) instead of UCX (tagged messages: eager, or rendezvous over cma), when every rank could set them up (read
  // when a communicator is created; otherwise UCX, and the ranks that failed say why on stderr). One ring per
  // same-host sender and channel, shm_slots slots of shm_chunk_bytes (halved while a segment would pass 32 MiB: a
  // host with many ranks).
  bool shm_rings = true;
  uint32_t shm_chunk_bytes = uint32_t{64} << 10;
  uint32_t shm_slots = 4;
};

UcxTuning GetUcxTuning();
// InvalidArgument for a negative duration, unless 0 < min_sleep <= max_sleep, or for a ring geometry outside 2-4096
// slots of 4 KiB-1 GiB. Thread-safe.
Status SetUcxTuning(const UcxTuning& tuning);

// The "ucx" backend, data path "am": no handshake; each block goes through a shared-memory ring inside a host (or,
// where the rings could not be set up, is a tagged message) and is an eager tagged message between hosts. Collective
// over WorldComm(ctx). FailedPrecondition without a world communicator, Unavailable when UCX cannot be initialised (the
// message carries UCX's reason).
StatusOr<std::unique_ptr<Communicator>> NewUcxCommunicator(const ProcessContext& ctx, Options options);

// The "ucx_put" backend, data path "put": the receiver sends a clear-to-send with an address in one of its registered
// landing buffers (and, once per buffer and peer, the remote key); the sender puts the block (ucp_put_nbx), flushes,
// and sends a FIN; the receiver copies the block out. One-sided
// (capabilities().one_sided), but over transports without RDMA (TCP, shared memory) UCX 1.13 emulates the put with
// active messages and is slower than "ucx": docs/comm_backends.md has the figures. Otherwise as NewUcxCommunicator.
StatusOr<std::unique_ptr<Communicator>> NewUcxPutCommunicator(const ProcessContext& ctx, Options options);

// ucx_put: free registered landing buffers kept for reuse (the least recently used one goes when another is needed).
inline constexpr int kUcxMaxFreeLandings = 4;
// How many remote keys `comm` holds for its peers' landing buffers (a key goes once its owner evicted the buffer);
// -1 when `comm` is not a ucx communicator. For tests.
int64_t UcxRemoteKeysHeld(const Communicator& comm);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_UCX_TRANSPORT_H_
