// Copyright 2026 The waveep Authors.
//
// The "mpi" backend: host-memory exchanges over point-to-point MPI, bounded by timeouts. See mpi_transport.h for the
// design (two communicators, sequence-number tags, chunking, polling with backoff, what happens after a timeout).
#include "comm/mpi_transport.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/comm_internal.h"
#include "comm/mpi_device_staging_internal.h"
#include "runtime/mpi_context.h"

namespace waveep::comm::internal {
namespace {

std::mutex g_tuning_mu;
MpiTuning g_tuning;
std::atomic<uint64_t> g_tuning_generation{0};  // bumped by every SetMpiTuning

// One MPI message of an exchange (a block, or a chunk of one).
struct Message {
  int peer;
  bool is_send;
  const char* src;  // sends
  char* dst;        // receives
  int bytes;
  size_t block_bytes;  // the whole block this message belongs to (diagnostics)
};

// Everything an exchange needs, fixed when it is issued. The blocking path refills one Plan per communicator, so
// building it allocates nothing once its vectors have grown.
struct Plan {
  std::string label;
  int tag = 0;
  std::vector<Message> messages;  // receives first, then sends
  const char* self_src = nullptr;
  char* self_dst = nullptr;
  size_t self_bytes = 0;
  size_t bytes_sent = 0;  // to other ranks
  size_t bytes_recv = 0;  // from other ranks
  int num_peers = 0;      // other ranks with a nonzero block in either direction
};

// "alltoallv 'dispatch(0)'", for messages (built only when one is).
std::string What(const Plan& plan) { return absl::StrCat("alltoallv '", plan.label, "'"); }

// The layout a Plan was built for. A blocking exchange with the same buffers, block sizes, offsets and message split
// as the previous one (the probe's loops, repeated steps with the same buffers) reuses its plan as it is, skipping
// validation and planning.
struct PlanKey {
  bool valid = false;
  const void* send = nullptr;
  const void* recv = nullptr;
  size_t split = 0;
  std::vector<size_t> send_bytes, send_offsets, recv_bytes, recv_offsets;

