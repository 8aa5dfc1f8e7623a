// Copyright 2026 The waveep Authors.
//
// The "nccl" backend (design in nccl_transport.h). Host code against the CUDA and NCCL headers; NCCL launches its
// own kernels.
#include "comm/nccl_transport.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/comm_internal.h"
#include "comm/cuda_status_internal.h"
#include "comm/mpi_transport.h"
#include "runtime/mpi_context.h"

// NCCL return code -> Status with the expression, file:line and NCCL's last error text.
#define WAVEEP_NCCL_RETURN_IF_ERROR(expr)                                                        \
  do {                                                                                           \
    ncclResult_t waveep_nccl_rc_ = (expr);                                                       \
    if (waveep_nccl_rc_ != ncclSuccess && waveep_nccl_rc_ != ncclInProgress)                     \
      return ::waveep::internal::MakeForeignError(                                               \
          ::absl::StatusCode::kInternal, "NCCL", #expr, __FILE__, __LINE__,                      \
          ::absl::StrCat(ncclGetErrorString(waveep_nccl_rc_), ": ", ncclGetLastError(nullptr))); \
  } while (0)

namespace waveep::comm::internal {
namespace {

using Clock = std::chrono::steady_clock;

// NOTES: modelled, not measured (topology/ probes the real link): NVLink-class peers on one node, a 400 Gb/s NIC
// across nodes.
constexpr double kNvlinkBwGbps = 150.0;
constexpr double kNvlinkLatencyUs = 5.0;
constexpr double kNicBwGbps = 45.0;
constexpr double kNicLatencyUs = 10.0;
constexpr double kLocalBwGbps = 1000.0;
constexpr double kLocalLatencyUs = 3.0;

// Polls a non-blocking NCCL communicator until its pending operation (init, group end) is no longer in progress.
// Requires NcclState::call_mu once other threads can use `comm`.
Status WaitNotInProgress(ncclComm_t comm, absl::Duration timeout, absl::string_view what) {
  const Clock::time_point deadline = Clock::now() + absl::ToChronoNanoseconds(timeout);
  for (;;) {
    ncclResult_t async = ncclSuccess;
    WAVEEP_NCCL_RETURN_IF_ERROR(ncclCommGetAsyncError(comm, &async));
    if (async == ncclSuccess) return absl::OkStatus();
    if (async != ncclInProgress) WAVEEP_NCCL_RETURN_IF_ERROR(async);
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          WithPrefix(absl::StrCat("nccl: ", what, " did not finish within ", absl::FormatDuration(timeout))));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

// The NCCL communicator and its health, shared with queued host functions and the watchdog.
//
// NOTES: NCCL communicators are not thread-safe, and three threads use this one: the thread issuing AlltoallvAsync,
// the thread in the blocking Alltoallv, and the watchdog. Every NCCL call on `comm` therefore holds call_mu: a group
// launch (ncclGroupStart .. ncclGroupEnd and the bounded wait for it to leave ncclInProgress) as one unit, and each
// ncclCommGetAsyncError / ncclCommAbort on its own. call_mu is never held while waiting for a stream, so a launch
// waits at most for one other launch (bounded by the timeout) or one error poll. After the abort `comm` is gone:
// AsyncError() and Launch check `aborted` under call_mu and never touch it again.
//
// The queued host functions hold only the health (NcclHealth), never the state: the last reference to the state must
// not go away inside a CUDA host function, where ~NcclState's ncclCommDestroy (a CUDA-calling function) is forbidden.
struct NcclHealth {
  std::mutex mu;  // guards broken and aborted (read without call_mu by the host functions)
  Status broken;  // set once, before ncclCommAbort
  bool aborted = false;
  Status Get() {
    std::lock_guard<std::mutex> lock(mu);
    return broken;
  }
};

struct NcclState {
  ncclComm_t comm = nullptr;
  std::mutex call_mu;  // serialises every NCCL call on comm (see above)
  const std::shared_ptr<NcclHealth> health = std::make_shared<NcclHealth>();

  // Fails the communicator and releases its kernels. Idempotent. Must not hold call_mu (AbortLocked then).
  void Abort(Status why) {
    std::lock_guard<std::mutex> call(call_mu);
    AbortLocked(std::move(why));
  }
  // Requires call_mu.
  void AbortLocked(Status why) {
    {
      std::lock_guard<std::mutex> lock(health->mu);
      if (health->aborted) return;
      health->broken = absl::FailedPreconditionError(
          absl::StrCat("nccl communicator aborted after an earlier failure: ", why.message()));
      health->aborted = true;
    }
    ncclCommAbort(comm);
  }
  Status Health() { return health->Get(); }
  bool Aborted() {
    std::lock_guard<std::mutex> lock(health->mu);
    return health->aborted;
  }
  // ncclCommGetAsyncError under call_mu; ncclSuccess once aborted (Health() then carries the error).
  ncclResult_t AsyncError() {
    std::lock_guard<std::mutex> call(call_mu);
    if (Aborted()) return ncclSuccess;
    ncclResult_t async = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm, &async);
    return rc != ncclSuccess ? rc : async;
  }
  ~NcclState() {
    if (!Aborted() && comm != nullptr) ncclCommDestroy(comm);
  }
};

// One queued exchange as the watchdog sees it.
struct Watch {
  std::string what;
  cudaEvent_t started = nullptr;  // recorded before the group
  std::atomic<bool> finished{false};
  std::mutex mu;
  Status verdict;  // the watchdog's, read by the host function after the group
  bool timer_running = false;
  Clock::time_point start_time;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> host, std::shared_ptr<NcclState> state, int device,
                   std::vector<int> node_ids, absl::Duration timeout)
      : host_(std::move(host)),
        state_(std::move(state)),
        device_(device),
        node_ids_(std::move(node_ids)),
        timeout_(timeout),
        watchdog_([this] { WatchdogLoop(); }) {}

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(watch_mu_);
      stop_ = true;
    }
    watch_cv_.notify_all();
    watchdog_.join();
    for (auto& w : watches_) cudaEventDestroy(w->started);
    if (blocking_stream_ != nullptr) cudaStreamDestroy(blocking_stream_);
  }

  absl::string_view name() const override { return "nccl"; }
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.host_memory = false;
    caps.device_memory = true;
    return caps;
  }
  LinkEstimate Estimate(int peer) const override {
    if (peer < 0 || peer >= size()) return LinkEstimate{"invalid", 0, 0};
    if (peer == rank()) return LinkEstimate{"loopback", kLocalBwGbps, kLocalLatencyUs};
    if (node_ids_[peer] == node_ids_[rank()]) return LinkEstimate{"nvlink", kNvlinkBwGbps, kNvlinkLatencyUs};
    return LinkEstimate{"net", kNicBwGbps, kNicLatencyUs};
  }

  Status Barrier() override { return host_->Barrier(); }
  Status Allgather(const void* send, size_t bytes, void* recv) override { return host_->Allgather(send, bytes, recv); }
  Status AlltoallCounts(const int64_t* send, int64_t n, int64_t* recv) override {
    return host_->AlltoallCounts(send, n, recv);
  }

  Status Alltoallv(const AlltoallvArgs& args) override {
    std::lock_guard<std::mutex> lock(blocking_mu_);
    WAVEEP_RETURN_IF_ERROR(CheckArgs(args));
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    if (blocking_stream_ == nullptr) {
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&blocking_stream_, cudaStreamNonBlocking));
    }
    const std::string what = absl::StrCat("nccl alltoallv '", args.label, "' (blocking)");
    ScopedSpan span("host", args.label.empty() ? "alltoallv" : args.label, "comm");
    WAVEEP_RETURN_IF_ERROR(Launch(args, blocking_stream_, what));
    const Clock::time_point deadline = Clock::now() + absl::ToChronoNanoseconds(timeout_);
    for (;;) {
      const cudaError_t rc = cudaStreamQuery(blocking_stream_);
      if (rc == cudaSuccess) return absl::OkStatus();
      if (rc != cudaErrorNotReady) WAVEEP_CUDA_RETURN_IF_ERROR(rc);
      WAVEEP_RETURN_IF_ERROR(state_->Health());
      const ncclResult_t async = state_->AsyncError();
      if (async != ncclSuccess && async != ncclInProgress) {
        Status s = absl::InternalError(WithPrefix(absl::StrCat(what, ": NCCL error ", ncclGetErrorString(async))));
        state_->Abort(s);
        return s;
      }
      if (Clock::now() >= deadline) {
        Status s = absl::DeadlineExceededError(
            WithPrefix(absl::StrCat(what, " timed out after ", absl::FormatDuration(timeout_), "; ", PeersOf(args),
                                    ". Did every rank issue this exchange, in the same order?")));
        state_->Abort(s);
        return s;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  Status AlltoallvAsync(AlltoallvArgs args, Stream& stream) override {
    if (stream.native() == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("nccl backend needs a CUDA stream; '", stream.name(),
                                                        "' is a CPU stream (use --backend=mpi for host streams)"));
    }
    WAVEEP_RETURN_IF_ERROR(CheckArgs(args));
    auto s = static_cast<cudaStream_t>(stream.native());
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    auto watch = std::make_shared<Watch>();
    watch->what = absl::StrCat("nccl alltoallv '", args.label, "' (", PeersOf(args), ")");
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&watch->started, cudaEventDisableTiming));
    cudaError_t rc = cudaEventRecord(watch->started, s);
    if (rc != cudaSuccess) cudaEventDestroy(watch->started);
    WAVEEP_CUDA_RETURN_IF_ERROR(rc);
    Status st = Launch(args, s, watch->what);
    if (st.ok()) {
      // Runs after NCCL's kernels returned, normally or released by an abort: reports the watchdog's verdict.
      st = stream.Enqueue([watch, health = state_->health]() -> Status {
        watch->finished.store(true);
        WAVEEP_RETURN_IF_ERROR(health->Get());
        std::lock_guard<std::mutex> lock(watch->mu);
        return watch->verdict;
      });
    }
    if (!st.ok()) {
      cudaEventDestroy(watch->started);
      return st;
    }
    {
      std::lock_guard<std::mutex> lock(watch_mu_);
      watches_.push_back(std::move(watch));
    }
    watch_cv_.notify_all();
    return absl::OkStatus();
  }

 private:
  Status CheckArgs(const AlltoallvArgs& args) const {
    WAVEEP_RETURN_IF_ERROR(state_->Health());
    WAVEEP_RETURN_IF_ERROR(ValidateAlltoallvArgs(args, size()));
    const int me = rank();
    if (args.send_bytes[me] != args.recv_bytes[me]) {
      return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs: send_bytes[", me, "] = ", args.send_bytes[me],
                                                     " but recv_bytes[", me, "] = ", args.recv_bytes[me]));
    }
    return CheckDeviceBuffers(args, "nccl");
  }

  static std::string PeersOf(const AlltoallvArgs& args) {
    int sends = 0, recvs = 0;
    for (size_t b : args.send_bytes) sends += b > 0;
    for (size_t b : args.recv_bytes) recvs += b > 0;
    return absl::StrCat(sends, " send and ", recvs, " receive blocks");
  }

  // Enqueues the grouped point-to-point exchange on `s`. Non-blocking apart from the group launch, which holds the
  // state's call_mu (NCCL calls are serialised per communicator; see NcclState).
  Status Launch(const AlltoallvArgs& args, cudaStream_t s, absl::string_view what) {
    const int me = rank();
    if (args.send_bytes[me] > 0) {
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(static_cast<char*>(args.recv) + args.recv_offsets[me],
                                                  static_cast<const char*>(args.send) + args.send_offsets[me],
                                                  args.send_bytes[me], cudaMemcpyDeviceToDevice, s));
    }
    std::lock_guard<std::mutex> call(state_->call_mu);
    WAVEEP_RETURN_IF_ERROR(state_->Health());  // aborted meanwhile: comm is gone
    WAVEEP_NCCL_RETURN_IF_ERROR(ncclGroupStart());
    Status group = [&]() -> Status {
      for (int i = 1; i < size(); ++i) {
        const int to = (me + i) % size();
        const int from = (me - i + size()) % size();
        if (args.send_bytes[to] > 0) {
          WAVEEP_NCCL_RETURN_IF_ERROR(ncclSend(static_cast<const char*>(args.send) + args.send_offsets[to],
                                               args.send_bytes[to], ncclUint8, to, state_->comm, s));
        }
        if (args.recv_bytes[from] > 0) {
          WAVEEP_NCCL_RETURN_IF_ERROR(ncclRecv(static_cast<char*>(args.recv) + args.recv_offsets[from],
                                               args.recv_bytes[from], ncclUint8, from, state_->comm, s));
        }
      }
      return absl::OkStatus();
    }();
    // Always close the group (NCCL's group state is per thread), then report the first error.
    const ncclResult_t end = ncclGroupEnd();
    if (group.ok() && end != ncclSuccess && end != ncclInProgress) {
      group = ::waveep::internal::MakeForeignError(absl::StatusCode::kInternal, "NCCL", "ncclGroupEnd()", __FILE__,
                                                   __LINE__, ncclGetErrorString(end));
    }
    Status st = group.ok() ? WaitNotInProgress(state_->comm, timeout_, absl::StrCat(what, " group launch")) : group;
    if (!st.ok()) state_->AbortLocked(st);
    return st;
  }

  // Bounds every queued exchange by the timeout, counted from when its stream reached it.
  void WatchdogLoop() {
    // Its event queries and destroys act on the current device: this thread's is device 0 until set.
    cudaSetDevice(device_);
    cudaGetLastError();
    std::unique_lock<std::mutex> lock(watch_mu_);
    while (!stop_) {
      if (watches_.empty()) {
        watch_cv_.wait(lock, [&] { return stop_ || !watches_.empty(); });
      } else {
        watch_cv_.wait_for(lock, std::chrono::microseconds(100), [&] { return stop_; });
      }
      for (auto it = watches_.begin(); it != watches_.end();) {
        Watch& w = **it;
        if (w.finished.load()) {
          cudaEventDestroy(w.started);
          it = watches_.erase(it);
          continue;
        }
        if (!w.timer_running && cudaEventQuery(w.started) == cudaSuccess) {
          w.timer_running = true;
          w.start_time = Clock::now();
        }
        const ncclResult_t async = state_->AsyncError();
        Status verdict;
        if (async != ncclSuccess && async != ncclInProgress) {
          verdict = absl::InternalError(WithPrefix(absl::StrCat(w.what, ": NCCL error ", ncclGetErrorString(async))));
        } else if (w.timer_running && Clock::now() - w.start_time > absl::ToChronoNanoseconds(timeout_)) {
          verdict = absl::DeadlineExceededError(
              WithPrefix(absl::StrCat(w.what, " timed out after ", absl::FormatDuration(timeout_),
                                      " on the stream; the communicator was aborted. Did every rank issue this "
                                      "exchange, in the same order?")));
        }
        if (!verdict.ok()) {
          {
            std::lock_guard<std::mutex> wl(w.mu);
            w.verdict = verdict;
          }
          state_->Abort(verdict);  // releases the kernels; the host function then reports the verdict
        }
        ++it;
      }
    }
  }

  std::unique_ptr<Communicator> host_;  // "mpi": blocking host collectives
  std::shared_ptr<NcclState> state_;
  const int device_;
  const std::vector<int> node_ids_;
  const absl::Duration timeout_;

  std::mutex blocking_mu_;
  cudaStream_t blocking_stream_ = nullptr;

  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  std::list<std::shared_ptr<Watch>> watches_;
  bool stop_ = false;
  std::thread watchdog_;  // last: starts once everything above exists
};

