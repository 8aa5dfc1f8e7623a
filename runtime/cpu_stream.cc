// Copyright 2026 The waveep Authors.
//
// CPU Stream/Event: one worker thread per stream drains an in-order queue. Events are generation counters so that
// re-recording works like cudaEventRecord: a Wait() binds to the record that was latest when Wait() was called.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "runtime/stream.h"
#include "runtime/stream_internal.h"

namespace waveep {
namespace {

std::mutex g_settings_mu;
// Read on every timed wait and exchange: an atomic, not under g_settings_mu.
std::atomic<int64_t> g_default_timeout_ns{int64_t{300} * 1000 * 1000 * 1000};
std::string g_prefix;

// An event's state, shared by the Event and by the markers and waits queued on streams: an Event may be destroyed
// while a stream has still to reach its marker or a wait on it (the queued items keep the state alive).
class CpuEventState {
 public:
  explicit CpuEventState(std::string name) : name_(std::move(name)) {}
  absl::string_view name() const { return name_; }

  // Called on the host when Record() is enqueued: returns the generation the marker will complete.
  uint64_t NextRecord() {
    std::lock_guard<std::mutex> lock(mu_);
    return ++recorded_;
  }
  uint64_t LatestRecord() const {
    std::lock_guard<std::mutex> lock(mu_);
    return recorded_;
  }
  // Called by the stream thread when it reaches the marker of generation `gen`.
  // NOTES: notify while holding the lock: a waiter that sees the completion may destroy the event right away, so
  // this thread must not touch cv_ after releasing mu_ (TSan caught the notify-after-unlock version).
  void Complete(uint64_t gen, const Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (gen > completed_) {
      completed_ = gen;
      status_ = s;
      time_us_ = NowUs();
    }
    cv_.notify_all();
  }
  // Waits until generation `gen` completed.
  Status WaitFor(uint64_t gen, absl::Duration timeout, absl::string_view waiter) {
    std::unique_lock<std::mutex> lock(mu_);
    auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    if (!cv_.wait_until(lock, deadline, [&] { return completed_ >= gen; })) {
      return absl::DeadlineExceededError(absl::StrCat(DiagnosticPrefix(), DiagnosticPrefix().empty() ? "" : ": ",
                                                      waiter, " timed out after ", absl::FormatDuration(timeout),
                                                      " waiting for event '", name_, "' (record ", gen, ", completed ",
                                                      completed_, ")"));
    }
    return status_;
  }

  bool Query() const {
    std::lock_guard<std::mutex> lock(mu_);
    return completed_ >= recorded_;
  }
  StatusOr<double> CompletionTimeUs() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (completed_ == 0 || completed_ < recorded_)
      return absl::FailedPreconditionError(absl::StrCat("event '", name_, "' has not completed"));
    return time_us_;
  }

 private:
  const std::string name_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t recorded_ = 0;
  uint64_t completed_ = 0;
  Status status_;
  double time_us_ = 0;
};

class CpuEvent final : public Event {
 public:
  explicit CpuEvent(std::string name) : state_(std::make_shared<CpuEventState>(std::move(name))) {}
  absl::string_view name() const override { return state_->name(); }
  Status Synchronize(absl::Duration timeout) override {
    return state_->WaitFor(state_->LatestRecord(), timeout, "host");
  }
  bool Query() const override { return state_->Query(); }
  StatusOr<double> CompletionTimeUs() const override { return state_->CompletionTimeUs(); }
  const std::shared_ptr<CpuEventState>& state() const { return state_; }

 private:
  std::shared_ptr<CpuEventState> state_;
};

class CpuStream final : public Stream {
 public:
  explicit CpuStream(StreamOptions opts) : opts_(std::move(opts)) {
    worker_ = std::thread([this] { Run(); });
  }
  ~CpuStream() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  absl::string_view name() const override { return opts_.name; }
  Device device() const override { return Device::Cpu(); }
  StreamHandle native() const override { return nullptr; }

  Status Enqueue(std::function<Status()> task) override {
    if (!task) return absl::InvalidArgumentError("Stream::Enqueue: empty task");
    Push(Item{std::move(task), nullptr, 0});
    return absl::OkStatus();
  }

