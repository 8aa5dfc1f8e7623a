// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/mpi_transport.h"
//
// comm/mpi_device_staging_internal.h — the device-memory path of the "mpi" backend. MPI builds we meet are not
// CUDA-aware, so blocks in GPU memory travel through pinned host staging chunks:
//
//   send block (device) --D2H chunk--> pinned slot --MPI_Isend-->  ... --MPI_Irecv--> pinned slot --H2D--> recv block
//
// Copies are cudaMemcpyAsync on two private non-blocking streams (one per direction, so both copy engines work) and
// use no SMs. Each direction has MpiTuning::staging_slots chunk slots (>= 2: double-buffered), so the D2H of chunk
// k+1 and the H2D of chunk k-1 overlap the MPI transfer of chunk k. Host blocks of the same exchange go straight to
// MPI as in the host path. mpi_transport.cc decides per exchange whether any block is in device memory and only then
// comes here; without CUDA (mpi_device_staging_stub.cc) DeviceStagingAvailable() is false and nothing else is called.
//
// NOTES: chunk order. Sends are D2H-copied and posted in plan order (by step, then chunk) and receives are posted in
// plan order, so with any number of slots >= 1 the globally first unfinished message is at the head of both its
// sender's and its receiver's queue: the pipeline cannot deadlock.
#ifndef WAVEEP_COMM_MPI_DEVICE_STAGING_INTERNAL_H_
#define WAVEEP_COMM_MPI_DEVICE_STAGING_INTERNAL_H_

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "comm/comm_internal.h"  // IsDevicePointer
#include "comm/device_proxy_internal.h"
#include "comm/mpi_transport.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// Busy-then-yield-then-sleep polling with a deadline on a monotonic clock, shared by the host and staged paths.
// After each poll that completed nothing: the first kUncheckedPolls idle polls follow each other at once without
// even reading the clock (a small exchange completes within a few polls, and a clock read, a yield or a sleep costs
// more than one); then, within `busy_poll` of the first checked idle poll, polls still follow back to back; within
// the spin window (`spin`, plus `spin_per_mib` per MiB of `bytes_in_flight`: a large transfer completes nothing for
// a long time while it moves fragments, and sleeping then would throttle it) they yield the core; past it they sleep
// `poll_sleep`. Any completion restarts the sequence. The timeout runs from the first clock read.
class Poller {
 public:
  static constexpr int kUncheckedPolls = 256;

  // Copies what it needs from `tuning` (callers may pass a temporary, e.g. GetMpiTuning()).
  Poller(const MpiTuning& tuning, absl::Duration timeout, size_t bytes_in_flight = 0)
      : busy_poll_(tuning.busy_poll),
        spin_base_(tuning.spin),
        spin_per_mib_(tuning.spin_per_mib),
        poll_sleep_(tuning.poll_sleep),
        timeout_(timeout),
        bytes_in_flight_(bytes_in_flight) {}

  // Call after each poll; `progressed` = the poll completed something. Returns false once the deadline passed.
  bool Next(bool progressed) {
    if (progressed) {
      idle_polls_ = 0;
      return true;
    }
    if (++idle_polls_ <= kUncheckedPolls) return true;
    const Clock::time_point now = Clock::now();
    if (!started_) {
      started_ = true;
      deadline_ = now + absl::ToChronoNanoseconds(timeout_);
      busy_ = absl::ToChronoNanoseconds(busy_poll_);
      spin_ = absl::ToChronoNanoseconds(
          spin_base_ + spin_per_mib_ * (static_cast<double>(bytes_in_flight_) / static_cast<double>(1 << 20)));
      sleep_ = absl::ToChronoNanoseconds(poll_sleep_);
    }
    if (idle_polls_ == kUncheckedPolls + 1) idle_since_ = now;
    if (now >= deadline_) return false;
    const Clock::duration idle = now - idle_since_;
    if (idle < busy_) return true;
    // Yielding costs ~1 us when the core is free and hands it over when ranks outnumber cores.
    if (idle < spin_ || sleep_.count() == 0) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(sleep_);
    }
    return true;
  }

 private:
  using Clock = std::chrono::steady_clock;
  const absl::Duration busy_poll_;
  const absl::Duration spin_base_;
  const absl::Duration spin_per_mib_;
  const absl::Duration poll_sleep_;
  const absl::Duration timeout_;
  const size_t bytes_in_flight_;
  int idle_polls_ = 0;
  bool started_ = false;  // the fields below are set at the first clock read
  Clock::time_point deadline_;
  Clock::time_point idle_since_;
  std::chrono::nanoseconds busy_{0};
  std::chrono::nanoseconds spin_{0};
  std::chrono::nanoseconds sleep_{0};
};

// True when this binary was built with CUDA and a CUDA device is visible. Cached after the first call; thread-safe.
bool DeviceStagingAvailable();

// One MPI message of a staged exchange: a block, or a chunk of one (<= MpiTuning::staging_chunk_bytes when the
// block is in device memory).
struct StagedMessage {
  int peer = 0;
  bool is_send = false;
  bool on_device = false;  // the user's side of this message lives in device memory
  const char* src = nullptr;
  char* dst = nullptr;
  int bytes = 0;
  size_t block_bytes = 0;  // the whole block (diagnostics)
};

// An exchange with at least one block in device memory, fixed when it is issued.
struct StagedPlan {
  std::string what;  // "alltoallv 'dispatch(0)'"
  std::string label;
  int tag = 0;
  int device = 0;                       // CUDA ordinal of the device blocks (one device per rank)
  std::vector<StagedMessage> messages;  // receives first, then sends, each in step order
  const char* self_src = nullptr;
  char* self_dst = nullptr;
  size_t self_bytes = 0;
  size_t bytes_sent = 0;
  size_t bytes_recv = 0;
  int num_peers = 0;
};

// Runs one staged exchange to completion on the calling thread, which may call CUDA (the host thread or a CPU
// stream's worker, never a CUDA host function). Blocking, bounded by `timeout` (DeadlineExceeded naming the pending
// peers). After an error, pending receives are cancelled and any staging memory MPI may still touch is leaked rather
// than reused. Thread-safe: concurrent exchanges use separate staging sets from a process-wide pool.
Status RunStagedExchange(MPI_Comm comm, const StagedPlan& plan, absl::Duration timeout, const MpiTuning& tuning);

// The proxy that orders staged exchanges on CUDA streams of `device` (a DeviceProxy with the CUDA stream gate).
// Unavailable without CUDA or when the device cannot run stream memory operations (see NewCudaStreamGate).
StatusOr<std::unique_ptr<DeviceProxy>> NewStagingProxy(int device);

// Orders a staged exchange on `stream`. On a CPU stream the exchange runs as a task (RunStagedExchange on the
// stream's thread; `proxy` is not used and may be null). On a CUDA stream, where host functions must neither call
// CUDA nor wait, it becomes a job of `proxy` (required): the proxy thread waits (polling, at most `timeout`) for the
// stream to reach the exchange, runs it, and releases the stream through a host-mapped flag once the H2D copies
// completed; a non-blocking host function then turns the exchange's Status into the stream's sticky error.
// `keep_alive` owns `comm` for as long as the exchange may use it. Non-blocking.
Status EnqueueStagedExchange(std::shared_ptr<void> keep_alive, MPI_Comm comm, std::shared_ptr<const StagedPlan> plan,
                             absl::Duration timeout, const MpiTuning& tuning, Stream& stream, DeviceProxy* proxy);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_MPI_DEVICE_STAGING_INTERNAL_H_
