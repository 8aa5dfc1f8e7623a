// Copyright 2026 The waveep Authors.
//
// CUDA Stream/Event/memory over the CUDA runtime API. Host code only (compiled by the C++ compiler against the
// CUDA headers); kernels live in kernels/. Without a driver or GPU, cudaGetDeviceCount fails and every factory
// returns Unavailable, so a CUDA build still runs CPU-only.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "runtime/buffer.h"
#include "runtime/stream_internal.h"

// WAVEEP_CUDA_RETURN_IF_ERROR comes from runtime/status.h.

namespace waveep {
namespace internal {
namespace {

Status CheckDevice(Device device) {
  int n = CudaDeviceCount();
  if (n == 0) return absl::UnavailableError("no CUDA device is visible to this process");
  if (device.ordinal < 0 || device.ordinal >= n)
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device.ordinal, " out of range (", n, " visible)"));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(device.ordinal));
  return absl::OkStatus();
}

// A stream's sticky error, shared with its host functions and with the events recorded on it (which may outlive the
// stream). Tasks are numbered in stream order; `error_task` is the number of the task that failed first, so the
// error "as of" a point of the stream is known exactly without running anything there.
struct StreamState {
  explicit StreamState(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::mutex mu;
  Status error;
  uint64_t error_task = 0;      // 0: no error yet
  uint64_t tasks_enqueued = 0;  // host tasks (Enqueue and wait propagation) issued so far
};

// Where an event was last recorded: a stream and how many of its tasks precede the record.
struct RecordPoint {
  std::shared_ptr<StreamState> stream;  // null: never recorded
  uint64_t upto = 0;

  // The recording stream's sticky error as of the record. Exact once the record completed: every task before it ran.
  Status ErrorAtRecord() const {
    if (stream == nullptr) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(stream->mu);
    if (stream->error_task != 0 && stream->error_task <= upto) return stream->error;
    return absl::OkStatus();
  }
  std::string Where() const {
    return stream == nullptr ? std::string("never recorded") : absl::StrCat("recorded on stream '", stream->name, "'");
  }
};

// The cudaEvent_t and its last record, shared by the Event and by the streams that wait on it (for diagnostics), so
// that a wait never names a destroyed event. Destroyed on a host thread (never inside a host function: those hold
// RecordPoints only).
struct EventCore {
  EventCore(std::string n, cudaEvent_t e) : name(std::move(n)), ev(e) {}
  ~EventCore() { cudaEventDestroy(ev); }
  const std::string name;
  const cudaEvent_t ev;
  std::mutex mu;
  RecordPoint last;

  RecordPoint Last() {
    std::lock_guard<std::mutex> lock(mu);
    return last;
  }
};

std::string Prefixed(absl::string_view msg) {
  std::string prefix = DiagnosticPrefix();
  return absl::StrCat(prefix, prefix.empty() ? "" : ": ", msg);
}

class CudaEvent final : public Event {
 public:
  CudaEvent(std::string name, cudaEvent_t ev) : core_(std::make_shared<EventCore>(std::move(name), ev)) {}
  absl::string_view name() const override { return core_->name; }
  const std::shared_ptr<EventCore>& core() const { return core_; }

