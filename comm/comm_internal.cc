// Copyright 2026 The waveep Authors.
//
// Helpers shared by the comm/ backends (comm_internal.h).
#include "comm/comm_internal.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "runtime/mpi_context.h"

namespace waveep::comm::internal {

std::string WithPrefix(absl::string_view msg) {
  std::string prefix = DiagnosticPrefix();
  return absl::StrCat(prefix, prefix.empty() ? "" : ": ", msg);
}

std::vector<size_t> AbandonRequests(std::vector<MPI_Request>& reqs, absl::Duration grace) {
  size_t active = 0;
  for (MPI_Request& r : reqs) {
    if (r == MPI_REQUEST_NULL) continue;
    MPI_Cancel(&r);
    ++active;
  }
  std::vector<size_t> left;
  if (active == 0) return left;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + absl::ToChronoNanoseconds(grace);
  std::vector<int> idx(reqs.size());
  while (active > 0) {
    int outcount = 0;
    if (MPI_Testsome(static_cast<int>(reqs.size()), reqs.data(), &outcount, idx.data(), MPI_STATUSES_IGNORE) !=
            MPI_SUCCESS ||
        outcount == MPI_UNDEFINED) {
      break;
    }
    active -= static_cast<size_t>(outcount);
    if (active == 0) break;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) break;
    // Cancellation completes within microseconds when it completes at all: yield first, then sleep.
    if (now - start < std::chrono::microseconds(50)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (reqs[i] == MPI_REQUEST_NULL) continue;
    MPI_Request_free(&reqs[i]);
    left.push_back(i);
  }
  return left;
}

FailedStatus FirstFailedStatus(int rc, const MPI_Status* st, int outcount) {
  FailedStatus f;
  if (rc != MPI_ERR_IN_STATUS || st == nullptr) return f;
  for (int k = 0; k < outcount; ++k) {
    if (st[k].MPI_ERROR == MPI_SUCCESS) continue;
    f.k = k;
    f.err = st[k].MPI_ERROR;
    int err_class = f.err;
    MPI_Error_class(f.err, &err_class);
    f.truncated = err_class == MPI_ERR_TRUNCATE;
    break;
  }
  return f;
}

std::string TruncationNote(int peer, size_t block_bytes) {
  return absl::StrCat(" (rank ", peer, " sent more than recv_bytes[", peer, "] = ", block_bytes, ": recv_bytes[", peer,
                      "] disagrees with what rank ", peer, " sends)");
}

void PendingPeers::Add(int peer, bool is_send, size_t bytes, size_t block_bytes) {
  Entry& e = pending_[{peer, is_send}];
  e.bytes += bytes;
  e.block_bytes = block_bytes;
  ++e.messages;
}

int PendingPeers::num_peers() const {
  std::set<int> peers;
  for (const auto& [key, e] : pending_) peers.insert(key.first);
  return static_cast<int>(peers.size());
}

std::string PendingPeers::ToString() const {
  std::string out;
  int listed = 0;
  for (const auto& [key, e] : pending_) {
    if (listed == kMaxPeersInMessage) break;
    ++listed;
    absl::StrAppend(&out, out.empty() ? "" : ", ", key.second ? "send to" : "recv from", " rank ", key.first, " (",
                    e.bytes, " of ", e.block_bytes, " bytes");
    if (e.messages > 1) absl::StrAppend(&out, " in ", e.messages, " messages");
    absl::StrAppend(&out, ")");
  }
  if (pending_.size() > static_cast<size_t>(listed)) absl::StrAppend(&out, ", and ", pending_.size() - listed, " more");
  return out;
}

absl::Duration EffectiveTimeout(const Options& options) {
  return options.timeout > absl::ZeroDuration() ? options.timeout : DefaultTimeout();
}

Status CheckOptions(const Options& options) {
  if (options.timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("comm Options.timeout = ", absl::FormatDuration(options.timeout), " is negative"));
  }
  return absl::OkStatus();
}

LinkEstimate HostLinkEstimate(int rank, int peer, const std::vector<int>& node_ids) {
  // NOTES: modelled, not measured — placeholders for topology/ until a probe runs. Deliberately modest: host memory
  // through a shared-memory transport without single-copy (copy in, copy out), and a commodity network.
  constexpr double kLoopbackBwGbps = 10.0;  // one memcpy
  constexpr double kLoopbackLatencyUs = 0.2;
  constexpr double kShmBwGbps = 5.0;  // two memcpys through a shared FIFO
  constexpr double kShmLatencyUs = 1.0;
  constexpr double kNetBwGbps = 3.0;  // TCP / IPoIB class network
  constexpr double kNetLatencyUs = 10.0;
  const int size = static_cast<int>(node_ids.size());
  if (peer < 0 || peer >= size || rank < 0 || rank >= size) return LinkEstimate{"invalid", 0, 0};
  if (peer == rank) return LinkEstimate{"loopback", kLoopbackBwGbps, kLoopbackLatencyUs};
  if (node_ids[peer] == node_ids[rank]) return LinkEstimate{"shm", kShmBwGbps, kShmLatencyUs};
  return LinkEstimate{"net", kNetBwGbps, kNetLatencyUs};
}

Status CheckAllgatherArgs(const void* send, size_t bytes, const void* recv) {
  if (bytes > 0 && (send == nullptr || recv == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Allgather: null ", send == nullptr ? "send" : "recv", " buffer with bytes = ", bytes));
  }
  return absl::OkStatus();
}

Status CheckCountsArgs(const int64_t* send, int64_t n, const int64_t* recv, int64_t max_n, absl::string_view backend) {
  if (n < 0 || n > max_n) {
    return absl::InvalidArgumentError(absl::StrCat("AlltoallCounts: n = ", n, " counts per peer, need [0, ", max_n,
                                                   "] on the ", backend, " backend"));
  }
  if (n > 0 && (send == nullptr || recv == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AlltoallCounts: null ", send == nullptr ? "send" : "recv", " buffer with n = ", n));
  }
  return absl::OkStatus();
}

AlltoallvArgs AllgatherAsAlltoallv(const void* send, size_t bytes, void* recv, int size) {
  AlltoallvArgs args;
  args.send = send;
  args.recv = recv;
  args.label = "allgather";
  args.send_bytes.assign(size, bytes);
  args.send_offsets.assign(size, 0);
  args.recv_bytes.assign(size, bytes);
  for (int p = 0; p < size; ++p) args.recv_offsets.push_back(static_cast<size_t>(p) * bytes);
  return args;
}

Status CheckSelfBlock(const AlltoallvArgs& args, int rank) {
  if (args.send_bytes[rank] != args.recv_bytes[rank]) {
    return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs: send_bytes[", rank, "] = ", args.send_bytes[rank],
                                                   " but recv_bytes[", rank, "] = ", args.recv_bytes[rank],
                                                   " (the block a rank sends itself has one size)"));
  }
  return absl::OkStatus();
}

Status CheckDeviceBuffers(const AlltoallvArgs& args, absl::string_view backend) {
  struct Side {
    const void* base;
    const std::vector<size_t>* bytes;
    const char* name;
  };
  for (const Side& side : {Side{args.send, &args.send_bytes, "send"}, Side{args.recv, &args.recv_bytes, "recv"}}) {
    if (std::all_of(side.bytes->begin(), side.bytes->end(), [](size_t b) { return b == 0; })) continue;
    int device = -1;
    if (!IsDevicePointer(side.base, &device)) {
      return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs.", side.name, " is not CUDA device memory; the ",
                                                     backend,
                                                     " backend takes device buffers only (use --backend=mpi for host "
                                                     "memory)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace waveep::comm::internal
