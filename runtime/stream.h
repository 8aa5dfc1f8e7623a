// Copyright 2026 The waveep Authors.
//
// runtime/stream.h — in-order work queues (Stream) and completion markers (Event), CPU or CUDA.
//
// The wave scheduler is written once against this interface. On CUDA a Stream wraps cudaStream_t and an Event
// wraps cudaEvent_t; on the CPU a Stream is an in-order queue drained by its own thread and an Event is a
// completion flag with a generation counter, so an Event may be recorded again and waits see the latest record.
//
//   WAVEEP_ASSIGN_OR_RETURN(auto comm, Stream::Create(Device::Cpu(), {.name = "comm"}));
//   WAVEEP_ASSIGN_OR_RETURN(auto compute, Stream::Create(Device::Cpu(), {.name = "compute"}));
//   WAVEEP_ASSIGN_OR_RETURN(auto ready, Event::Create(Device::Cpu(), "dispatch[0]"));
//   WAVEEP_RETURN_IF_ERROR(comm->Enqueue([&] { return Dispatch(0); }));
//   WAVEEP_RETURN_IF_ERROR(comm->Record(*ready));
//   WAVEEP_RETURN_IF_ERROR(compute->Wait(*ready));            // compute runs Gemm(0) only after Dispatch(0)
//   WAVEEP_RETURN_IF_ERROR(compute->Enqueue([&] { return Gemm(0); }));
//   WAVEEP_RETURN_IF_ERROR(compute->Synchronize());            // first error of any task, or a timeout
//
// Errors are sticky, as in CUDA: once a task returns an error, later tasks on that stream are skipped, events
// recorded after it complete *with* that error (so streams waiting on them fail instead of hanging), and
// Synchronize() returns it. Every wait has a timeout; on expiry the Status names the stream, the event and the
// diagnostic label set with SetDiagnosticPrefix (e.g. "rank 2").
//
// Lifetimes: an Event may be destroyed while streams still have to reach a Record() or Wait() of it (both backends
// keep the event's state alive for them); a Stream's destructor drains its queue first.
#ifndef WAVEEP_RUNTIME_STREAM_H_
#define WAVEEP_RUNTIME_STREAM_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "runtime/status.h"
#include "runtime/types.h"

namespace waveep {

// Default for every blocking wait when none is given; set from --timeout_s. Thread-safe.
void SetDefaultTimeout(absl::Duration timeout);
absl::Duration DefaultTimeout();
// Prefix for timeout diagnostics, e.g. "rank 3/4". Thread-safe.
void SetDiagnosticPrefix(std::string prefix);
std::string DiagnosticPrefix();

// Monotonic microseconds since the process trace epoch (see ResetTraceEpoch in trace.h).
double NowUs();

class Event {
 public:
  // Creates an event for streams of `device`. `name` appears in timeout diagnostics.
  static StatusOr<std::unique_ptr<Event>> Create(Device device, std::string name);
  virtual ~Event() = default;

  virtual absl::string_view name() const = 0;
  // Blocks the calling thread until the most recent Record() completed. Returns that record's status (the
  // stream's sticky error, if any), or DeadlineExceeded. An event never recorded counts as complete.
  virtual Status Synchronize(absl::Duration timeout) = 0;
  Status Synchronize() { return Synchronize(DefaultTimeout()); }
  // Non-blocking: true when the most recent Record() completed.
  virtual bool Query() const = 0;
  // Completion time of the most recent record in NowUs() units. FailedPrecondition until it completed.
  virtual StatusOr<double> CompletionTimeUs() const = 0;
};

struct StreamOptions {
  std::string name = "stream";
  // Timeout for Wait() on this stream's thread (CPU) and for Synchronize() without an argument.
  absl::Duration timeout = absl::ZeroDuration();  // zero = DefaultTimeout() at use
};

class Stream {
 public:
  static StatusOr<std::unique_ptr<Stream>> Create(Device device, StreamOptions options);
  // Joins the worker after draining the queue (CPU). Never throws.
  virtual ~Stream() = default;

  virtual absl::string_view name() const = 0;
  virtual Device device() const = 0;
  // cudaStream_t for CUDA streams, nullptr on the CPU.
  virtual StreamHandle native() const = 0;

  // Enqueues a host task that runs after everything enqueued earlier on this stream. Non-blocking; the task runs
  // on the stream's thread (CPU) or as a host function (CUDA: it must not call CUDA APIs). Thread-safe.
  virtual Status Enqueue(std::function<Status()> task) = 0;
  // Marks the point after everything enqueued so far; `event` completes when the stream reaches it.
  virtual Status Record(Event& event) = 0;
  // Work enqueued after this call starts only once `event`'s record (as of this call) completed. A wait that
  // exceeds the stream's timeout fails the stream with DeadlineExceeded naming both.
  virtual Status Wait(Event& event) = 0;
  // Blocks until all enqueued work finished; returns the stream's sticky error, or DeadlineExceeded.
  virtual Status Synchronize(absl::Duration timeout) = 0;
  Status Synchronize() { return Synchronize(DefaultTimeout()); }
  // Sticky error so far (non-blocking).
  virtual Status status() const = 0;
};

}  // namespace waveep

#endif  // WAVEEP_RUNTIME_STREAM_H_