  // Waits for the latest record, then returns the recording stream's sticky error as of that record (the CPU
  // contract: an event recorded after an error completes *with* it).
  Status Synchronize(absl::Duration timeout) override {
    const RecordPoint rec = core_->Last();
    auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    for (;;) {
      cudaError_t rc = cudaEventQuery(core_->ev);
      if (rc == cudaSuccess) return rec.ErrorAtRecord();
      if (rc != cudaErrorNotReady) WAVEEP_CUDA_RETURN_IF_ERROR(rc);
      if (std::chrono::steady_clock::now() > deadline)
        return absl::DeadlineExceededError(
            Prefixed(absl::StrCat("host timed out after ", absl::FormatDuration(timeout), " waiting for CUDA event '",
                                  core_->name, "' (", rec.Where(), ")")));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  bool Query() const override { return cudaEventQuery(core_->ev) == cudaSuccess; }
  StatusOr<double> CompletionTimeUs() const override {
    return absl::UnimplementedError("CUDA events have no absolute timestamps; use elapsed time between two events");
  }

 private:
  std::shared_ptr<EventCore> core_;
};

class CudaStream final : public Stream {
 public:
  CudaStream(StreamOptions opts, Device device, cudaStream_t s)
      : opts_(std::move(opts)), device_(device), s_(s), state_(std::make_shared<StreamState>(opts_.name)) {}
  // Waits for the stream's work, bounded (a stream stuck on a flag nobody will release must not hang the process
  // after the error that got us here was reported): after the stream's timeout it says so on stderr and destroys the
  // stream anyway (CUDA frees it once its work completed).
  ~CudaStream() override {
    const absl::Duration limit = opts_.timeout > absl::ZeroDuration() ? opts_.timeout : DefaultTimeout();
    const Status drained = Synchronize(limit);
    if (cudaStreamQuery(s_) == cudaErrorNotReady) {
      std::fprintf(stderr, "waveep: destroying CUDA stream '%s' with work still queued: %s\n", opts_.name.c_str(),
                   std::string(drained.message()).c_str());
    }
    cudaGetLastError();
    cudaStreamDestroy(s_);
  }
  absl::string_view name() const override { return opts_.name; }
  Device device() const override { return device_; }
  StreamHandle native() const override { return s_; }

  Status Enqueue(std::function<Status()> task) override {
    if (!task) return absl::InvalidArgumentError("Stream::Enqueue: empty task");
    std::lock_guard<std::mutex> issue(issue_mu_);
    return LaunchTask(std::move(task));
  }
  // The record point is the number of tasks issued before it: Event::Synchronize reports the error of those only.
  Status Record(Event& event) override {
    auto* ev = dynamic_cast<CudaEvent*>(&event);
    if (ev == nullptr) return absl::InvalidArgumentError("Stream::Record: event is not a CUDA event");
    std::lock_guard<std::mutex> issue(issue_mu_);
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev->core()->ev, s_));
    RecordPoint rec{state_, 0};
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      rec.upto = state_->tasks_enqueued;
    }
    std::lock_guard<std::mutex> lock(ev->core()->mu);
    ev->core()->last = std::move(rec);
    return absl::OkStatus();
  }
  // cudaStreamWaitEvent, then a non-blocking host function that copies the recording stream's error as of the record
  // into this stream (so an error on one stream fails the other, as on CPU streams). The event is remembered so that
  // a Synchronize that times out can name it.
  Status Wait(Event& event) override {
    auto* ev = dynamic_cast<CudaEvent*>(&event);
    if (ev == nullptr) return absl::InvalidArgumentError("Stream::Wait: event is not a CUDA event");
    std::lock_guard<std::mutex> issue(issue_mu_);
    const RecordPoint rec = ev->core()->Last();
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s_, ev->core()->ev, 0));
    if (rec.stream == nullptr) return absl::OkStatus();  // never recorded: completes at once, carries nothing
    WAVEEP_RETURN_IF_ERROR(LaunchTask([rec]() { return rec.ErrorAtRecord(); }));
    // Forget waits that completed; keep a bounded list for diagnostics.
    while (!waits_.empty() && (waits_.size() >= kMaxWaits || cudaEventQuery(waits_.front()->ev) == cudaSuccess)) {
      waits_.pop_front();
    }
    cudaGetLastError();
    waits_.push_back(ev->core());
    return absl::OkStatus();
  }
  Status Synchronize(absl::Duration timeout) override {
    auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    for (;;) {
      cudaError_t rc = cudaStreamQuery(s_);
      if (rc == cudaSuccess) break;
      if (rc != cudaErrorNotReady) WAVEEP_CUDA_RETURN_IF_ERROR(rc);
      if (std::chrono::steady_clock::now() > deadline)
        return absl::DeadlineExceededError(
            Prefixed(absl::StrCat("stream '", opts_.name, "' did not drain within ", absl::FormatDuration(timeout),
                                  ": ", DescribeBlocker())));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    return status();
  }
  Status status() const override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->error;
  }

 private:
  static constexpr size_t kMaxWaits = 64;

  struct HostTask {
    std::shared_ptr<StreamState> state;
    uint64_t seq;
    std::function<Status()> fn;
  };
  // Never calls CUDA: host functions must not.
  static void RunHostTask(void* p) {
    std::unique_ptr<HostTask> t(static_cast<HostTask*>(p));
    {
      std::lock_guard<std::mutex> lock(t->state->mu);
      if (!t->state->error.ok()) return;  // sticky: skip work after an error
    }
    Status s = t->fn();
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(t->state->mu);
      if (t->state->error.ok()) {
        t->state->error = std::move(s);
        t->state->error_task = t->seq;
      }
    }
  }

  // Requires issue_mu_ (task numbers follow the stream's order).
  Status LaunchTask(std::function<Status()> fn) {
    uint64_t seq = 0;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      seq = state_->tasks_enqueued + 1;
    }
    auto* heap = new HostTask{state_, seq, std::move(fn)};
    cudaError_t rc = cudaLaunchHostFunc(s_, &CudaStream::RunHostTask, heap);
    if (rc != cudaSuccess) delete heap;
    WAVEEP_CUDA_RETURN_IF_ERROR(rc);
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->tasks_enqueued = seq;
    return absl::OkStatus();
  }

  // What a stream that does not drain is stuck on: the oldest event it waits on that has not completed.
  std::string DescribeBlocker() {
    std::lock_guard<std::mutex> issue(issue_mu_);
    for (const std::shared_ptr<EventCore>& core : waits_) {
      if (cudaEventQuery(core->ev) != cudaErrorNotReady) continue;
      return absl::StrCat("still waiting on event '", core->name, "' (", core->Last().Where(), ")");
    }
    cudaGetLastError();
    return "no event it waits on is pending (a kernel, copy or host task on it is still running)";
  }

  StreamOptions opts_;
  Device device_;
  cudaStream_t s_;
  const std::shared_ptr<StreamState> state_;
  std::mutex issue_mu_;  // keeps task numbers, records and waits in stream order; guards waits_
  std::deque<std::shared_ptr<EventCore>> waits_;
};

}  // namespace