  bool Matches(const AlltoallvArgs& a, size_t max_message_bytes) const {
    return valid && send == a.send && recv == a.recv && split == max_message_bytes && send_bytes == a.send_bytes &&
           recv_bytes == a.recv_bytes && send_offsets == a.send_offsets && recv_offsets == a.recv_offsets;
  }
  void Set(const AlltoallvArgs& a, size_t max_message_bytes) {
    send = a.send;
    recv = a.recv;
    split = max_message_bytes;
    send_bytes.assign(a.send_bytes.begin(), a.send_bytes.end());
    send_offsets.assign(a.send_offsets.begin(), a.send_offsets.end());
    recv_bytes.assign(a.recv_bytes.begin(), a.recv_bytes.end());
    recv_offsets.assign(a.recv_offsets.begin(), a.recv_offsets.end());
    valid = true;
  }
};

// Request and status arrays of one exchange, reused from call to call on the blocking path.
struct Scratch {
  std::vector<MPI_Request> reqs;
  std::vector<int> idx;
  std::vector<MPI_Status> st;
};

// Validates `args` and refills `plan`'s layout (reusing its storage): everything but the tag and the label, which the
// caller sets.
Status FillPlan(const AlltoallvArgs& args, int rank, int size, size_t max_message_bytes, Plan* plan) {
  WAVEEP_RETURN_IF_ERROR(ValidateAlltoallvArgs(args, size));
  WAVEEP_RETURN_IF_ERROR(CheckSelfBlock(args, rank));
  plan->messages.clear();
  plan->self_src = nullptr;
  plan->self_dst = nullptr;
  plan->self_bytes = 0;
  plan->bytes_sent = 0;
  plan->bytes_recv = 0;
  plan->num_peers = 0;
  // `src` for a send, `dst` for a receive: the start of the block. Empty blocks are skipped before any pointer
  // arithmetic, since their buffer may be null.
  auto add = [&](int peer, bool is_send, size_t offset, size_t block) {
    if (block == 0) return;
    for (size_t off = 0; off < block; off += max_message_bytes) {
      Message m{peer, is_send, nullptr, nullptr, static_cast<int>(std::min(max_message_bytes, block - off)), block};
      if (is_send) {
        m.src = static_cast<const char*>(args.send) + offset + off;
      } else {
        m.dst = static_cast<char*>(args.recv) + offset + off;
      }
      plan->messages.push_back(m);
    }
  };
  // Step i pairs "receive from rank - i" with "send to rank + i", so at each step every rank talks to a different
  // peer instead of everyone hitting rank 0 first. All receives are posted before any send.
  for (int i = 1; i < size; ++i) {
    const int p = (rank - i + size) % size;
    add(p, false, args.recv_offsets[p], args.recv_bytes[p]);
    plan->bytes_recv += args.recv_bytes[p];
  }
  for (int i = 1; i < size; ++i) {
    const int p = (rank + i) % size;
    add(p, true, args.send_offsets[p], args.send_bytes[p]);
    plan->bytes_sent += args.send_bytes[p];
  }
  for (int p = 0; p < size; ++p) {
    if (p != rank && (args.send_bytes[p] > 0 || args.recv_bytes[p] > 0)) ++plan->num_peers;
  }
  if (args.send_bytes[rank] > 0) {
    plan->self_src = static_cast<const char*>(args.send) + args.send_offsets[rank];
    plan->self_dst = static_cast<char*>(args.recv) + args.recv_offsets[rank];
    plan->self_bytes = args.send_bytes[rank];
  }
  return absl::OkStatus();
}

// The device-memory form of `plan`, or nullptr when every block is in host memory (the host path then runs,
// untouched). Only called when this rank can stage (DeviceStagingAvailable()).
StatusOr<std::shared_ptr<const StagedPlan>> MakeStagedPlan(const AlltoallvArgs& args, const Plan& plan, int size) {
  std::vector<bool> send_dev(size, false), recv_dev(size, false);
  int device = -1;
  bool any = false;
  auto classify = [&](const void* base, const std::vector<size_t>& bytes, const std::vector<size_t>& offsets,
                      std::vector<bool>& out, const char* side) -> Status {
    for (int p = 0; p < size; ++p) {
      if (bytes[p] == 0) continue;
      int d = -1;
      if (!IsDevicePointer(static_cast<const char*>(base) + offsets[p], &d)) continue;
      if (device >= 0 && d != device) {
        return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs: ", side, " block of peer ", p,
                                                       " is on CUDA device ", d, " but another block is on device ",
                                                       device, " (one device per rank)"));
      }
      device = d;
      out[p] = true;
      any = true;
    }
    return absl::OkStatus();
  };
  WAVEEP_RETURN_IF_ERROR(classify(args.send, args.send_bytes, args.send_offsets, send_dev, "send"));
  WAVEEP_RETURN_IF_ERROR(classify(args.recv, args.recv_bytes, args.recv_offsets, recv_dev, "recv"));
  if (!any) return std::shared_ptr<const StagedPlan>();
  auto staged = std::make_shared<StagedPlan>();
  staged->what = What(plan);
  staged->label = plan.label;
  staged->tag = plan.tag;
  staged->device = device;
  staged->messages.reserve(plan.messages.size());
  for (const Message& m : plan.messages) {
    staged->messages.push_back(StagedMessage{m.peer, m.is_send, m.is_send ? send_dev[m.peer] : recv_dev[m.peer], m.src,
                                             m.dst, m.bytes, m.block_bytes});
  }
  staged->self_src = plan.self_src;
  staged->self_dst = plan.self_dst;
  staged->self_bytes = plan.self_bytes;
  staged->bytes_sent = plan.bytes_sent;
  staged->bytes_recv = plan.bytes_recv;
  staged->num_peers = plan.num_peers;
  return std::shared_ptr<const StagedPlan>(std::move(staged));
}

std::string DescribeMessage(const Message& m) {
  return absl::StrCat(m.is_send ? "send to" : "recv from", " rank ", m.peer, " (", m.block_bytes, " bytes)");
}

// Names the peers whose messages are still pending, with the bytes outstanding per peer and direction.
std::string DescribePending(const Plan& plan, const std::vector<MPI_Request>& reqs) {
  PendingPeers pending;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (reqs[i] == MPI_REQUEST_NULL) continue;
    const Message& m = plan.messages[i];
    pending.Add(m.peer, m.is_send, static_cast<size_t>(m.bytes), m.block_bytes);
  }
  return absl::StrCat(pending.ToString(), "; ", plan.num_peers - pending.num_peers(), " of ", plan.num_peers,
                      " peers done");
}

