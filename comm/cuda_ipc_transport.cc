// Copyright 2026 The waveep Authors.
//
// The "cuda_ipc" backend (design in cuda_ipc_transport.h). Host code against the CUDA runtime headers; every copy
// is a cudaMemcpyAsync (copy engine).
#include "comm/cuda_ipc_transport.h"

#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/comm_internal.h"
#include "comm/cuda_status_internal.h"
#include "comm/device_proxy_internal.h"
#include "comm/mpi_transport.h"
#include "runtime/mpi_context.h"

namespace waveep::comm::internal {
namespace {

using Clock = std::chrono::steady_clock;

// NOTES: modelled, not measured: NVLink-class peers, or one GPU shared under MPS (then HBM-bound).
constexpr double kIpcBwGbps = 150.0;
constexpr double kIpcLatencyUs = 15.0;  // control message + copy launch + completion message
constexpr double kLocalBwGbps = 1000.0;
constexpr double kLocalLatencyUs = 5.0;
constexpr size_t kArenaAlign = 256;

size_t AlignUp(size_t x) { return (x + kArenaAlign - 1) / kArenaAlign * kArenaAlign; }

// Receiver -> sender, once per exchange and block: where in the receiver's arena the block goes, and how large the
// receiver expects it (a sender whose block differs fails instead of writing past its slot).
struct ControlMsg {
  uint64_t generation;  // of the receiver's arena; a new one means "reopen the handle"
  uint64_t offset;
  uint64_t bytes;  // the receiver's recv_bytes for this sender
  cudaIpcMemHandle_t handle;
};

// Everything an exchange needs, fixed when it is issued.
struct IpcPlan {
  std::string what;
  uint64_t seq = 0;
  int tag = 0;  // control messages; completion messages use tag + 1
  AlltoallvArgs args;
};

// The arena, the peers' mapped arenas and the private copy stream; shared with queued exchanges.
struct IpcState {
  int rank = 0;
  int size = 0;
  int device = 0;
  MPI_Comm ctrl = MPI_COMM_NULL;

  // Touched only by the proxy thread, which runs exchanges one at a time in issue order on every rank (they share the
  // arena).
  char* arena = nullptr;
  size_t arena_bytes = 0;
  uint64_t generation = 0;
  cudaIpcMemHandle_t handle{};
  struct Mapped {
    uint64_t generation = 0;  // 0: not mapped
    char* base = nullptr;
  };
  std::vector<Mapped> peers;
  // Outgrown arenas and the peers' outgrown mappings, released only in the destructor. cudaFree synchronizes the
  // device, and while an exchange runs the issuing CUDA stream waits (cuStreamWaitValue32) for this very proxy
  // thread to release it: a cudaFree here would wait for the stream and the stream for the proxy, for ever (no
  // timeout can end a wait inside the driver). cudaIpcCloseMemHandle is deferred alike, and because the exporter
  // must not free before its importers closed. Growth doubles, so the retired arenas add up to less than the live one.
  std::vector<char*> retired_arenas;
  std::vector<char*> retired_mappings;
  cudaStream_t copy = nullptr;
  std::vector<cudaEvent_t> copy_done;  // per peer: our copy into its arena finished
  cudaEvent_t local_done = nullptr;    // arena -> caller copies finished
  // Set by the first exchange that fails: a peer may still copy into the arena at that exchange's offsets (it had our
  // control message), so no later exchange may use the arena. Later exchanges fail fast with this.
  Status broken;

  ~IpcState() {
    // Best effort; the driver may already be going away at exit. Importers close first; the exporters free only after
    // every rank closed (a bounded barrier), as CUDA IPC requires.
    for (Mapped& m : peers) {
      if (m.base != nullptr) cudaIpcCloseMemHandle(m.base);
    }
    for (char* m : retired_mappings) cudaIpcCloseMemHandle(m);
    for (cudaEvent_t e : copy_done) cudaEventDestroy(e);
    if (local_done != nullptr) cudaEventDestroy(local_done);
    if (copy != nullptr) cudaStreamDestroy(copy);
    int finalized = 0;
    MPI_Finalized(&finalized);
    const bool closed_everywhere = !finalized && ctrl != MPI_COMM_NULL && BoundedBarrier(absl::Seconds(10));
    if (closed_everywhere) {
      if (arena != nullptr) cudaFree(arena);
      for (char* a : retired_arenas) cudaFree(a);
      MPI_Comm_free(&ctrl);
    }
    // Otherwise the arenas are left to process exit (freeing memory a peer may still map is undefined behaviour), and
    // so are ctrl and its barrier request: an active collective request can be neither freed nor waited for here.
  }

