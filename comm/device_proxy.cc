// Copyright 2026 The waveep Authors.
//
// The proxy thread's state machine (design in device_proxy_internal.h). Plain C++: no CUDA here, so the CPU tests
// (tests/comm/device_proxy_test.cc) cover every transition with a fake gate.
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/comm_internal.h"
#include "comm/device_proxy_internal.h"

namespace waveep::comm::internal {
namespace {

using Clock = std::chrono::steady_clock;

// Polling of a start marker: back to back (yielding) for a short window, since a stream usually reaches the job
// within microseconds of the previous one, then sleeps that give the core away (CI runs 4 ranks on 2 cores).
constexpr auto kReadySpin = std::chrono::microseconds(100);
constexpr auto kReadySleep = std::chrono::microseconds(20);

// Holds a CPU stream's thread from where the job starts until its release.
class HostStreamGate final : public StreamGate {
 public:
  StatusOr<Armed> Arm(Stream& stream, absl::Duration timeout) override {
    if (stream.native() != nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("host stream gate: stream '", stream.name(), "' is a CUDA stream"));
    }
    struct Hold {
      std::mutex mu;
      std::condition_variable cv;
      bool reached = false;
      bool released = false;
    };
    auto hold = std::make_shared<Hold>();
    const absl::Duration limit = 3 * timeout + absl::Seconds(1);
    const std::string row(stream.name());
    WAVEEP_RETURN_IF_ERROR(stream.Enqueue([hold, limit, row]() -> Status {
      std::unique_lock<std::mutex> lock(hold->mu);
      hold->reached = true;
      if (!hold->cv.wait_for(lock, absl::ToChronoNanoseconds(limit), [&] { return hold->released; })) {
        return absl::DeadlineExceededError(WithPrefix(absl::StrCat(
            "stream '", row, "': the proxy thread did not finish the exchange within ", absl::FormatDuration(limit))));
      }
      return absl::OkStatus();
    }));
    Armed armed;
    armed.ready = [hold]() -> StatusOr<bool> {
      std::lock_guard<std::mutex> lock(hold->mu);
      return hold->reached;
    };
    armed.release = [hold]() {
      std::lock_guard<std::mutex> lock(hold->mu);
      hold->released = true;
      hold->cv.notify_all();
    };
    return armed;
  }
};

}  // namespace

std::unique_ptr<StreamGate> NewHostStreamGate() { return std::make_unique<HostStreamGate>(); }

bool ProxyTicket::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_ == State::kDone;
}

Status ProxyTicket::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ != State::kDone) {
    return absl::FailedPreconditionError(WithPrefix(absl::StrCat(what_, ": status read before the job finished")));
  }
  return status_;
}

Status ProxyTicket::Wait(absl::Duration timeout, absl::Duration run_grace) {
  std::unique_lock<std::mutex> lock(mu_);
  const auto done = [&] { return state_ == State::kDone; };
  if (cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), done)) return status_;
  if (state_ == State::kQueued) {
    // Never started: make sure it never will, so that the caller may reuse its buffers.
    cancelled_ = true;
    return absl::DeadlineExceededError(WithPrefix(
        absl::StrCat(what_, ": did not start within ", absl::FormatDuration(timeout),
                     " (jobs queued before it on the proxy thread are still running); cancelled, it will not run")));
  }
  if (cv_.wait_for(lock, absl::ToChronoNanoseconds(run_grace), done)) return status_;
  return absl::DeadlineExceededError(
      WithPrefix(absl::StrCat(what_, ": still running after ", absl::FormatDuration(timeout + run_grace),
                              " (its own timeout should have ended it: a CUDA or MPI call does not return?)")));
}

bool ProxyTicket::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return false;
  state_ = State::kRunning;
  return true;
}

void ProxyTicket::Finish(Status s) {
  // NOTES: notify under the lock: a waiter that sees kDone may destroy the ticket at once.
  std::lock_guard<std::mutex> lock(mu_);
  status_ = std::move(s);
  state_ = State::kDone;
  cv_.notify_all();
}

DeviceProxy::DeviceProxy(std::string name, std::unique_ptr<StreamGate> device_gate,
                         std::unique_ptr<StreamGate> host_gate)
    : name_(std::move(name)),
      device_gate_(std::move(device_gate)),
      host_gate_(std::move(host_gate)),
      thread_([this] { Loop(); }) {}

