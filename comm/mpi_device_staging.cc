// Copyright 2026 The waveep Authors.
//
// Device-memory exchanges of the "mpi" backend through pinned host staging chunks (design in
// mpi_device_staging_internal.h). Host code compiled by the C++ compiler against the CUDA headers; no kernels: every
// copy is a cudaMemcpyAsync on a copy engine.
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
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
#include "comm/mpi_device_staging_internal.h"

namespace waveep::comm::internal {
namespace {

using Clock = std::chrono::steady_clock;

// Pinned chunk slots, private copy streams and events for one exchange at a time. Pooled per process: pinned
// allocation and stream creation cost milliseconds, far more than an exchange.
struct StagingSet {
  int device = 0;
  size_t chunk_bytes = 0;
  int slots = 0;
  char* send_pinned = nullptr;  // slots * chunk_bytes
  char* recv_pinned = nullptr;
  cudaStream_t d2h = nullptr;
  cudaStream_t h2d = nullptr;
  std::vector<cudaEvent_t> send_done;  // D2H of a send slot finished
  std::vector<cudaEvent_t> recv_done;  // H2D of a receive slot finished
  cudaEvent_t self_done = nullptr;

  ~StagingSet() {
    // Best effort: the driver may already be shutting down at process exit.
    for (cudaEvent_t e : send_done) cudaEventDestroy(e);
    for (cudaEvent_t e : recv_done) cudaEventDestroy(e);
    if (self_done != nullptr) cudaEventDestroy(self_done);
    if (d2h != nullptr) cudaStreamDestroy(d2h);
    if (h2d != nullptr) cudaStreamDestroy(h2d);
    if (send_pinned != nullptr) cudaFreeHost(send_pinned);
    if (recv_pinned != nullptr) cudaFreeHost(recv_pinned);
  }
};

StatusOr<std::unique_ptr<StagingSet>> NewStagingSet(int device, size_t chunk_bytes, int slots) {
  auto set = std::make_unique<StagingSet>();
  set->device = device;
  set->chunk_bytes = chunk_bytes;
  set->slots = slots;
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&set->send_pinned), chunk_bytes * slots));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&set->recv_pinned), chunk_bytes * slots));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&set->d2h, cudaStreamNonBlocking));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&set->h2d, cudaStreamNonBlocking));
  for (int i = 0; i < 2 * slots + 1; ++i) {
    cudaEvent_t e = nullptr;
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    if (i < slots) {
      set->send_done.push_back(e);
    } else if (i < 2 * slots) {
      set->recv_done.push_back(e);
    } else {
      set->self_done = e;
    }
  }
  return set;
}

std::mutex g_pool_mu;
std::vector<std::unique_ptr<StagingSet>> g_pool;  // idle sets

StatusOr<std::unique_ptr<StagingSet>> AcquireStagingSet(int device, size_t chunk_bytes, int slots) {
  {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    for (auto it = g_pool.begin(); it != g_pool.end(); ++it) {
      if ((*it)->device == device && (*it)->chunk_bytes == chunk_bytes && (*it)->slots == slots) {
        std::unique_ptr<StagingSet> set = std::move(*it);
        g_pool.erase(it);
        return set;
      }
    }
  }
  return NewStagingSet(device, chunk_bytes, slots);
}

void ReleaseStagingSet(std::unique_ptr<StagingSet> set) {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  g_pool.push_back(std::move(set));
}

// Progress of one exchange through the staging pipeline.
class Pipeline {
 public:
  Pipeline(MPI_Comm comm, const StagedPlan& plan, StagingSet& set)
      : comm_(comm),
        plan_(plan),
        set_(set),
        reqs_(plan.messages.size(), MPI_REQUEST_NULL),
        slot_of_(plan.messages.size(), -1),
        done_(plan.messages.size(), false) {
    for (int s = set.slots - 1; s >= 0; --s) {
      free_send_.push_back(s);
      free_recv_.push_back(s);
    }
  }

