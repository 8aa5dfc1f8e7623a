// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/comm.h"
//
// comm/comm_internal.h — helpers every comm/ backend shares, kept in one place so that errors read the same on every
// backend:
//
//   return absl::DeadlineExceededError(WithPrefix(absl::StrCat(what, " timed out; still pending: ",
//   pending.ToString()))); std::string note = AbandonNote(AbandonRequests(reqs, kCancelGrace));
//   WAVEEP_RETURN_IF_ERROR(CheckDeviceBuffers(args, "nccl"));
//
// Host code only; the CUDA-dependent IsDevicePointer lives in cuda_util.cc (cuda_util_stub.cc without CUDA).
#ifndef WAVEEP_COMM_COMM_INTERNAL_H_
#define WAVEEP_COMM_COMM_INTERNAL_H_

#include <mpi.h>

#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// How long cancelled MPI requests and in-flight copies get to finish after an error before they are given up.
inline constexpr absl::Duration kCancelGrace = absl::Milliseconds(200);
// At most this many pending peers are named in a timeout message; the rest are counted.
inline constexpr int kMaxPeersInMessage = 8;

// `msg` behind the diagnostic prefix ("rank 2/4: msg"), or `msg` alone when no prefix is set. Thread-safe.
std::string WithPrefix(absl::string_view msg);

// After an error or a timeout: cancels every active request in `reqs`, polls them for up to `grace` (MPI_Testsome),
// then releases whatever is still active with MPI_Request_free. Every entry is MPI_REQUEST_NULL on return. Returns
// the indices of the requests that had to be freed while still active (their buffers may still be accessed by MPI).
// MPI errors are ignored: they would only hide the error being reported. Blocking for at most about `grace`.
std::vector<size_t> AbandonRequests(std::vector<MPI_Request>& reqs, absl::Duration grace);

// After MPI_Testsome returned `rc` with `outcount` completed requests: the first failed status (its position k in
// the completed list, -1 when rc is not MPI_ERR_IN_STATUS or no status carries the error) and its error code.
// `truncated`: a receive got more bytes than it posted, i.e. the ranks disagree on a block size (the caller's error,
// not MPI's: report it as InvalidArgument with TruncationNote).
struct FailedStatus {
  int k = -1;
  int err = MPI_SUCCESS;
  bool truncated = false;
};
FailedStatus FirstFailedStatus(int rc, const MPI_Status* st, int outcount);
// " (rank P sent more than recv_bytes[P] = B: recv_bytes[P] disagrees with what rank P sends)"
std::string TruncationNote(int peer, size_t block_bytes);

// Pending work per (peer, direction), for timeout messages:
//   "send to rank 1 (4096 of 8192 bytes in 2 messages), recv from rank 3 (100 of 100 bytes), and 2 more"
class PendingPeers {
 public:
  // One pending message of `bytes` to (is_send) or from `peer`, part of a block of `block_bytes`.
  void Add(int peer, bool is_send, size_t bytes, size_t block_bytes);
  bool empty() const { return pending_.empty(); }
  // Distinct peers with something pending.
  int num_peers() const;
  // At most kMaxPeersInMessage entries in (peer, send-after-recv) order, then ", and N more"; "" when empty.
  std::string ToString() const;

 private:
  struct Entry {
    size_t bytes = 0;
    size_t block_bytes = 0;
    int messages = 0;
  };
  std::map<std::pair<int, bool>, Entry> pending_;  // (peer, is_send)
};

// The timeout a communicator's waits use: Options::timeout, or DefaultTimeout() when that is zero.
absl::Duration EffectiveTimeout(const Options& options);
// InvalidArgument for a negative Options::timeout; every factory checks it before communicating.
Status CheckOptions(const Options& options);

// Modelled (not measured) link between host-memory ranks (mpi, ucx), from every rank's node id: loopback to itself,
// "shm" inside a node, "net" between nodes; "invalid" for a peer out of range. topology/ probes the real links.
LinkEstimate HostLinkEstimate(int rank, int peer, const std::vector<int>& node_ids);

// Argument checks of the blocking collectives, shared so that every backend refuses the same input with the same
// message. Allgather: a null buffer with bytes > 0. AlltoallCounts: n outside [0, max_n] (naming `backend`, whose
// limit it is) or a null buffer with n > 0.
Status CheckAllgatherArgs(const void* send, size_t bytes, const void* recv);
Status CheckCountsArgs(const int64_t* send, int64_t n, const int64_t* recv, int64_t max_n, absl::string_view backend);
// An allgather of `bytes` per rank as an exchange (for backends whose collective path cannot carry that much):
// the same block to every rank, rank p's landing at recv + p * bytes. Labelled "allgather".
AlltoallvArgs AllgatherAsAlltoallv(const void* send, size_t bytes, void* recv, int size);
// For point-to-point backends, after ValidateAlltoallvArgs: InvalidArgument unless the block a rank sends itself has
// one size (send_bytes[rank] == recv_bytes[rank]).
Status CheckSelfBlock(const AlltoallvArgs& args, int rank);

// True when `p` points into CUDA device memory (cudaMemoryTypeDevice) and stores its device ordinal in *device.
// False for null, host, pinned-host and managed memory, without a visible device and always without CUDA.
// Non-blocking, thread-safe; leaves no sticky CUDA error behind.
bool IsDevicePointer(const void* p, int* device);

// For device-only backends: InvalidArgument naming the side ("AlltoallvArgs.send is not CUDA device memory; the nccl
// backend takes device buffers only ...") when a side with a nonzero block is not in device memory.
Status CheckDeviceBuffers(const AlltoallvArgs& args, absl::string_view backend);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_COMM_INTERNAL_H_