DeviceProxy::~DeviceProxy() { Shutdown(); }

StatusOr<std::shared_ptr<ProxyTicket>> DeviceProxy::Submit(ProxyJob job) {
  auto ticket = std::make_shared<ProxyTicket>(job.what);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      return absl::FailedPreconditionError(
          WithPrefix(absl::StrCat(name_, " proxy is shut down; cannot run ", job.what)));
    }
    queue_.push_back(Item{std::move(job), ticket});
  }
  cv_.notify_all();
  return ticket;
}

Status DeviceProxy::Enqueue(Stream& stream, std::string what, absl::Duration timeout, std::function<Status()> run) {
  StreamGate* gate = stream.native() != nullptr ? device_gate_.get() : host_gate_.get();
  if (gate == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(name_, " proxy has no gate for ",
                                                      stream.native() != nullptr ? "CUDA" : "CPU",
                                                      " streams; cannot "
                                                      "order ",
                                                      what, " on stream '", stream.name(), "'"));
  }
  std::lock_guard<std::mutex> issue(issue_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      return absl::FailedPreconditionError(WithPrefix(absl::StrCat(name_, " proxy is shut down; cannot run ", what)));
    }
  }
  WAVEEP_ASSIGN_OR_RETURN(StreamGate::Armed armed, gate->Arm(stream, timeout));
  ProxyJob job{std::move(what), timeout, std::move(armed.ready), std::move(run), std::move(armed.release)};
  auto ticket = std::make_shared<ProxyTicket>(job.what);
  // The report task runs after the release let the stream past the gate, so the job has finished by then.
  Status enq = stream.Enqueue([ticket]() { return ticket->status(); });
  if (!enq.ok()) {
    // The gate is armed on the stream: the job must still be released (in order), but must not run.
    job.ready = nullptr;
    job.run = [enq]() { return enq; };
  }
  {
    // stopping_ is still false: Shutdown takes issue_mu_ before setting it.
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(Item{std::move(job), ticket});
  }
  cv_.notify_all();
  return enq;
}

void DeviceProxy::Shutdown() {
  {
    // Taking issue_mu_ first: an Enqueue that armed its gate always gets its job into the queue before we stop, so
    // its release is never lost.
    std::lock_guard<std::mutex> issue(issue_mu_);
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint64_t DeviceProxy::jobs_finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

Status DeviceProxy::WaitReady(Item& item) {
  if (!item.job.ready) return absl::OkStatus();
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + absl::ToChronoNanoseconds(item.job.timeout);
  for (;;) {
    StatusOr<bool> ready = item.job.ready();
    if (!ready.ok()) return ready.status();
    if (*ready) return absl::OkStatus();
    const Clock::time_point now = Clock::now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) {
        return absl::CancelledError(WithPrefix(
            absl::StrCat(item.job.what,
                         ": the communicator was destroyed while waiting for the stream to reach this exchange; "
                         "it did not run")));
      }
    }
    if (now >= deadline) {
      return absl::DeadlineExceededError(WithPrefix(absl::StrCat(
          item.job.what, ": the stream never reached this exchange within ", absl::FormatDuration(item.job.timeout),
          " (work queued before it on the stream is still running or waits on something that never completes); "
          "it did not run")));
    }
    if (now - start < kReadySpin) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kReadySleep);
    }
  }
}

void DeviceProxy::Complete(Item& item, Status s) {
  // Status first, then the release: a stream let through finds the final Status.
  item.ticket->Finish(std::move(s));
  if (item.job.release) item.job.release();
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_;
}

void DeviceProxy::Loop() {
  for (;;) {
    Item item;
    bool draining = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      item = std::move(queue_.front());
      queue_.pop_front();
      draining = stopping_;
    }
    if (draining) {
      Complete(item, absl::CancelledError(WithPrefix(absl::StrCat(
                         item.job.what, ": the communicator was destroyed before this exchange ran; it did not run"))));
      continue;
    }
    if (!item.ticket->Start()) {
      Complete(item, absl::DeadlineExceededError(WithPrefix(
                         absl::StrCat(item.job.what, ": cancelled by its caller before it started; it did not run"))));
      continue;
    }
    Status s = WaitReady(item);
    if (s.ok() && item.job.run) s = item.job.run();
    Complete(item, std::move(s));
  }
}

}  // namespace waveep::comm::internal