// What each rank tells the others before NCCL starts.
struct RankInfo {
  int node_id;
  int device;
  char bus_id[64];
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> NewNcclCommunicator(const ProcessContext& ctx, Options options) {
  if (WorldComm(ctx) == MPI_COMM_NULL) {
    return absl::FailedPreconditionError("nccl communicator: ProcessContext has no world communicator");
  }
  const int num_devices = CudaDeviceCount();
  if (num_devices == 0) return absl::UnavailableError("comm backend 'nccl': no CUDA device is visible");
  WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> host, NewMpiCommunicator(ctx, options));
  const absl::Duration timeout = EffectiveTimeout(options);
  const int me = host->rank();
  const int n = host->size();

  // Collective from here on: every rank reaches each Allgather, even when its own step failed, so that an error on
  // one rank never leaves the others waiting.
  RankInfo info{};
  info.node_id = ctx.node_id;
  info.device = ctx.local_rank % num_devices;
  Status local = [&]() -> Status {
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(info.device));
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaDeviceGetPCIBusId(info.bus_id, sizeof(info.bus_id), info.device));
    return absl::OkStatus();
  }();
  if (!local.ok()) std::snprintf(info.bus_id, sizeof(info.bus_id), "error");
  std::vector<RankInfo> all(n);
  WAVEEP_RETURN_IF_ERROR(host->Allgather(&info, sizeof(info), all.data()));
  for (int a = 0; a < n; ++a) {
    if (std::strcmp(all[a].bus_id, "error") == 0) {
      return absl::InternalError(absl::StrCat("nccl communicator: rank ", a, " could not query its GPU",
                                              a == me ? absl::StrCat(": ", local.message()) : std::string()));
    }
    for (int b = a + 1; b < n; ++b) {
      if (all[a].node_id == all[b].node_id && std::strcmp(all[a].bus_id, all[b].bus_id) == 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "nccl communicator: ranks ", a, " and ", b, " share GPU ", all[a].bus_id, " on node ", all[a].node_id,
            "; NCCL needs one GPU per rank. Use --backend=mpi (host-staged) or "
            "--backend=cuda_ipc for several ranks per GPU under MPS, or launch one rank per GPU"));
      }
    }
  }

  ncclUniqueId id{};
  ncclResult_t id_rc = ncclSuccess;
  if (me == 0) id_rc = ncclGetUniqueId(&id);
  struct IdMsg {
    int ok;
    ncclUniqueId id;
  } mine{id_rc == ncclSuccess ? 1 : 0, id};
  std::vector<IdMsg> ids(n);
  WAVEEP_RETURN_IF_ERROR(host->Allgather(&mine, sizeof(mine), ids.data()));
  if (!ids[0].ok) {
    return absl::InternalError(absl::StrCat("nccl communicator: ncclGetUniqueId failed on rank 0",
                                            me == 0 ? absl::StrCat(": ", ncclGetErrorString(id_rc)) : std::string()));
  }

  auto state = std::make_shared<NcclState>();
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // bounded init and launches (ncclInProgress + ncclCommGetAsyncError)
  WAVEEP_NCCL_RETURN_IF_ERROR(ncclCommInitRankConfig(&state->comm, n, ids[0].id, me, &config));
  Status init = WaitNotInProgress(state->comm, timeout, "ncclCommInitRank");
  if (!init.ok()) {
    state->Abort(init);
    return init;
  }
  std::vector<int> node_ids(n);
  for (int p = 0; p < n; ++p) node_ids[p] = all[p].node_id;
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(std::move(host), std::move(state), info.device, std::move(node_ids), timeout));
}

}  // namespace waveep::comm::internal