// After an error or a timeout: cancels what is still pending so that nothing touches the buffers once the caller has
// returned. Open MPI cancels unmatched receives; it never cancels sends, but eager sends have completed locally
// anyway. Whatever is still active after a short grace is released with MPI_Request_free, and the returned note says
// so.
std::string ReleasePending(const Plan& plan, std::vector<MPI_Request>& reqs) {
  int sends = 0, recvs = 0;
  for (size_t i : AbandonRequests(reqs, kCancelGrace)) ++(plan.messages[i].is_send ? sends : recvs);
  if (sends + recvs == 0) return "";
  return absl::StrCat(" [", sends, " send(s) and ", recvs,
                      " receive(s) could not be cancelled and were left to MPI: they may still access their buffers "
                      "if the peer posts the matching exchange later]");
}

Status TestsomeError(int rc, const Plan& plan, const std::vector<int>& idx, const std::vector<MPI_Status>& st,
                     int outcount) {
  std::string detail = ::waveep::internal::MpiErrorString(rc);
  const FailedStatus f = FirstFailedStatus(rc, st.data(), outcount);
  if (f.k >= 0) {
    const Message& m = plan.messages[idx[f.k]];
    detail = absl::StrCat(DescribeMessage(m), " failed: ", ::waveep::internal::MpiErrorString(f.err));
    if (f.truncated) absl::StrAppend(&detail, TruncationNote(m.peer, m.block_bytes));
  }
  Status s = ::waveep::internal::MakeForeignError(
      f.truncated ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kInternal, "MPI", "MPI_Testsome(...)",
      __FILE__, __LINE__, absl::StrCat(What(plan), ": ", detail));
  return Status(s.code(), WithPrefix(s.message()));
}

// Polls the posted messages until all completed, an error, or the timeout.
Status PollExchange(const Plan& plan, Scratch& scratch, absl::Duration timeout, const MpiTuning& tuning) {
  std::vector<MPI_Request>& reqs = scratch.reqs;
  std::vector<int>& idx = scratch.idx;
  std::vector<MPI_Status>& st = scratch.st;
  const int n = static_cast<int>(reqs.size());
  size_t remaining = reqs.size();
  Poller poller(tuning, timeout, std::max(plan.bytes_sent, plan.bytes_recv));
  while (remaining > 0) {
    int outcount = 0;
    const int rc = MPI_Testsome(n, reqs.data(), &outcount, idx.data(), st.data());
    if (rc != MPI_SUCCESS) return TestsomeError(rc, plan, idx, st, outcount);
    if (outcount == MPI_UNDEFINED) break;  // every request is null: nothing left
    for (int i = 0; i < outcount; ++i) {
      const Message& m = plan.messages[idx[i]];
      if (m.is_send) continue;
      int count = 0;
      WAVEEP_MPI_RETURN_IF_ERROR(MPI_Get_count(&st[i], MPI_BYTE, &count));
      if (count != m.bytes) {
        return absl::InvalidArgumentError(
            WithPrefix(absl::StrCat(What(plan), ": received ", count, " bytes from rank ", m.peer, " where ", m.bytes,
                                    " were expected (recv_bytes[", m.peer, "] = ", m.block_bytes,
                                    " disagrees with what rank ", m.peer, " sends)")));
      }
    }
    remaining -= static_cast<size_t>(outcount);
    if (!poller.Next(outcount > 0)) {
      return absl::DeadlineExceededError(
          WithPrefix(absl::StrCat(What(plan), " (tag ", plan.tag, ") timed out after ", absl::FormatDuration(timeout),
                                  "; still pending: ", DescribePending(plan, reqs),
                                  ". Did every rank issue this exchange, in the same order, with matching sizes?")));
    }
  }
  return absl::OkStatus();
}

Status PostAll(MPI_Comm comm, const Plan& plan, std::vector<MPI_Request>& reqs) {
  for (size_t i = 0; i < plan.messages.size(); ++i) {
    const Message& m = plan.messages[i];
    if (m.is_send) {
      WAVEEP_MPI_RETURN_IF_ERROR(MPI_Isend(m.src, m.bytes, MPI_BYTE, m.peer, plan.tag, comm, &reqs[i]));
    } else {
      WAVEEP_MPI_RETURN_IF_ERROR(MPI_Irecv(m.dst, m.bytes, MPI_BYTE, m.peer, plan.tag, comm, &reqs[i]));
    }
  }
  return absl::OkStatus();
}