  Status Record(Event& event) override {
    auto* ev = dynamic_cast<CpuEvent*>(&event);
    if (ev == nullptr) return absl::InvalidArgumentError("Stream::Record: event is not a CPU event");
    uint64_t gen = ev->state()->NextRecord();
    Push(Item{nullptr, ev->state(), gen});
    return absl::OkStatus();
  }

  Status Wait(Event& event) override {
    auto* ev = dynamic_cast<CpuEvent*>(&event);
    if (ev == nullptr) return absl::InvalidArgumentError("Stream::Wait: event is not a CPU event");
    std::shared_ptr<CpuEventState> st = ev->state();
    uint64_t gen = st->LatestRecord();
    absl::Duration timeout = Timeout();
    std::string waiter = absl::StrCat("stream '", opts_.name, "'");
    Push(Item{[st, gen, timeout, waiter] { return st->WaitFor(gen, timeout, waiter); }, nullptr, 0});
    return absl::OkStatus();
  }

  Status Synchronize(absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
    if (!idle_cv_.wait_until(lock, deadline, [&] { return queue_.empty() && !busy_; })) {
      std::string prefix = DiagnosticPrefix();
      return absl::DeadlineExceededError(absl::StrCat(prefix, prefix.empty() ? "" : ": ", "stream '", opts_.name,
                                                      "' did not drain within ", absl::FormatDuration(timeout), " (",
                                                      queue_.size(), " items queued, current: ", current_, ")"));
    }
    return error_;
  }

  Status status() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  struct Item {
    std::function<Status()> task;          // a task or a wait ...
    std::shared_ptr<CpuEventState> event;  // ... or an event marker
    uint64_t gen;
  };

  absl::Duration Timeout() const { return opts_.timeout > absl::ZeroDuration() ? opts_.timeout : DefaultTimeout(); }

  void Push(Item item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(item));
    }
    cv_.notify_one();
  }

  void Run() {
    for (;;) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping and drained
        item = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;
        current_ = item.event ? "record" : "task";
      }
      Status err;
      {
        std::lock_guard<std::mutex> lock(mu_);
        err = error_;
      }
      if (item.event != nullptr) {
        item.event->Complete(item.gen, err);
      } else if (err.ok()) {
        Status s = item.task();
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(mu_);
          if (error_.ok()) error_ = s;
        }
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy_ = false;
        current_ = "idle";
      }
      idle_cv_.notify_all();
    }
  }

  const StreamOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<Item> queue_;
  bool busy_ = false;
  bool stopping_ = false;
  const char* current_ = "idle";
  Status error_;
  std::thread worker_;
};

}  // namespace

void SetDefaultTimeout(absl::Duration timeout) {
  g_default_timeout_ns.store(absl::ToInt64Nanoseconds(timeout), std::memory_order_relaxed);
}
absl::Duration DefaultTimeout() { return absl::Nanoseconds(g_default_timeout_ns.load(std::memory_order_relaxed)); }
void SetDiagnosticPrefix(std::string prefix) {
  std::lock_guard<std::mutex> lock(g_settings_mu);
  g_prefix = std::move(prefix);
}
std::string DiagnosticPrefix() {
  std::lock_guard<std::mutex> lock(g_settings_mu);
  return g_prefix;
}

namespace internal {
std::unique_ptr<Stream> NewCpuStream(StreamOptions options) { return std::make_unique<CpuStream>(std::move(options)); }
std::unique_ptr<Event> NewCpuEvent(std::string name) { return std::make_unique<CpuEvent>(std::move(name)); }
}  // namespace internal

StatusOr<std::unique_ptr<Stream>> Stream::Create(Device device, StreamOptions options) {
  if (device.is_cpu()) return internal::NewCpuStream(std::move(options));
  return internal::NewCudaStream(device, std::move(options));
}

StatusOr<std::unique_ptr<Event>> Event::Create(Device device, std::string name) {
  if (device.is_cpu()) return internal::NewCpuEvent(std::move(name));
  return internal::NewCudaEvent(device, std::move(name));
}

}  // namespace waveep