  // MPI_Ibarrier on ctrl, polled until `limit`; false when a rank never arrived (the request is then left to MPI).
  bool BoundedBarrier(absl::Duration limit) {
    MPI_Request req = MPI_REQUEST_NULL;
    if (MPI_Ibarrier(ctrl, &req) != MPI_SUCCESS) return false;
    const Clock::time_point deadline = Clock::now() + absl::ToChronoNanoseconds(limit);
    for (;;) {
      int done = 0;
      if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
      if (done) return true;
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  Status EnsureArena(size_t bytes) {
    if (bytes <= arena_bytes) return absl::OkStatus();
    // Grow-only, by at least 2x; the old arena is retired, not freed (see retired_arenas). The new generation makes
    // the peers map it before their next copy.
    const size_t grown = std::max({bytes, 2 * arena_bytes, size_t{1} << 20});
    char* fresh = nullptr;
    cudaError_t rc = cudaMalloc(reinterpret_cast<void**>(&fresh), grown);
    if (rc == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          WithPrefix(absl::StrCat("cuda_ipc: receive arena of ", grown, " bytes does not fit on device ", device)));
    }
    WAVEEP_CUDA_RETURN_IF_ERROR(rc);
    cudaIpcMemHandle_t h{};
    rc = cudaIpcGetMemHandle(&h, fresh);
    if (rc != cudaSuccess) {
      retired_arenas.push_back(fresh);  // never freed mid-exchange, not even this one
      WAVEEP_CUDA_RETURN_IF_ERROR(rc);
    }
    if (arena != nullptr) retired_arenas.push_back(arena);
    arena = fresh;
    handle = h;
    arena_bytes = grown;
    ++generation;
    return absl::OkStatus();
  }

  StatusOr<char*> PeerArena(int peer, const ControlMsg& c) {
    Mapped& m = peers[peer];
    if (m.generation != c.generation) {
      if (m.base != nullptr) retired_mappings.push_back(m.base);  // closed in the destructor (see retired_arenas)
      m.base = nullptr;
      m.generation = 0;
      void* p = nullptr;
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaIpcOpenMemHandle(&p, c.handle, cudaIpcMemLazyEnablePeerAccess));
      m.base = static_cast<char*>(p);
      m.generation = c.generation;
    }
    return m.base;
  }
};

// Runs one exchange on the calling thread (CUDA allowed). Blocking, bounded by `timeout`.
class IpcExchange {
 public:
  IpcExchange(IpcState& s, const IpcPlan& plan) : s_(s), plan_(plan), a_(plan.args) {}

  Status Run(absl::Duration timeout) {
    WAVEEP_RETURN_IF_ERROR(s_.broken);
    Status st = RunOnce(timeout);
    if (!st.ok()) {
      // st's message carries the rank prefix already.
      s_.broken = absl::FailedPreconditionError(
          absl::StrCat("cuda_ipc communicator unusable after an earlier exchange failed (a peer may still copy into "
                       "this rank's arena): ",
                       st.message()));
    }
    return st;
  }

 private:
  Status RunOnce(absl::Duration timeout) {
    const Clock::time_point deadline = Clock::now() + absl::ToChronoNanoseconds(timeout);
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(s_.device));
    const int n = s_.size;
    const int me = s_.rank;
    // Arena layout by sender; the block to self never goes through it.
    std::vector<size_t> arena_off(n, 0);
    size_t total = 0;
    for (int p = 0; p < n; ++p) {
      if (p == me || a_.recv_bytes[p] == 0) continue;
      arena_off[p] = total;
      total += AlignUp(a_.recv_bytes[p]);
    }
    WAVEEP_RETURN_IF_ERROR(s_.EnsureArena(total));