  // Posts host messages, the self copy, and fills the pipeline.
  Status Start() {
    for (size_t i = 0; i < plan_.messages.size(); ++i) {
      const StagedMessage& m = plan_.messages[i];
      if (m.on_device) {
        (m.is_send ? send_queue_ : recv_queue_).push_back(i);
        continue;
      }
      if (m.is_send) {
        WAVEEP_MPI_RETURN_IF_ERROR(MPI_Isend(m.src, m.bytes, MPI_BYTE, m.peer, plan_.tag, comm_, &reqs_[i]));
      } else {
        WAVEEP_MPI_RETURN_IF_ERROR(MPI_Irecv(m.dst, m.bytes, MPI_BYTE, m.peer, plan_.tag, comm_, &reqs_[i]));
      }
    }
    remaining_ = plan_.messages.size();
    if (plan_.self_bytes > 0) {
      // cudaMemcpyDefault: any mix of device and host (UVA). Queued on h2d, off the D2H path of the first chunks.
      WAVEEP_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(plan_.self_dst, plan_.self_src, plan_.self_bytes, cudaMemcpyDefault, set_.h2d));
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventRecord(set_.self_done, set_.h2d));
      self_pending_ = true;
    }
    return absl::OkStatus();
  }

  bool Finished() const { return remaining_ == 0 && !self_pending_; }

  // One round of polling. *progressed = something moved.
  Status Poll(bool* progressed) {
    *progressed = false;
    // Receives: post into free slots, in plan order.
    while (!recv_queue_.empty() && !free_recv_.empty()) {
      const size_t i = recv_queue_.front();
      recv_queue_.pop_front();
      const int s = free_recv_.back();
      free_recv_.pop_back();
      slot_of_[i] = s;
      const StagedMessage& m = plan_.messages[i];
      WAVEEP_MPI_RETURN_IF_ERROR(MPI_Irecv(RecvSlot(s), m.bytes, MPI_BYTE, m.peer, plan_.tag, comm_, &reqs_[i]));
      *progressed = true;
    }
    // Sends: D2H into free slots, in plan order.
    while (!send_queue_.empty() && !free_send_.empty()) {
      const size_t i = send_queue_.front();
      send_queue_.pop_front();
      const int s = free_send_.back();
      free_send_.pop_back();
      slot_of_[i] = s;
      const StagedMessage& m = plan_.messages[i];
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(SendSlot(s), m.src, m.bytes, cudaMemcpyDeviceToHost, set_.d2h));
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventRecord(set_.send_done[s], set_.d2h));
      copying_sends_.push_back(i);
      *progressed = true;
    }
    // Staged sends whose D2H finished go to MPI, in order (one stream: they finish in order).
    while (!copying_sends_.empty()) {
      const size_t i = copying_sends_.front();
      const cudaError_t rc = cudaEventQuery(set_.send_done[slot_of_[i]]);
      if (rc == cudaErrorNotReady) break;
      WAVEEP_CUDA_RETURN_IF_ERROR(rc);
      copying_sends_.pop_front();
      const StagedMessage& m = plan_.messages[i];
      WAVEEP_MPI_RETURN_IF_ERROR(
          MPI_Isend(SendSlot(slot_of_[i]), m.bytes, MPI_BYTE, m.peer, plan_.tag, comm_, &reqs_[i]));
      *progressed = true;
    }
    // MPI completions.
    const int n = static_cast<int>(reqs_.size());
    if (n > 0) {
      idx_.resize(n);
      st_.resize(n);
      int outcount = 0;
      const int rc = MPI_Testsome(n, reqs_.data(), &outcount, idx_.data(), st_.data());
      if (rc != MPI_SUCCESS) {
        const FailedStatus f = FirstFailedStatus(rc, st_.data(), outcount);
        if (f.k < 0) {
          return absl::InternalError(
              WithPrefix(absl::StrCat(plan_.what, ": MPI_Testsome failed: ", ::waveep::internal::MpiErrorString(rc))));
        }
        const StagedMessage& m = plan_.messages[idx_[f.k]];
        return Status(f.truncated ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kInternal,
                      WithPrefix(absl::StrCat(plan_.what, ": ", m.is_send ? "send to" : "receive from", " rank ",
                                              m.peer, " failed: ", ::waveep::internal::MpiErrorString(f.err),
                                              f.truncated ? TruncationNote(m.peer, m.block_bytes) : "")));
      }
      if (outcount != MPI_UNDEFINED) {
        for (int k = 0; k < outcount; ++k) {
          WAVEEP_RETURN_IF_ERROR(Completed(static_cast<size_t>(idx_[k]), st_[k]));
          *progressed = true;
        }
      }
    }
    // H2D copies that finished free their slots.
    for (auto it = copying_recvs_.begin(); it != copying_recvs_.end();) {
      const cudaError_t rc = cudaEventQuery(set_.recv_done[slot_of_[*it]]);
      if (rc == cudaErrorNotReady) {
        ++it;
        continue;
      }
      WAVEEP_CUDA_RETURN_IF_ERROR(rc);
      free_recv_.push_back(slot_of_[*it]);
      Done(*it);
      it = copying_recvs_.erase(it);
      *progressed = true;
    }
    if (self_pending_) {
      const cudaError_t rc = cudaEventQuery(set_.self_done);
      if (rc != cudaErrorNotReady) {
        WAVEEP_CUDA_RETURN_IF_ERROR(rc);
        self_pending_ = false;
        *progressed = true;
      }
    }
    return absl::OkStatus();
  }

  // Peers still pending, with bytes per direction, for a timeout message.
  std::string DescribePending() const {
    PendingPeers pending;
    for (size_t i = 0; i < plan_.messages.size(); ++i) {
      if (done_[i]) continue;
      const StagedMessage& m = plan_.messages[i];
      pending.Add(m.peer, m.is_send, static_cast<size_t>(m.bytes), m.block_bytes);
    }
    std::string out = pending.ToString();
    if (self_pending_) absl::StrAppend(&out, out.empty() ? "" : ", ", "the block to self");
    if (out.empty()) out = "nothing";
    return out;
  }

  // After an error: cancels MPI requests and lets copies drain for a short grace. Returns true when nothing can
  // touch the staging set any more (it may go back to the pool), with a note for the error message.
  bool Abandon(std::string* note) {
    const Clock::time_point deadline = Clock::now() + absl::ToChronoNanoseconds(kCancelGrace);
    const size_t left = AbandonRequests(reqs_, kCancelGrace).size();
    bool copies_drained = true;
    for (cudaStream_t s : {set_.d2h, set_.h2d}) {
      while (cudaStreamQuery(s) == cudaErrorNotReady) {
        if (Clock::now() >= deadline) {
          copies_drained = false;
          break;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
    cudaGetLastError();  // the error being reported matters, not a sticky one from draining
    if (left > 0) {
      *note = absl::StrCat(" [", left,
                           " MPI request(s) could not be cancelled and were left to MPI; their staging memory is "
                           "leaked, never reused]");
    }
    if (!copies_drained) absl::StrAppend(note, " [staging copies still running after the grace; staging leaked]");
    return left == 0 && copies_drained;
  }

 private:
  char* SendSlot(int s) const { return set_.send_pinned + static_cast<size_t>(s) * set_.chunk_bytes; }
  char* RecvSlot(int s) const { return set_.recv_pinned + static_cast<size_t>(s) * set_.chunk_bytes; }

  void Done(size_t i) {
    done_[i] = true;
    --remaining_;
  }

  Status Completed(size_t i, const MPI_Status& st) {
    const StagedMessage& m = plan_.messages[i];
    if (m.is_send) {
      if (m.on_device) free_send_.push_back(slot_of_[i]);
      Done(i);
      return absl::OkStatus();
    }
    int count = 0;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Get_count(&st, MPI_BYTE, &count));
    if (count != m.bytes) {
      return absl::InvalidArgumentError(WithPrefix(absl::StrCat(
          plan_.what, ": received ", count, " bytes from rank ", m.peer, " where ", m.bytes,
          " were expected (recv_bytes[", m.peer, "] = ", m.block_bytes, " disagrees with what rank ", m.peer,
          " sends, or the ranks use different "
          "MpiTuning chunk sizes)")));
    }
    if (!m.on_device) {
      Done(i);
      return absl::OkStatus();
    }
    const int s = slot_of_[i];
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(m.dst, RecvSlot(s), m.bytes, cudaMemcpyHostToDevice, set_.h2d));
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaEventRecord(set_.recv_done[s], set_.h2d));
    copying_recvs_.push_back(i);
    return absl::OkStatus();
  }

  MPI_Comm comm_;
  const StagedPlan& plan_;
  StagingSet& set_;
  std::vector<MPI_Request> reqs_;  // one per message, MPI_REQUEST_NULL when not posted or done
  std::vector<int> slot_of_;       // staging slot of a device message
  std::vector<bool> done_;
  std::deque<size_t> send_queue_;  // device sends not started, plan order
  std::deque<size_t> recv_queue_;  // device receives not posted, plan order
  std::deque<size_t> copying_sends_;
  std::vector<size_t> copying_recvs_;
  std::vector<int> free_send_;
  std::vector<int> free_recv_;
  size_t remaining_ = 0;
  bool self_pending_ = false;
  std::vector<int> idx_;
  std::vector<MPI_Status> st_;
};

