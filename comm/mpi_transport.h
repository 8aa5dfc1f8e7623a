// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/comm.h"
//
// comm/mpi_transport.h — the "mpi" Communicator backend (host memory, point-to-point exchanges) and its internal
// tuning knobs. Only comm.cc (the factory), tests/comm and bench/comm_bench.cc include this file; everyone else goes
// through comm/comm.h:
//
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, CreateCommunicator("mpi", ctx));   // not NewMpiCommunicator(...)
//
// How the backend works (the contract is in comm.h; this is what the MPI implementation adds to it):
// - Two duplicates of WorldComm(ctx): `coll` carries the blocking calls (Barrier, Allgather, AlltoallCounts, blocking
//   Alltoallv), `p2p` carries the async exchanges. Blocking calls on the host thread therefore never match or wait
//   behind an async exchange progressing on a stream's thread (MPI_THREAD_MULTIPLE).
// - An exchange posts MPI_Irecv/MPI_Isend for every peer with a nonzero block (the block to self is a memcpy), all
//   tagged with a sequence number the host assigns when the exchange is issued (identical order on every rank, so
//   exchanges issued to different streams match even when they run concurrently). Blocks larger than
//   MpiTuning::max_message_bytes are split into consecutive messages with the same tag; MPI's non-overtaking rule
//   keeps them in order.
// - Waits poll MPI_Testsome: back to back (the first few hundred idle polls without even reading the clock, then for
//   MpiTuning::busy_poll), then for a spin window (MpiTuning::spin, plus spin_per_mib for each MiB moved) they poll
//   and yield, then they sleep MpiTuning::poll_sleep between polls, until done or the timeout expires. Any completion
//   restarts the sequence. An async exchange's timeout runs from when the stream starts it, not from when it was
//   issued.
// - The blocking Alltoallv keeps its last plan: a call with the same buffers, block sizes, offsets and message split
//   reuses it without validating or planning again (repeated layouts cost only the MPI calls).
// - The blocking Alltoallv uses the same point-to-point engine on `coll`, with its own sequence numbers. Barrier,
//   Allgather and AlltoallCounts are MPI_Ibarrier / MPI_Iallgather / MPI_Ialltoall polled with the same backoff, on
//   private staging copies so that an abandoned collective never touches the caller's memory. Blocking calls are
//   serialised by a mutex (and, being collective, must be issued in the same order on every rank anyway).
// - A queued exchange holds shared ownership of the `p2p` MPI communicator, so destroying the Communicator while
//   exchanges are still queued is safe as far as MPI handles go (their buffers remain the caller's business).
// - After a timeout or error in an exchange, pending receives are cancelled; sends that MPI cannot cancel (Open MPI
//   never cancels sends) are released to complete on their own and may still read their send buffer if the peer
//   posts the matching receive later. The error message says how many. Later exchanges are unaffected (they use
//   other tags).
// - Blocks in device memory (CUDA builds only; capabilities().device_memory) are staged through pinned host chunks
//   with cudaMemcpyAsync on private copy streams, pipelined with MPI (mpi_device_staging_internal.h). Exchanges
//   whose blocks are all in host memory take the host path unchanged.
// - After a timeout in Barrier / Allgather / AlltoallCounts the nonblocking collective cannot be cancelled: the
//   communicator keeps it (and its staging buffer) alive and fails every later blocking collective with
//   FailedPrecondition, since the ranks no longer agree on the collective order.
#ifndef WAVEEP_COMM_MPI_TRANSPORT_H_
#define WAVEEP_COMM_MPI_TRANSPORT_H_

#include <cstddef>
#include <memory>

#include "absl/time/time.h"
#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// Largest single MPI message by default: 1 GiB, below INT_MAX (MPI counts are int) and a multiple of every
// alignment a chunked block could need.
inline constexpr size_t kDefaultMaxMessageBytes = size_t{1} << 30;

// Process-wide knobs of the MPI backend. Read when an exchange is issued (not when it runs), so changing them never
// affects exchanges already queued.
struct MpiTuning {
  // Blocks larger than this go as several messages. Must be identical on every rank (the receiver posts the same
  // split), in [1, INT_MAX]. Tests lower it to force splitting with small buffers.
  size_t max_message_bytes = kDefaultMaxMessageBytes;
  // Polling: poll MPI_Testsome, yielding the core between polls, for a spin window after the last completion, which
  // keeps exchanges fast; past it, sleep `poll_sleep` between polls (zero: keep yielding). The window is `spin` plus
  // `spin_per_mib` per MiB the exchange moves: a large message completes nothing for a long time while its fragments
  // move, both sides must keep progressing, and sleeping then throttles it (measured: 5x slower at 1 MiB per peer).
  // The default window assumes >= 1 GB/s. The sleep matters when ranks outnumber cores (CI: 4 ranks on 2 cores) and a
  // rank waits for a peer that is late rather than slow: tens of microseconds give the core away without adding much
  // latency. bench/comm_bench.cc takes --comm_bench_spin_us, --comm_bench_spin_per_mib_us and
  // --comm_bench_poll_sleep_us to measure other values.
  // Before any of that, polls follow each other without yielding: for Poller::kUncheckedPolls idle polls without
  // reading the clock, then for `busy_poll`. A small exchange needs a few polls, and a yield between them made a 1 KiB
  // exchange at np 2 cost 1.9 us instead of 1.2 us (docs/perf/cpu-2core-2026-11-23). busy_poll zero: yield once the
  // unchecked polls are spent. --comm_bench_busy_us sets it in bench/comm_bench.cc.
  absl::Duration busy_poll = absl::Microseconds(10);
  absl::Duration spin = absl::Microseconds(50);
  absl::Duration spin_per_mib = absl::Microseconds(1000);
  absl::Duration poll_sleep = absl::Microseconds(20);
  // Device buffers (CUDA builds, mpi_device_staging_internal.h): blocks in GPU memory travel through pinned host
  // chunks of `staging_chunk_bytes`, `staging_slots` (>= 2) per direction. When any rank of the communicator can
  // stage (built with CUDA, device visible), every block of every exchange is split at
  // min(max_message_bytes, staging_chunk_bytes) so that a host block on one rank matches a device block on another;
  // so both must be identical on every rank. In [1, INT_MAX] and [2, 64].
  size_t staging_chunk_bytes = size_t{4} << 20;
  int staging_slots = 4;
};

// Current knobs. Thread-safe.
MpiTuning GetMpiTuning();
// Replaces the knobs (InvalidArgument if max_message_bytes is 0 or > INT_MAX, or a duration is negative). Thread-safe.
Status SetMpiTuning(const MpiTuning& tuning);

// The "mpi" backend. Collective over WorldComm(ctx) (duplicates it twice and allgathers node ids). FailedPrecondition
// if ctx has no world communicator (InitProcess was not called), InvalidArgument for a negative timeout.
StatusOr<std::unique_ptr<Communicator>> NewMpiCommunicator(const ProcessContext& ctx, Options options);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_MPI_TRANSPORT_H_