    ctrl_out_.resize(n);
    ctrl_in_.resize(n);
    // Requests: [0, n) control in (from senders to me), [n, 2n) control out, [2n, 3n) completion in,
    // [3n, 4n) completion out.
    reqs_.assign(4 * static_cast<size_t>(n), MPI_REQUEST_NULL);
    done_word_.assign(n, 0);
    ack_word_.assign(n, 1);
    for (int p = 0; p < n; ++p) {
      if (p == me) continue;
      if (a_.send_bytes[p] > 0) {
        WAVEEP_MPI_RETURN_IF_ERROR(
            MPI_Irecv(&ctrl_in_[p], sizeof(ControlMsg), MPI_BYTE, p, plan_.tag, s_.ctrl, &reqs_[p]));
      }
      if (a_.recv_bytes[p] > 0) {
        ctrl_out_[p] = ControlMsg{s_.generation, arena_off[p], static_cast<uint64_t>(a_.recv_bytes[p]), s_.handle};
        WAVEEP_MPI_RETURN_IF_ERROR(
            MPI_Irecv(&done_word_[p], 1, MPI_UINT64_T, p, plan_.tag + 1, s_.ctrl, &reqs_[2 * n + p]));
        WAVEEP_MPI_RETURN_IF_ERROR(
            MPI_Isend(&ctrl_out_[p], sizeof(ControlMsg), MPI_BYTE, p, plan_.tag, s_.ctrl, &reqs_[n + p]));
      }
    }
    std::vector<bool> copying(n, false);
    int copies_in_flight = 0;
    Status st;
    for (;;) {
      bool progressed = false;  // also: a completion posted after this pass's MPI_Testsome, not yet tested
      int outcount = 0;
      idx_.resize(reqs_.size());
      const int rc =
          MPI_Testsome(static_cast<int>(reqs_.size()), reqs_.data(), &outcount, idx_.data(), MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) {
        st = absl::InternalError(
            WithPrefix(absl::StrCat(plan_.what, ": MPI_Testsome failed: ", ::waveep::internal::MpiErrorString(rc))));
        break;
      }
      if (outcount != MPI_UNDEFINED) {
        for (int k = 0; k < outcount && st.ok(); ++k) {
          progressed = true;
          const int i = idx_[k];
          if (i >= n) continue;  // sends done, or a completion received
          // A receiver told us where our block goes: copy it into its arena.
          const int p = i;
          if (ctrl_in_[p].bytes != static_cast<uint64_t>(a_.send_bytes[p])) {
            st = absl::InvalidArgumentError(
                WithPrefix(absl::StrCat(plan_.what, ": this rank sends ", a_.send_bytes[p], " bytes to rank ", p,
                                        ", which expects ", ctrl_in_[p].bytes, " (send_bytes[", p,
                                        "] disagrees with rank ", p, "'s recv_bytes); nothing was copied")));
            break;
          }
          StatusOr<char*> base = s_.PeerArena(p, ctrl_in_[p]);
          if (!base.ok()) {
            st = base.status();
            break;
          }
          st = [&]() -> Status {
            WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(*base + ctrl_in_[p].offset,
                                                        static_cast<const char*>(a_.send) + a_.send_offsets[p],
                                                        a_.send_bytes[p], cudaMemcpyDefault, s_.copy));
            WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventRecord(s_.copy_done[p], s_.copy));
            return absl::OkStatus();
          }();
          copying[p] = true;
          ++copies_in_flight;
        }
      }
      if (!st.ok()) break;
      // Copies that landed in a peer's arena: tell the peer.
      for (int p = 0; p < n && copies_in_flight > 0; ++p) {
        if (!copying[p]) continue;
        const cudaError_t q = cudaEventQuery(s_.copy_done[p]);
        if (q == cudaErrorNotReady) continue;
        if (q != cudaSuccess) {
          st = ::waveep::internal::MakeForeignError(absl::StatusCode::kInternal, "CUDA", "cudaEventQuery(copy)",
                                                    __FILE__, __LINE__, cudaGetErrorString(q));
          break;
        }
        copying[p] = false;
        --copies_in_flight;
        progressed = true;
        const int mrc = MPI_Isend(&ack_word_[p], 1, MPI_UINT64_T, p, plan_.tag + 1, s_.ctrl, &reqs_[3 * n + p]);
        if (mrc != MPI_SUCCESS) {
          st = absl::InternalError(WithPrefix(absl::StrCat(plan_.what, ": MPI_Isend of a completion to rank ", p,
                                                           " failed: ", ::waveep::internal::MpiErrorString(mrc))));
          break;
        }
      }
      if (!st.ok()) break;
      if (outcount == MPI_UNDEFINED && copies_in_flight == 0 && !progressed) break;  // everything done
      if (progressed) continue;
      if (Clock::now() >= deadline) {
        st = absl::DeadlineExceededError(WithPrefix(
            absl::StrCat(plan_.what, " timed out after ", absl::FormatDuration(timeout), "; still pending: ",
                         DescribePending(copying), ". Did every rank issue this exchange, in the same order?")));
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(5));
    }
    if (!st.ok()) {
      Abandon();
      return st;
    }
    // Every sender completed: arena -> caller's blocks, plus the block to self, on the local copy engine.
    WAVEEP_RETURN_IF_ERROR([&]() -> Status {
      for (int p = 0; p < n; ++p) {
        if (a_.recv_bytes[p] == 0) continue;
        const char* src = p == me ? static_cast<const char*>(a_.send) + a_.send_offsets[me] : s_.arena + arena_off[p];
        WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(static_cast<char*>(a_.recv) + a_.recv_offsets[p], src,
                                                    a_.recv_bytes[p], cudaMemcpyDefault, s_.copy));
      }
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventRecord(s_.local_done, s_.copy));
      return absl::OkStatus();
    }());
    for (;;) {
      const cudaError_t q = cudaEventQuery(s_.local_done);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) WAVEEP_CUDA_RETURN_IF_ERROR(q);
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(WithPrefix(
            absl::StrCat(plan_.what, ": local arena copies did not finish within ", absl::FormatDuration(timeout))));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(5));
    }
  }

  std::string DescribePending(const std::vector<bool>& copying) const {
    const int n = s_.size;
    std::string out;
    auto add = [&](const std::string& what) { absl::StrAppend(&out, out.empty() ? "" : ", ", what); };
    for (int p = 0; p < n; ++p) {
      if (reqs_[p] != MPI_REQUEST_NULL) add(absl::StrCat("arena offset from rank ", p));
      if (copying[p]) add(absl::StrCat("copy into rank ", p, "'s arena"));
      if (reqs_[2 * n + p] != MPI_REQUEST_NULL) add(absl::StrCat("completion from rank ", p));
      if (reqs_[n + p] != MPI_REQUEST_NULL || reqs_[3 * n + p] != MPI_REQUEST_NULL) {
        add(absl::StrCat("control message to rank ", p));
      }
    }
    return out.empty() ? "nothing" : out;
  }

  // After an error: cancel what MPI still holds (control buffers live in this object: wait for them briefly, then
  // free the requests) and let our copies drain.
  void Abandon() {
    const Clock::time_point deadline = Clock::now() + absl::ToChronoNanoseconds(kCancelGrace);
    AbandonRequests(reqs_, kCancelGrace);
    while (cudaStreamQuery(s_.copy) == cudaErrorNotReady && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    cudaGetLastError();
  }

  IpcState& s_;
  const IpcPlan& plan_;
  const AlltoallvArgs& a_;
  std::vector<ControlMsg> ctrl_out_;
  std::vector<ControlMsg> ctrl_in_;
  std::vector<uint64_t> done_word_;
  std::vector<uint64_t> ack_word_;
  std::vector<MPI_Request> reqs_;
  std::vector<int> idx_;
};