StatusOr<std::unique_ptr<Stream>> NewCudaStream(Device device, StreamOptions options) {
  WAVEEP_RETURN_IF_ERROR(CheckDevice(device));
  cudaStream_t s = nullptr;
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return std::unique_ptr<Stream>(new CudaStream(std::move(options), device, s));
}

StatusOr<std::unique_ptr<Event>> NewCudaEvent(Device device, std::string name) {
  WAVEEP_RETURN_IF_ERROR(CheckDevice(device));
  cudaEvent_t ev = nullptr;
  // Events order streams and mark completion; nothing times them (CompletionTimeUs is Unimplemented), and events
  // without timing are cheaper to record and wait on.
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  return std::unique_ptr<Event>(new CudaEvent(std::move(name), ev));
}

StatusOr<void*> CudaAlloc(Device device, size_t bytes, bool pinned) {
  void* p = nullptr;
  if (pinned) {
    if (CudaDeviceCount() == 0) return absl::UnavailableError("pinned host memory needs a CUDA device");
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaMallocHost(&p, bytes));
    return p;
  }
  WAVEEP_RETURN_IF_ERROR(CheckDevice(device));
  cudaError_t rc = cudaMalloc(&p, bytes);
  if (rc == cudaErrorMemoryAllocation)
    return absl::ResourceExhaustedError(
        absl::StrCat("cudaMalloc of ", bytes, " bytes on ", device.ToString(), " failed: out of device memory"));
  WAVEEP_CUDA_RETURN_IF_ERROR(rc);
  return p;
}

void CudaFree(void* p, bool pinned) {
  if (pinned) {
    cudaFreeHost(p);
  } else {
    cudaFree(p);
  }
}

}  // namespace internal

int CudaDeviceCount() {
  static const int count = [] {
    // Before the first CUDA call of the process (every CUDA path asks for the device count first). Each stream is
    // mapped onto one of CUDA_DEVICE_MAX_CONNECTIONS hardware queues (8 by default), and streams sharing a queue run
    // its work in one FIFO: a comm stream that waits on the device proxy's release flag (cuStreamWaitValue32) would
    // hold up the proxy's own copy streams behind it until the timeout. A rank creates several streams
    // (docs/gpu.md); 32 queues keep them apart. A value the user set wins.
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", /*overwrite=*/0);
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no driver" error
      return 0;
    }
    return n;
  }();
  return count;
}

bool BuiltWithCuda() { return true; }

}  // namespace waveep
