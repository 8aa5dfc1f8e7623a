// Copyright 2026 The waveep Authors.
//
// CUDA pieces shared by the comm/ backends: the device-pointer check (comm_internal.h) and the CUDA StreamGate of the
// proxy thread (device_proxy_internal.h). Host code against the CUDA runtime headers; cuda.h is included for the
// driver's types only: cuStreamWaitValue32 is looked up through cudaGetDriverEntryPointByVersion, so the binary does
// not link libcuda and still starts on a machine without a driver.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/comm_internal.h"
#include "comm/cuda_status_internal.h"
#include "comm/device_proxy_internal.h"

namespace waveep::comm::internal {
namespace {

// Makes `device` current on the calling thread once (the proxy's thread starts on device 0).
void BindThreadToDevice(int device) {
  thread_local int bound = -1;
  if (bound == device) return;
  if (cudaSetDevice(device) == cudaSuccess) {
    bound = device;
  } else {
    cudaGetLastError();  // the next CUDA call reports the real problem
  }
}

using WaitValue32Fn = CUresult(CUDAAPI*)(CUstream stream, CUdeviceptr addr, cuuint32_t value, unsigned int flags);

// Release flags: one 32-bit slot per job sequence number modulo kRingSlots. NOTES: slot reuse is safe because a job
// waits for "slot >= its sequence" (cyclic, CU_STREAM_WAIT_VALUE_GEQ) and the proxy releases in sequence order, so a
// slot only ever grows; more than kRingSlots jobs in flight only delay a release, never skip one.
constexpr uint32_t kRingSlots = 4096;

// The ring of one gate, in host-mapped pinned memory. Never freed: a GPU stream may still be spinning on a slot when
// its communicator goes away (the slot was released, but the stream may not have looked yet), so rings are pooled per
// device and a new gate continues the sequence where the previous owner stopped.
struct FlagRing {
  int device = 0;
  uint32_t* host = nullptr;  // kRingSlots + 1 words; the last one is for the capability probe
  CUdeviceptr dev = 0;
  uint32_t next_seq = 1;  // slots start at 0: sequence 1 is the first that waits
};

std::mutex g_ring_mu;
std::map<int, std::vector<FlagRing*>> g_free_rings;  // by device

StatusOr<FlagRing*> AcquireRing(int device) {
  {
    std::lock_guard<std::mutex> lock(g_ring_mu);
    std::vector<FlagRing*>& free = g_free_rings[device];
    if (!free.empty()) {
      FlagRing* r = free.back();
      free.pop_back();
      return r;
    }
  }
  auto ring = std::make_unique<FlagRing>();
  ring->device = device;
  void* host = nullptr;
  WAVEEP_CUDA_RETURN_IF_ERROR(
      cudaHostAlloc(&host, (kRingSlots + 1) * sizeof(uint32_t), cudaHostAllocMapped | cudaHostAllocPortable));
  std::memset(host, 0, (kRingSlots + 1) * sizeof(uint32_t));
  void* dev = nullptr;
  const cudaError_t rc = cudaHostGetDevicePointer(&dev, host, 0);
  if (rc != cudaSuccess) cudaFreeHost(host);
  WAVEEP_CUDA_RETURN_IF_ERROR(rc);
  ring->host = static_cast<uint32_t*>(host);
  ring->dev = reinterpret_cast<CUdeviceptr>(dev);
  return ring.release();
}

void ReturnRing(FlagRing* ring) {
  std::lock_guard<std::mutex> lock(g_ring_mu);
  g_free_rings[ring->device].push_back(ring);
}

StatusOr<WaitValue32Fn> LoadWaitValue32() {
  static const StatusOr<WaitValue32Fn> fn = []() -> StatusOr<WaitValue32Fn> {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t rc = cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &p, 12000, cudaEnableDefault, &q);
    if (rc != cudaSuccess || q != cudaDriverEntryPointSuccess || p == nullptr) {
      cudaGetLastError();
      return absl::UnavailableError(absl::StrCat(
          "the CUDA driver does not provide cuStreamWaitValue32 (cudaGetDriverEntryPointByVersion: ",
          cudaGetErrorString(rc), ", query result ", static_cast<int>(q),
          "); GPU exchanges need stream memory operations to release streams without blocking host functions"));
    }
    return reinterpret_cast<WaitValue32Fn>(p);
  }();
  return fn;
}

// Checks, once per device, that a stream can wait on a host-mapped flag: a real wait on an already-set word, on a
// private stream, bounded by a short deadline.
Status ProbeStreamMemOps(int device, FlagRing& ring, WaitValue32Fn wait) {
  int can_map = 0;
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&can_map, cudaDevAttrCanMapHostMemory, device));
  if (!can_map) {
    return absl::UnavailableError(absl::StrCat("CUDA device ", device,
                                               " cannot map host memory (needed for the "
                                               "release flags of GPU exchanges)"));
  }
  cudaStream_t s = nullptr;
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  uint32_t* probe = ring.host + kRingSlots;
  __atomic_store_n(probe, 1u, __ATOMIC_SEQ_CST);
  const CUresult cr =
      wait(reinterpret_cast<CUstream>(s), ring.dev + kRingSlots * sizeof(uint32_t), 1, CU_STREAM_WAIT_VALUE_GEQ);
  Status st;
  if (cr != CUDA_SUCCESS) {
    st = absl::UnavailableError(absl::StrCat("cuStreamWaitValue32 on CUDA device ", device, " failed with CUresult ",
                                             static_cast<int>(cr),
                                             " (stream memory operations unsupported or disabled?)"));
  } else {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      const cudaError_t q = cudaStreamQuery(s);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) {
        st = ::waveep::internal::MakeForeignError(absl::StatusCode::kUnavailable, "CUDA",
                                                  "cudaStreamQuery(probe of cuStreamWaitValue32)", __FILE__, __LINE__,
                                                  cudaGetErrorString(q));
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        st = absl::UnavailableError(absl::StrCat("cuStreamWaitValue32 on CUDA device ", device,
                                                 " did not see a host-mapped flag that is already set within 10s"));
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }
  cudaGetLastError();
  if (st.ok()) cudaStreamDestroy(s);  // NOTES: a stream stuck in the probe is leaked rather than destroyed
  return st;
}