Status RunPipeline(MPI_Comm comm, const StagedPlan& plan, StagingSet& set, absl::Duration timeout,
                   const MpiTuning& tuning, bool* reusable) {
  *reusable = false;
  Pipeline pipe(comm, plan, set);
  Status st = pipe.Start();
  // Same polling policy as the host path, with the spin window scaled by the bytes moved.
  Poller poller(tuning, timeout, std::max(plan.bytes_sent, plan.bytes_recv));
  while (st.ok() && !pipe.Finished()) {
    bool progressed = false;
    st = pipe.Poll(&progressed);
    if (!st.ok() || pipe.Finished()) break;
    if (!poller.Next(progressed)) {
      st = absl::DeadlineExceededError(WithPrefix(
          absl::StrCat(plan.what, " (tag ", plan.tag, ", device buffers staged through host) timed out after ",
                       absl::FormatDuration(timeout), "; still pending: ", pipe.DescribePending(),
                       ". Did every rank issue this exchange, in the same order, with matching sizes and MpiTuning?")));
      break;
    }
  }
  if (st.ok()) {
    *reusable = true;
    return st;
  }
  std::string note;
  *reusable = pipe.Abandon(&note);
  return Status(st.code(), absl::StrCat(st.message(), note));
}

}  // namespace

bool DeviceStagingAvailable() {
  static const bool available = CudaDeviceCount() > 0;
  return available;
}

