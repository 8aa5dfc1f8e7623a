// Copyright 2026 The waveep Authors.
//
// comm/comm.h — the one communication interface expert parallelism needs, and its backends.
//
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, CreateCommunicator("mpi", ctx));
//   // 1. count exchange (blocking): counts[p] for every peer p -> what every peer sends to me
//   WAVEEP_RETURN_IF_ERROR(comm->AlltoallCounts(send_counts.data(), 1, recv_counts.data()));
//   // 2. row blocks, non-blocking, ordered on a stream
//   AlltoallvArgs a{.send = buf, .send_bytes = sb, .send_offsets = so,
//                   .recv = rbuf, .recv_bytes = rb, .recv_offsets = ro, .label = "dispatch(0)"};
//   WAVEEP_RETURN_IF_ERROR(comm->AlltoallvAsync(std::move(a), *comm_stream));
//   WAVEEP_RETURN_IF_ERROR(comm_stream->Synchronize());
//
// Contracts shared by every backend:
// - Collective calls (everything except name/rank/size/capabilities/Estimate) must be issued by every rank of the
//   communicator in the same order; async exchanges are matched by their position in that order.
// - Blocking collectives may run on one thread while async exchanges progress on a stream's thread
//   (MPI_THREAD_MULTIPLE): they use separate MPI communicators.
// - Nothing hangs: every wait is bounded by Options::timeout (or DefaultTimeout()); on expiry the Status names this
//   rank, the label and the peers still pending.
// - Zero-byte blocks are allowed in both directions and send nothing. Blocks of any size work (> 2 GiB is split).
#ifndef WAVEEP_COMM_COMM_H_
#define WAVEEP_COMM_COMM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/runtime.h"

namespace waveep::comm {

struct Capabilities {
  bool host_memory = true;     // buffers in (pageable or pinned) host memory
  bool device_memory = false;  // buffers in GPU memory
  bool one_sided = false;      // one-sided puts into the receiver's registered buffers (ucx_put)
};

// Modelled (not measured) link between this rank and a peer. topology/ uses it when no probe is available.
struct LinkEstimate {
  std::string kind;    // "loopback", "shm", "net", ...
  double bw_gbps = 0;  // per direction, GB/s (1e9 bytes/s)
  double latency_us = 0;
};

// Row-block all-to-all-v in bytes: to peer p send [send + send_offsets[p], +send_bytes[p]); from peer p receive into
// [recv + recv_offsets[p], +recv_bytes[p]). Vectors have one entry per rank; recv_bytes[p] must equal what p sends.
struct AlltoallvArgs {
  const void* send = nullptr;
  std::vector<size_t> send_bytes;
  std::vector<size_t> send_offsets;
  void* recv = nullptr;
  std::vector<size_t> recv_bytes;
  std::vector<size_t> recv_offsets;
  std::string label;  // appears in errors and traces, e.g. "dispatch(2)"
};

struct Options {
  absl::Duration timeout = absl::ZeroDuration();  // zero = DefaultTimeout()
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual absl::string_view name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Capabilities capabilities() const = 0;
  // Pure, non-blocking.
  virtual LinkEstimate Estimate(int peer) const = 0;

  // Blocking, collective. Thread-safe with respect to async exchanges in flight.
  virtual Status Barrier() = 0;
  // recv [size * bytes] gets every rank's `bytes` in rank order.
  virtual Status Allgather(const void* send, size_t bytes, void* recv) = 0;
  // Count exchange: send [size * n] (n counts per peer), recv [size * n]: recv[p*n + i] = peer p's send[me*n + i].
  virtual Status AlltoallCounts(const int64_t* send, int64_t n, int64_t* recv) = 0;

  // Blocking all-to-all-v. Validates args (vector sizes, overlaps with buffer nullness) before communicating.
  virtual Status Alltoallv(const AlltoallvArgs& args) = 0;
  // Non-blocking: validates, then enqueues the exchange on `stream` and returns. The buffers must stay valid and
  // unmodified (send) / unread (recv) until the stream passes this point (record an Event after it). Errors and
  // timeouts become the stream's sticky error.
  virtual Status AlltoallvAsync(AlltoallvArgs args, Stream& stream) = 0;
};

// Creates a backend by name ("mpi", "ucx", "ucx_put", "nccl", "cuda_ipc"; see AvailableBackends). Collective over
// WorldComm(ctx). NotFound for an unknown name (listing the compiled-in ones), Unavailable for a known backend not
// compiled in.
StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(absl::string_view backend, const ProcessContext& ctx,
                                                           Options options = {});
// Backends compiled into this binary, in order of preference.
std::vector<std::string> AvailableBackends();

// Checks an AlltoallvArgs against a communicator size (InvalidArgument naming the field).
Status ValidateAlltoallvArgs(const AlltoallvArgs& args, int comm_size);

}  // namespace waveep::comm

#endif  // WAVEEP_COMM_COMM_H_