class CudaStreamGate final : public StreamGate {
 public:
  CudaStreamGate(int device, FlagRing* ring, WaitValue32Fn wait) : device_(device), ring_(ring), wait_(wait) {}
  ~CudaStreamGate() override {
    for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
    ReturnRing(ring_);  // every job was released (DeviceProxy destroys the gate after its thread ended)
  }

  StatusOr<Armed> Arm(Stream& stream, absl::Duration /*timeout*/) override {
    if (stream.native() == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("CUDA stream gate: stream '", stream.name(), "' is not a CUDA stream"));
    }
    if (stream.device().ordinal != device_) {
      return absl::InvalidArgumentError(absl::StrCat("stream '", stream.name(), "' is on CUDA device ",
                                                     stream.device().ordinal,
                                                     " but this communicator's exchanges use "
                                                     "device ",
                                                     device_, " (one device per rank)"));
    }
    auto s = static_cast<cudaStream_t>(stream.native());
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    WAVEEP_ASSIGN_OR_RETURN(cudaEvent_t start, TakeEvent());
    cudaError_t rc = cudaEventRecord(start, s);
    if (rc != cudaSuccess) {
      cudaEventDestroy(start);
      WAVEEP_CUDA_RETURN_IF_ERROR(rc);
    }
    const uint32_t seq = ring_->next_seq;
    const uint32_t slot = seq % kRingSlots;
    const CUresult cr =
        wait_(reinterpret_cast<CUstream>(s), ring_->dev + slot * sizeof(uint32_t), seq, CU_STREAM_WAIT_VALUE_GEQ);
    if (cr != CUDA_SUCCESS) {
      // The recorded start event holds nothing back: recycle it once the stream passed it, i.e. destroy it.
      cudaEventDestroy(start);
      return absl::InternalError(absl::StrCat("cuStreamWaitValue32 on stream '", stream.name(),
                                              "' failed with CUresult ", static_cast<int>(cr)));
    }
    ++ring_->next_seq;
    auto started = std::make_shared<bool>(false);
    Armed armed;
    armed.ready = [start, started, device = device_]() -> StatusOr<bool> {
      BindThreadToDevice(device);  // the proxy thread's current device is 0 until set
      const cudaError_t q = cudaEventQuery(start);
      if (q == cudaErrorNotReady) return false;
      WAVEEP_CUDA_RETURN_IF_ERROR(q);
      *started = true;
      return true;
    };
    armed.release = [this, start, started, seq, slot]() {
      BindThreadToDevice(device_);
      // NOTES: the job's copies completed before this (the job waited for their events), and its Status is stored.
      __atomic_store_n(ring_->host + slot, seq, __ATOMIC_SEQ_CST);
      if (*started) {
        GiveEvent(start);
      } else {
        cudaEventDestroy(start);  // its record may still be pending on the stream: never reuse it
      }
    };
    return armed;
  }

 private:
  StatusOr<cudaEvent_t> TakeEvent() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_events_.empty()) {
        cudaEvent_t e = free_events_.back();
        free_events_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }
  void GiveEvent(cudaEvent_t e) {
    std::lock_guard<std::mutex> lock(mu_);
    free_events_.push_back(e);
  }

  const int device_;
  FlagRing* const ring_;  // next_seq: only under DeviceProxy's issue lock (Arm); slots: stored by the proxy thread
  const WaitValue32Fn wait_;
  std::mutex mu_;
  std::vector<cudaEvent_t> free_events_;
};

}  // namespace

bool IsDevicePointer(const void* p, int* device) {
  if (p == nullptr || CudaDeviceCount() == 0) return false;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // not a CUDA pointer on older runtimes: clear the sticky error
    return false;
  }
  if (attr.type != cudaMemoryTypeDevice) return false;
  *device = attr.device;
  return true;
}

StatusOr<std::unique_ptr<StreamGate>> NewCudaStreamGate(int device) {
  const int n = CudaDeviceCount();
  if (n == 0) return absl::UnavailableError("CUDA stream gate: no CUDA device is visible");
  if (device < 0 || device >= n) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA stream gate: device ", device, " out of range (", n, ")"));
  }
  WAVEEP_ASSIGN_OR_RETURN(WaitValue32Fn wait, LoadWaitValue32());
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  WAVEEP_ASSIGN_OR_RETURN(FlagRing * ring, AcquireRing(device));
  // Once per device and process: the result cannot change.
  static std::mutex probe_mu;
  static std::map<int, Status> probed;
  Status probe;
  {
    std::lock_guard<std::mutex> lock(probe_mu);
    auto it = probed.find(device);
    if (it == probed.end()) it = probed.emplace(device, ProbeStreamMemOps(device, *ring, wait)).first;
    probe = it->second;
  }
  if (!probe.ok()) {
    ReturnRing(ring);
    return probe;
  }
  return std::unique_ptr<StreamGate>(new CudaStreamGate(device, ring, wait));
}

}  // namespace waveep::comm::internal