Status RunStagedExchange(MPI_Comm comm, const StagedPlan& plan, absl::Duration timeout, const MpiTuning& tuning) {
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaSetDevice(plan.device));
  WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<StagingSet> set,
                          AcquireStagingSet(plan.device, tuning.staging_chunk_bytes, tuning.staging_slots));
  bool reusable = false;
  Status st = RunPipeline(comm, plan, *set, timeout, tuning, &reusable);
  if (reusable) {
    ReleaseStagingSet(std::move(set));
  } else {
    (void)set.release();  // NOTES: MPI or a copy may still touch it; leak rather than hand it to another exchange
  }
  return st;
}

StatusOr<std::unique_ptr<DeviceProxy>> NewStagingProxy(int device) {
  WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<StreamGate> gate, NewCudaStreamGate(device));
  return std::make_unique<DeviceProxy>("mpi", std::move(gate));
}

Status EnqueueStagedExchange(std::shared_ptr<void> keep_alive, MPI_Comm comm, std::shared_ptr<const StagedPlan> plan,
                             absl::Duration timeout, const MpiTuning& tuning, Stream& stream, DeviceProxy* proxy) {
  const std::string row(stream.name());
  auto body = [keep_alive, comm, plan, timeout, tuning, row]() {
    ScopedSpan span(row, plan->label, "comm");
    span.Arg("bytes_sent", static_cast<double>(plan->bytes_sent));
    span.Arg("bytes_recv", static_cast<double>(plan->bytes_recv));
    return RunStagedExchange(comm, *plan, timeout, tuning);
  };
  // CPU stream: its worker thread may call CUDA and block, so the exchange runs inline as a task.
  if (stream.native() == nullptr) return stream.Enqueue(std::move(body));
  if (proxy == nullptr) {
    return absl::FailedPreconditionError(
        WithPrefix(absl::StrCat(plan->what, ": a CUDA stream needs the communicator's proxy thread")));
  }
  // CUDA stream: the proxy runs the exchange once the stream reached it and then releases the stream; RunStagedExchange
  // returns only after its H2D copies completed, so work queued after the exchange sees the received data.
  return proxy->Enqueue(stream, plan->what, timeout, std::move(body));
}

}  // namespace waveep::comm::internal
