// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "comm/comm.h"
//
// comm/device_proxy_internal.h — the progress ("proxy") thread that drives host-side work of GPU exchanges without
// ever blocking inside a CUDA host function (CUDA forbids host functions that wait on other CUDA work, and one
// blocked host function stalls every stream's host functions behind it). The pattern of NCCL's proxy thread and the
// CPU-proxy EP designs:
//
//   user stream:  ... producer ... [start marker] [wait: released?] [report status] ... consumer ...
//   proxy thread:        polls start marker -> runs the job (D2H, network, H2D) -> stores the Status -> release
//
//   auto proxy = std::make_unique<DeviceProxy>("mpi", std::move(gate));   // one per communicator
//   WAVEEP_RETURN_IF_ERROR(proxy->Enqueue(stream, "alltoallv 'dispatch(0)'", timeout, [=] { return Exchange(); }));
//   // the job's Status becomes the stream's sticky error; work enqueued on `stream` afterwards sees its results
//
// The state machine is plain C++ and runs on the CPU; the GPU-specific half (where a job starts on a stream, how the
// stream is released) sits behind StreamGate. On CUDA (NewCudaStreamGate, cuda_util.cc) the start marker is an event
// recorded on the user's stream and polled with cudaEventQuery, and the release is a host-mapped flag that the
// stream waits on with cuStreamWaitValue32 (a stream memory operation, not a host function) and that the proxy
// stores once the job's copies completed. Tests plug in a fake gate on CPU streams.
//
// Contract:
// - Jobs run one at a time on the proxy's thread, in submission order (FIFO). Exchanges that must run in issue order
//   on every rank (cuda_ipc's shared arena, MPI tag matching) get that order for free; since CUDA binds every
//   cross-stream dependency when it is issued, a job's start never depends on a job submitted after it.
// - Every wait is bounded: the proxy waits at most the job's timeout for its start marker (then the job fails with
//   DeadlineExceeded naming it and saying the stream never reached it, and does not run); `run` bounds itself.
// - Whatever happens (success, error, timeout, shutdown), a job's Status is stored *before* its release action runs,
//   and the release runs exactly once. So a stream released by the proxy always finds the job's final Status.
// - Destruction (or Shutdown) finishes the running job, fails every queued job with Cancelled (naming it), releases
//   each, and joins the thread.
#ifndef WAVEEP_COMM_DEVICE_PROXY_INTERNAL_H_
#define WAVEEP_COMM_DEVICE_PROXY_INTERNAL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {

// The outcome of one proxy job, shared by the proxy thread, the stream's report task and host threads that wait.
// Thread-safe.
class ProxyTicket {
 public:
  explicit ProxyTicket(std::string what) : what_(std::move(what)) {}

  const std::string& what() const { return what_; }
  // Non-blocking.
  bool done() const;
  // The job's Status once done(); FailedPrecondition before (a report task that runs early is a bug, not a hang).
  Status status() const;
  // Blocks the calling host thread (never a CUDA host function) until the job finished, at most `timeout`. On expiry
  // a job that has not started is cancelled (it will not run) and DeadlineExceeded names it; a job already running
  // bounds itself, so the wait continues for up to `run_grace` more before giving up.
  Status Wait(absl::Duration timeout, absl::Duration run_grace);

 private:
  friend class DeviceProxy;
  enum class State { kQueued, kRunning, kDone };
  // Proxy side. Start() returns false when the job was cancelled while queued.
  bool Start();
  void Finish(Status s);

  const std::string what_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kQueued;
  bool cancelled_ = false;
  Status status_;
};

// One unit of proxy work.
struct ProxyJob {
  std::string what;  // names the job in errors, e.g. "alltoallv 'dispatch(0)'"
  // Bound on the wait for `ready` (from when the proxy starts waiting for this job, i.e. after the jobs before it).
  absl::Duration timeout = absl::ZeroDuration();
  // Polled on the proxy thread until true; an error fails the job. Null: ready at once (host-submitted jobs).
  std::function<StatusOr<bool>()> ready;
  // The work, on the proxy thread (may call CUDA and MPI, may block; must bound its own waits). Null: nothing to do.
  std::function<Status()> run;
  // Runs exactly once, on the proxy thread, after the job's Status is stored, whatever that Status is. Null: none.
  std::function<void()> release;
};