// Runs one exchange on the proxy thread.
Status RunExchange(const std::shared_ptr<IpcState>& s, const IpcPlan& plan, absl::Duration timeout) {
  ScopedSpan span("cuda_ipc", plan.what, "comm");
  IpcExchange ex(*s, plan);
  return ex.Run(timeout);
}

class CudaIpcCommunicator final : public Communicator {
 public:
  CudaIpcCommunicator(std::unique_ptr<Communicator> host, std::shared_ptr<IpcState> state,
                      std::unique_ptr<DeviceProxy> proxy, absl::Duration timeout, int tag_modulus)
      : host_(std::move(host)),
        s_(std::move(state)),
        timeout_(timeout),
        tag_modulus_(tag_modulus),
        proxy_(std::move(proxy)) {}

  absl::string_view name() const override { return "cuda_ipc"; }
  int rank() const override { return s_->rank; }
  int size() const override { return s_->size; }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.host_memory = false;
    caps.device_memory = true;
    return caps;
  }
  LinkEstimate Estimate(int peer) const override {
    if (peer < 0 || peer >= size()) return LinkEstimate{"invalid", 0, 0};
    if (peer == rank()) return LinkEstimate{"loopback", kLocalBwGbps, kLocalLatencyUs};
    return LinkEstimate{"cuda_ipc", kIpcBwGbps, kIpcLatencyUs};
  }

  Status Barrier() override { return host_->Barrier(); }
  Status Allgather(const void* send, size_t bytes, void* recv) override { return host_->Allgather(send, bytes, recv); }
  Status AlltoallCounts(const int64_t* send, int64_t n, int64_t* recv) override {
    return host_->AlltoallCounts(send, n, recv);
  }

  // Through the proxy too, so that it keeps its place in the issue order; the calling host thread waits (a host thread
  // may block, a CUDA host function may not).
  Status Alltoallv(const AlltoallvArgs& args) override {
    std::shared_ptr<ProxyTicket> ticket;
    {
      std::lock_guard<std::mutex> lock(issue_mu_);  // keeps the sequence number and the queue order together
      WAVEEP_ASSIGN_OR_RETURN(std::shared_ptr<IpcPlan> plan, MakePlan(args, "(blocking)"));
      ProxyJob job;
      job.what = plan->what;
      job.timeout = timeout_;
      job.run = [s = s_, plan, timeout = timeout_]() { return RunExchange(s, *plan, timeout); };
      WAVEEP_ASSIGN_OR_RETURN(ticket, proxy_->Submit(std::move(job)));
      ++seq_;
    }
    // Exchanges queued before this one may each take up to the timeout; this one bounds itself once it runs.
    return ticket->Wait(timeout_, timeout_ + absl::Seconds(1));
  }

  // CUDA stream: the proxy runs the exchange once the stream reached it and releases the stream through a host-mapped
  // flag after the copies into the caller's receive blocks completed. CPU stream: the proxy's host gate holds the
  // stream's thread meanwhile.
  Status AlltoallvAsync(AlltoallvArgs args, Stream& stream) override {
    std::lock_guard<std::mutex> lock(issue_mu_);
    WAVEEP_ASSIGN_OR_RETURN(std::shared_ptr<IpcPlan> plan, MakePlan(args, ""));
    if (stream.native() != nullptr && stream.device().ordinal != s_->device) {
      return absl::InvalidArgumentError(absl::StrCat("cuda_ipc: stream '", stream.name(), "' is on CUDA device ",
                                                     stream.device().ordinal, ", this rank's exchanges use device ",
                                                     s_->device));
    }
    const std::string what = plan->what;
    WAVEEP_RETURN_IF_ERROR(proxy_->Enqueue(
        stream, what, timeout_, [s = s_, plan, timeout = timeout_]() { return RunExchange(s, *plan, timeout); }));
    ++seq_;
    return absl::OkStatus();
  }

 private:
  // Validates and fixes the exchange's sequence number (consumed by the caller once the exchange is queued).
  // Requires issue_mu_.
  StatusOr<std::shared_ptr<IpcPlan>> MakePlan(const AlltoallvArgs& args, absl::string_view suffix) {
    WAVEEP_RETURN_IF_ERROR(ValidateAlltoallvArgs(args, size()));
    const int me = rank();
    if (args.send_bytes[me] != args.recv_bytes[me]) {
      return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs: send_bytes[", me, "] = ", args.send_bytes[me],
                                                     " but recv_bytes[", me, "] = ", args.recv_bytes[me]));
    }
    WAVEEP_RETURN_IF_ERROR(CheckDeviceBuffers(args, "cuda_ipc"));
    auto plan = std::make_shared<IpcPlan>();
    plan->seq = seq_;
    // Two tags per exchange (control, completion), wrapping well below MPI_TAG_UB.
    plan->tag = static_cast<int>((seq_ % static_cast<uint64_t>(tag_modulus_ / 2)) * 2);
    plan->what = absl::StrCat("cuda_ipc alltoallv '", args.label.empty() ? absl::StrCat("#", seq_) : args.label, "'",
                              suffix.empty() ? "" : " ", suffix);
    plan->args = args;
    return plan;
  }

  std::unique_ptr<Communicator> host_;
  std::shared_ptr<IpcState> s_;
  const absl::Duration timeout_;
  const int tag_modulus_;
  std::mutex issue_mu_;
  uint64_t seq_ = 0;
  // Last member: destroyed first, so its thread finishes the running exchange, fails and releases the queued ones
  // while the state they use still exists.
  std::unique_ptr<DeviceProxy> proxy_;
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> NewCudaIpcCommunicator(const ProcessContext& ctx, Options options) {
  if (WorldComm(ctx) == MPI_COMM_NULL) {
    return absl::FailedPreconditionError("cuda_ipc communicator: ProcessContext has no world communicator");
  }
  const int num_devices = CudaDeviceCount();
  if (num_devices == 0) return absl::UnavailableError("comm backend 'cuda_ipc': no CUDA device is visible");
  WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> host, NewMpiCommunicator(ctx, options));
  const int me = host->rank();
  const int n = host->size();
  std::vector<int> nodes(n);
  WAVEEP_RETURN_IF_ERROR(host->Allgather(&ctx.node_id, sizeof(int), nodes.data()));
  for (int p = 0; p < n; ++p) {
    if (nodes[p] != nodes[0]) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cuda_ipc communicator: rank 0 (node ", nodes[0], ") and rank ", p, " (node ", nodes[p],
          ") are on different nodes; CUDA IPC only connects processes of one node (use --backend=nccl or mpi)"));
    }
  }
  auto s = std::make_shared<IpcState>();
  s->rank = me;
  s->size = n;
  s->device = ctx.local_rank % num_devices;  // several ranks per GPU (MPS) when local_size > num_devices
  s->peers.resize(n);
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_dup(WorldComm(ctx), &s->ctrl));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_set_errhandler(s->ctrl, MPI_ERRORS_RETURN));
  std::unique_ptr<DeviceProxy> proxy;
  const Status local = [&]() -> Status {
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(s->device));
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->copy, cudaStreamNonBlocking));
    for (int p = 0; p < n; ++p) {
      cudaEvent_t e = nullptr;
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      s->copy_done.push_back(e);
    }
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&s->local_done, cudaEventDisableTiming));
    WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<StreamGate> gate, NewCudaStreamGate(s->device));
    proxy = std::make_unique<DeviceProxy>("cuda_ipc", std::move(gate));
    return absl::OkStatus();
  }();
  // Agree on success, so that no rank is left holding a communicator its peers lack.
  const int ok = local.ok() ? 1 : 0;
  std::vector<int> oks(n);
  WAVEEP_RETURN_IF_ERROR(host->Allgather(&ok, sizeof(ok), oks.data()));
  if (!local.ok()) return local;
  for (int p = 0; p < n; ++p) {
    if (!oks[p]) {
      return absl::InternalError(
          absl::StrCat("cuda_ipc communicator: CUDA setup (streams, events, proxy) failed on "
                       "rank ",
                       p));
    }
  }
  void* attr = nullptr;
  int flag = 0;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_get_attr(s->ctrl, MPI_TAG_UB, &attr, &flag));
  const int tag_modulus = std::min(flag ? *static_cast<int*>(attr) : 32767, 1 << 30);
  const absl::Duration timeout = EffectiveTimeout(options);
  return std::unique_ptr<Communicator>(
      new CudaIpcCommunicator(std::move(host), std::move(s), std::move(proxy), timeout, tag_modulus));
}

}  // namespace waveep::comm::internal