// Runs one exchange to completion on the calling thread.
Status RunExchange(MPI_Comm comm, const Plan& plan, Scratch& scratch, absl::Duration timeout, const MpiTuning& tuning) {
  const size_t n = plan.messages.size();
  scratch.reqs.assign(n, MPI_REQUEST_NULL);
  scratch.idx.resize(n);
  scratch.st.resize(n);
  Status st = PostAll(comm, plan, scratch.reqs);
  if (st.ok()) {
    // The self block overlaps with the network transfers just posted.
    if (plan.self_bytes > 0) std::memcpy(plan.self_dst, plan.self_src, plan.self_bytes);
    st = PollExchange(plan, scratch, timeout, tuning);
  }
  if (st.ok()) return st;
  return Status(st.code(), absl::StrCat(st.message(), ReleasePending(plan, scratch.reqs)));
}

// An MPI communicator that queued stream tasks may outlive the Communicator with.
struct OwnedComm {
  MPI_Comm comm = MPI_COMM_NULL;
  ~OwnedComm() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }
};

StatusOr<std::shared_ptr<OwnedComm>> DupComm(MPI_Comm parent) {
  auto owned = std::make_shared<OwnedComm>();
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_dup(parent, &owned->comm));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_set_errhandler(owned->comm, MPI_ERRORS_RETURN));
  return owned;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(std::shared_ptr<OwnedComm> coll, std::shared_ptr<OwnedComm> p2p, int rank, int size,
                  uint64_t tag_mask, Options options)
      : coll_(std::move(coll)),
        p2p_(std::move(p2p)),
        rank_(rank),
        size_(size),
        tag_mask_(tag_mask),
        options_(options) {}

  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    for (Abandoned& a : abandoned_) {
      int done = 0;
      if (!finalized && MPI_Test(&a.request, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) continue;
      // NOTES: MPI may still write into the staging buffer of a collective that timed out and can never be
      // cancelled or freed (MPI forbids both for nonblocking collectives): leak it, and the communicator with it.
      (void)a.staging.release();
      leak_coll_ = true;
    }
    if (leak_coll_) coll_->comm = MPI_COMM_NULL;
  }

  absl::string_view name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.device_memory = DeviceStagingAvailable();  // staged through pinned host memory (CUDA builds)
    return caps;
  }

  LinkEstimate Estimate(int peer) const override { return HostLinkEstimate(rank_, peer, node_ids_); }

  Status Barrier() override {
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    MPI_Request req = MPI_REQUEST_NULL;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Ibarrier(coll_->comm, &req));
    return WaitCollective(req, "barrier", nullptr);
  }

  Status Allgather(const void* send, size_t bytes, void* recv) override {
    WAVEEP_RETURN_IF_ERROR(CheckAllgatherArgs(send, bytes, recv));
    if (bytes == 0) return absl::OkStatus();
    // Blocks too large for one MPI count: an exchange. Unstaged, so on timeout it follows the exchange rules
    // (receives cancelled).
    if (bytes > static_cast<size_t>(INT_MAX)) return Alltoallv(AllgatherAsAlltoallv(send, bytes, recv, size_));
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    // Staged, so that a collective abandoned after a timeout never touches the caller's buffers.
    std::unique_ptr<char[]> staging(new char[bytes * (size_ + 1)]);
    std::memcpy(staging.get(), send, bytes);
    MPI_Request req = MPI_REQUEST_NULL;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Iallgather(staging.get(), static_cast<int>(bytes), MPI_BYTE, staging.get() + bytes,
                                              static_cast<int>(bytes), MPI_BYTE, coll_->comm, &req));
    WAVEEP_RETURN_IF_ERROR(WaitCollective(req, absl::StrCat("allgather of ", bytes, " bytes"), &staging));
    std::memcpy(recv, staging.get() + bytes, bytes * size_);
    return absl::OkStatus();
  }

  Status AlltoallCounts(const int64_t* send, int64_t n, int64_t* recv) override {
    WAVEEP_RETURN_IF_ERROR(CheckCountsArgs(send, n, recv, INT_MAX, "mpi"));
    if (n == 0) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    const size_t bytes = static_cast<size_t>(n) * size_ * sizeof(int64_t);
    std::unique_ptr<char[]> staging(new char[2 * bytes]);
    std::memcpy(staging.get(), send, bytes);
    MPI_Request req = MPI_REQUEST_NULL;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Ialltoall(staging.get(), static_cast<int>(n), MPI_INT64_T, staging.get() + bytes,
                                             static_cast<int>(n), MPI_INT64_T, coll_->comm, &req));
    WAVEEP_RETURN_IF_ERROR(WaitCollective(req, absl::StrCat("count exchange (", n, " per peer)"), &staging));
    std::memcpy(recv, staging.get() + bytes, bytes);
    return absl::OkStatus();
  }

  Status Alltoallv(const AlltoallvArgs& args) override {
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    // The knobs, re-read only when SetMpiTuning changed them (a mutex less on the small-message path).
    if (const uint64_t gen = g_tuning_generation.load(std::memory_order_acquire); gen != blocking_tuning_generation_) {
      blocking_tuning_ = GetMpiTuning();
      blocking_tuning_generation_ = gen;
    }
    const MpiTuning& tuning = blocking_tuning_;
    // Every call consumes its sequence number, valid or not: a call that fails validation on some ranks only must not
    // shift the tags of every later exchange on those ranks (their peers would then match the wrong messages).
    const uint64_t seq = coll_seq_++;
    Plan& plan = blocking_plan_;
    const size_t split = SplitBytes(tuning);
    if (!blocking_key_.Matches(args, split)) {
      blocking_key_.valid = false;
      WAVEEP_RETURN_IF_ERROR(FillPlan(args, rank_, size_, split, &plan));
      blocking_key_.Set(args, split);
    }
    std::string fallback;
    const absl::string_view label = LabelOr(args.label, "alltoallv (blocking)", seq, &fallback);
    if (plan.label != label) plan.label.assign(label.data(), label.size());
    plan.tag = Tag(seq);
    std::shared_ptr<const StagedPlan> staged;
    if (DeviceStagingAvailable()) {
      WAVEEP_ASSIGN_OR_RETURN(staged, MakeStagedPlan(args, plan, size_));
    }
    ScopedSpan span("host", plan.label, "comm");
    span.Arg("bytes_sent", static_cast<double>(plan.bytes_sent));
    span.Arg("bytes_recv", static_cast<double>(plan.bytes_recv));
    if (staged != nullptr) return RunStagedExchange(coll_->comm, *staged, Timeout(), tuning);
    return RunExchange(coll_->comm, plan, blocking_scratch_, Timeout(), tuning);
  }

  Status AlltoallvAsync(AlltoallvArgs args, Stream& stream) override {
    const MpiTuning tuning = GetMpiTuning();
    // NOTES: the tag is fixed here, on the host, where the call order is the same on every rank; the stream only
    // decides when the exchange runs. Every call consumes its sequence number, valid or not (see Alltoallv).
    std::lock_guard<std::mutex> lock(p2p_mu_);
    const uint64_t seq = p2p_seq_++;
    auto plan = std::make_shared<Plan>();
    WAVEEP_RETURN_IF_ERROR(FillPlan(args, rank_, size_, SplitBytes(tuning), plan.get()));
    std::string fallback;
    plan->label = std::string(LabelOr(args.label, "alltoallv", seq, &fallback));
    plan->tag = Tag(seq);
    if (DeviceStagingAvailable()) {
      WAVEEP_ASSIGN_OR_RETURN(std::shared_ptr<const StagedPlan> staged, MakeStagedPlan(args, *plan, size_));
      if (staged != nullptr) {
        DeviceProxy* proxy = nullptr;
        if (stream.native() != nullptr) {
          WAVEEP_ASSIGN_OR_RETURN(proxy, Proxy(stream));
        }
        WAVEEP_RETURN_IF_ERROR(
            EnqueueStagedExchange(p2p_, p2p_->comm, std::move(staged), Timeout(), tuning, stream, proxy));
        return absl::OkStatus();
      }
    }
    auto exchange = [comm = p2p_, plan, row = std::string(stream.name()), timeout = Timeout(), tuning]() {
      ScopedSpan span(row, plan->label, "comm");
      span.Arg("bytes_sent", static_cast<double>(plan->bytes_sent));
      span.Arg("bytes_recv", static_cast<double>(plan->bytes_recv));
      Scratch scratch;
      return RunExchange(comm->comm, *plan, scratch, timeout, tuning);
    };
    if (stream.native() != nullptr) {
      // Host blocks on a CUDA stream: the blocking exchange is a proxy job as well (a CUDA host function must not
      // wait on MPI); the stream waits on the proxy's release.
      WAVEEP_ASSIGN_OR_RETURN(DeviceProxy * proxy, Proxy(stream));
      return proxy->Enqueue(stream, plan->label, Timeout(), std::move(exchange));
    }
    WAVEEP_RETURN_IF_ERROR(stream.Enqueue(std::move(exchange)));
    return absl::OkStatus();
  }

  // Second phase of construction: learns every rank's node and whether any rank stages device memory (collective).
  Status Init(int node_id) {
    const int mine[2] = {node_id, DeviceStagingAvailable() ? 1 : 0};
    std::vector<int> all(2 * static_cast<size_t>(size_));
    WAVEEP_RETURN_IF_ERROR(Allgather(mine, sizeof(mine), all.data()));
    node_ids_.assign(size_, 0);
    for (int p = 0; p < size_; ++p) {
      node_ids_[p] = all[2 * p];
      any_rank_stages_ = any_rank_stages_ || all[2 * p + 1] != 0;
    }
    return absl::OkStatus();
  }

 private:
  struct Abandoned {
    MPI_Request request;
    std::unique_ptr<char[]> staging;
  };

  absl::Duration Timeout() const { return EffectiveTimeout(options_); }
  // Message split: identical on every rank (see MpiTuning::staging_chunk_bytes).
  size_t SplitBytes(const MpiTuning& tuning) const {
    return any_rank_stages_ ? std::min(tuning.max_message_bytes, tuning.staging_chunk_bytes) : tuning.max_message_bytes;
  }
  int Tag(uint64_t seq) const { return static_cast<int>(seq & tag_mask_); }

  // The proxy thread for staged exchanges on CUDA streams, created on first use (CPU-only runs never start one).
  // Requires p2p_mu_.
  StatusOr<DeviceProxy*> Proxy(const Stream& stream) {
    if (proxy_ == nullptr) {
      StatusOr<std::unique_ptr<DeviceProxy>> p = NewStagingProxy(stream.device().ordinal);
      if (!p.ok()) {
        return Status(p.status().code(), absl::StrCat("mpi: device exchanges on CUDA stream '", stream.name(),
                                                      "' need the proxy thread: ", p.status().message()));
      }
      proxy_ = std::move(p).value();
    }
    return proxy_.get();
  }
  // The caller's label, or "<fallback> #<seq>" built in *storage.
  static absl::string_view LabelOr(const std::string& label, absl::string_view fallback, uint64_t seq,
                                   std::string* storage) {
    if (!label.empty()) return label;
    *storage = absl::StrCat(fallback, " #", seq);
    return *storage;
  }

  // Waits for a nonblocking collective on coll_. On timeout the request (and `staging`, which MPI may still write)
  // is kept until destruction and the communicator refuses further blocking calls. Requires coll_mu_.
  Status WaitCollective(MPI_Request& req, absl::string_view what, std::unique_ptr<char[]>* staging) {
    const int64_t seq = BeginBoundedCollective();
    const absl::Duration timeout = Timeout();
    Poller poller(GetMpiTuning(), timeout);
    for (;;) {
      int done = 0;
      WAVEEP_MPI_RETURN_IF_ERROR(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return absl::OkStatus();
      if (!poller.Next(false)) break;
    }
    // The roll call names the rank(s) that never came, or those stuck in another collective (ranks calling
    // collectives in different orders).
    Status s = absl::DeadlineExceededError(
        WithPrefix(absl::StrCat("mpi communicator: ", what, " timed out after ", absl::FormatDuration(timeout),
                                " waiting for the other ", size_ - 1, " rank(s)", RollCall(seq, timeout))));
    abandoned_.push_back(Abandoned{req, staging != nullptr ? std::move(*staging) : nullptr});
    broken_ = absl::FailedPreconditionError(
        absl::StrCat("mpi communicator unusable for blocking calls after an earlier timeout: ", s.message()));
    return s;
  }

  std::shared_ptr<OwnedComm> coll_;
  std::shared_ptr<OwnedComm> p2p_;
  const int rank_;
  const int size_;
  const uint64_t tag_mask_;  // tags are the sequence number modulo a power of two
  const Options options_;
  std::vector<int> node_ids_;     // written once by Init
  bool any_rank_stages_ = false;  // written once by Init

  std::mutex coll_mu_;  // serialises blocking calls (they must also be issued in the same order on every rank)
  uint64_t coll_seq_ = 0;
  Status broken_;
  MpiTuning blocking_tuning_;  // GetMpiTuning() as of generation blocking_tuning_generation_
  uint64_t blocking_tuning_generation_ = ~uint64_t{0};
  Plan blocking_plan_;        // the last blocking Alltoallv's plan ...
  PlanKey blocking_key_;      // ... the layout it was built for ...
  Scratch blocking_scratch_;  // ... and its requests and statuses
  std::vector<Abandoned> abandoned_;
  bool leak_coll_ = false;

  std::mutex p2p_mu_;  // keeps the sequence number and the enqueue order together
  uint64_t p2p_seq_ = 0;
  // Last member: destroyed first, so its thread fails and releases queued exchanges while everything else exists.
  std::unique_ptr<DeviceProxy> proxy_;
};

}  // namespace