// The GPU-specific half of the proxy: ties a job to a user's stream.
class StreamGate {
 public:
  struct Armed {
    std::function<StatusOr<bool>()> ready;  // true once `stream` reached the point where Arm was called
    std::function<void()> release;          // lets work enqueued on `stream` after Arm proceed
  };
  virtual ~StreamGate() = default;
  // Called by DeviceProxy::Enqueue on the issuing thread, under the proxy's issue lock, so in job order: marks where
  // the job starts on `stream` and makes work enqueued on `stream` afterwards wait until `release` ran. Releases are
  // called in the same order as Arm. Must not block. `timeout` is the job's; a gate whose hold blocks a thread (the
  // host gate) bounds the hold by it. On error nothing is left enqueued on `stream` that could hold it.
  virtual StatusOr<Armed> Arm(Stream& stream, absl::Duration timeout) = 0;
};

// The gate for CPU streams: a task on the stream marks the start and then holds the stream's thread (CPU stream tasks
// may block) until the release, at most 3 x the job's timeout + 1 s (then the stream fails with DeadlineExceeded and
// goes on; the job may still run later). Never fails to arm a CPU stream; FailedPrecondition for a CUDA stream.
std::unique_ptr<StreamGate> NewHostStreamGate();

// One progress thread and its FIFO of jobs. Owned by a communicator. Thread-safe.
class DeviceProxy {
 public:
  // `name` appears in errors ("mpi proxy"). Jobs on CUDA streams (native() != nullptr) are armed by `device_gate`
  // (may be null: then they fail with FailedPrecondition), jobs on CPU streams by `host_gate` (tests plug fakes in).
  DeviceProxy(std::string name, std::unique_ptr<StreamGate> device_gate,
              std::unique_ptr<StreamGate> host_gate = NewHostStreamGate());
  // Shutdown(), then joins.
  ~DeviceProxy();
  DeviceProxy(const DeviceProxy&) = delete;
  DeviceProxy& operator=(const DeviceProxy&) = delete;

  // Queues `job` behind the jobs already queued. Non-blocking. FailedPrecondition after Shutdown (the job is neither
  // run nor released then).
  StatusOr<std::shared_ptr<ProxyTicket>> Submit(ProxyJob job);

  // Stream-ordered job: arms the gate on `stream` (the job starts once the stream reached this point, and work
  // enqueued on `stream` afterwards waits for the job's release), queues the job, and enqueues on `stream` a host
  // task that returns the job's Status (the stream's sticky error on failure; it never blocks: the job finished
  // before the release let the stream get there). `timeout` bounds the wait for the stream to reach the job.
  // Non-blocking. Errors: FailedPrecondition without a gate for the stream's kind or after Shutdown, the gate's errors;
  // if the report task
  // cannot be enqueued the job is failed without running (and still released) and that error is returned.
  Status Enqueue(Stream& stream, std::string what, absl::Duration timeout, std::function<Status()> run);

  // Stops accepting jobs, lets the running job finish, fails the queued ones with Cancelled and releases them. Blocks
  // until the thread exited. Idempotent.
  void Shutdown();

  // Jobs finished so far (any Status), counted after the job's Status is stored and its release ran: a caller that
  // saw a ticket finish may still read the count one lower for a moment. For tests and diagnostics.
  uint64_t jobs_finished() const;

 private:
  struct Item {
    ProxyJob job;
    std::shared_ptr<ProxyTicket> ticket;
  };
  void Loop();
  // Waits for `item`'s ready predicate; returns OK when ready.
  Status WaitReady(Item& item);
  void Complete(Item& item, Status s);

  const std::string name_;
  const std::unique_ptr<StreamGate> device_gate_;
  const std::unique_ptr<StreamGate> host_gate_;
  std::mutex issue_mu_;  // keeps Arm order and queue order together
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  uint64_t finished_ = 0;
  std::thread thread_;  // last: starts once everything above exists
};

// The CUDA gate for streams of `device`: start markers are events recorded on the user's stream, releases a
// cuStreamWaitValue32 on a ring of host-mapped flags (no host function waits). Unavailable without CUDA, without a
// device, when the driver lacks cuStreamWaitValue32 (found through cudaGetDriverEntryPointByVersion, so binaries
// still start without a driver) or when the device cannot map host memory or run stream memory operations. Checked
// once, with a real wait on a private stream. (cuda_util.cc; cuda_util_stub.cc without CUDA.)
StatusOr<std::unique_ptr<StreamGate>> NewCudaStreamGate(int device);

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_DEVICE_PROXY_INTERNAL_H_
