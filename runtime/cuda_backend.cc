// Copyright 2026 The waveep Authors.
//
// CUDA Stream/Event/memory over the CUDA runtime API. Host code only (compiled by the C++ compiler against the
// CUDA headers); kernels live in kernels/. Without a driver or GPU, cudaGetDeviceCount fails and every factory
// returns Unavailable, so a CUDA build still runs CPU-only.
#include <cuda_runtime_api.h>

#include <chrono>
#include <mutex>
#include <thread>

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

class CudaEvent final : public Event {
 public:
  CudaEvent(std::string name, cudaEvent_t ev) : name_(std::move(name)), ev_(ev) {}
  ~CudaEvent() override { cudaEventDestroy(ev_); }
  absl::string_view name() const override { return name_; }
  cudaEvent_t native() const { return ev_; }

  Status Synchronize(absl::Duration timeout) override {
    auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    for (;;) {
      cudaError_t rc = cudaEventQuery(ev_);
      if (rc == cudaSuccess) return absl::OkStatus();
      if (rc != cudaErrorNotReady) WAVEEP_CUDA_RETURN_IF_ERROR(rc);
      if (std::chrono::steady_clock::now() > deadline)
        return absl::DeadlineExceededError(absl::StrCat(DiagnosticPrefix(), ": host timed out after ",
                                                        absl::FormatDuration(timeout), " waiting for CUDA event '",
                                                        name_, "'"));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  bool Query() const override { return cudaEventQuery(ev_) == cudaSuccess; }
  StatusOr<double> CompletionTimeUs() const override {
    return absl::UnimplementedError("CUDA events have no absolute timestamps; use elapsed time between two events");
  }

 private:
  std::string name_;
  cudaEvent_t ev_;
};

class CudaStream final : public Stream {
 public:
  CudaStream(StreamOptions opts, Device device, cudaStream_t s) : opts_(std::move(opts)), device_(device), s_(s) {}
  ~CudaStream() override {
    cudaStreamSynchronize(s_);
    cudaStreamDestroy(s_);
  }
  absl::string_view name() const override { return opts_.name; }
  Device device() const override { return device_; }
  StreamHandle native() const override { return s_; }

  Status Enqueue(std::function<Status()> task) override {
    auto* heap = new HostTask{this, std::move(task)};
    cudaError_t rc = cudaLaunchHostFunc(s_, &CudaStream::RunHostTask, heap);
    if (rc != cudaSuccess) delete heap;
    WAVEEP_CUDA_RETURN_IF_ERROR(rc);
    return absl::OkStatus();
  }
  Status Record(Event& event) override {
    auto* ev = dynamic_cast<CudaEvent*>(&event);
    if (ev == nullptr) return absl::InvalidArgumentError("Stream::Record: event is not a CUDA event");
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventRecord(ev->native(), s_));
    return absl::OkStatus();
  }
  Status Wait(Event& event) override {
    auto* ev = dynamic_cast<CudaEvent*>(&event);
    if (ev == nullptr) return absl::InvalidArgumentError("Stream::Wait: event is not a CUDA event");
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s_, ev->native(), 0));
    return absl::OkStatus();
  }
  Status Synchronize(absl::Duration timeout) override {
    auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    for (;;) {
      cudaError_t rc = cudaStreamQuery(s_);
      if (rc == cudaSuccess) break;
      if (rc != cudaErrorNotReady) WAVEEP_CUDA_RETURN_IF_ERROR(rc);
      if (std::chrono::steady_clock::now() > deadline)
        return absl::DeadlineExceededError(absl::StrCat(DiagnosticPrefix(), ": CUDA stream '", opts_.name,
                                                        "' did not drain within ", absl::FormatDuration(timeout)));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    return status();
  }
  Status status() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  struct HostTask {
    CudaStream* stream;
    std::function<Status()> fn;
  };
  static void RunHostTask(void* p) {
    std::unique_ptr<HostTask> t(static_cast<HostTask*>(p));
    {
      std::lock_guard<std::mutex> lock(t->stream->mu_);
      if (!t->stream->error_.ok()) return;  // sticky: skip work after an error
    }
    Status s = t->fn();
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(t->stream->mu_);
      if (t->stream->error_.ok()) t->stream->error_ = s;
    }
  }

  StreamOptions opts_;
  Device device_;
  cudaStream_t s_;
  mutable std::mutex mu_;
  Status error_;
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
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventCreate(&ev));
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