MpiTuning GetMpiTuning() {
  std::lock_guard<std::mutex> lock(g_tuning_mu);
  return g_tuning;
}

Status SetMpiTuning(const MpiTuning& tuning) {
  if (tuning.max_message_bytes == 0 || tuning.max_message_bytes > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MpiTuning.max_message_bytes = ", tuning.max_message_bytes, ", need [1, ", INT_MAX, "]"));
  }
  if (tuning.busy_poll < absl::ZeroDuration() || tuning.spin < absl::ZeroDuration() ||
      tuning.spin_per_mib < absl::ZeroDuration() || tuning.poll_sleep < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("MpiTuning: busy_poll, spin, spin_per_mib and poll_sleep must not be negative");
  }
  if (tuning.staging_chunk_bytes == 0 || tuning.staging_chunk_bytes > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MpiTuning.staging_chunk_bytes = ", tuning.staging_chunk_bytes, ", need [1, ", INT_MAX, "]"));
  }
  if (tuning.staging_slots < 2 || tuning.staging_slots > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("MpiTuning.staging_slots = ", tuning.staging_slots, ", need [2, 64] (double-buffered at least)"));
  }
  std::lock_guard<std::mutex> lock(g_tuning_mu);
  g_tuning = tuning;
  g_tuning_generation.fetch_add(1, std::memory_order_release);
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<Communicator>> NewMpiCommunicator(const ProcessContext& ctx, Options options) {
  if (WorldComm(ctx) == MPI_COMM_NULL) {
    return absl::FailedPreconditionError(
        "mpi communicator: ProcessContext has no world communicator "
        "(call waveep::InitProcess first)");
  }
  WAVEEP_RETURN_IF_ERROR(CheckOptions(options));
  WAVEEP_ASSIGN_OR_RETURN(std::shared_ptr<OwnedComm> coll, DupComm(WorldComm(ctx)));
  WAVEEP_ASSIGN_OR_RETURN(std::shared_ptr<OwnedComm> p2p, DupComm(WorldComm(ctx)));
  int rank = 0, size = 0;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_rank(p2p->comm, &rank));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_size(p2p->comm, &size));
  // Tags wrap at the largest power of two in [0, MPI_TAG_UB] up to 2^30 (MPI_TAG_UB is at least 32767 by the
  // standard; INT_MAX in Open MPI): a mask, not a division, per exchange. Wrapping is harmless as long as fewer
  // exchanges than that are in flight at once.
  void* attr = nullptr;
  int flag = 0;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_get_attr(p2p->comm, MPI_TAG_UB, &attr, &flag));
  const int tag_ub = flag ? *static_cast<int*>(attr) : 32767;
  uint64_t tag_modulus = 1;
  while (tag_modulus < (uint64_t{1} << 30) && 2 * tag_modulus - 1 <= static_cast<uint64_t>(tag_ub)) tag_modulus *= 2;
  auto comm = std::make_unique<MpiCommunicator>(std::move(coll), std::move(p2p), rank, size, tag_modulus - 1, options);
  WAVEEP_RETURN_IF_ERROR(comm->Init(ctx.node_id));
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace waveep::comm::internal
