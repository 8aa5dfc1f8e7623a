// Copyright 2026 The waveep Authors.
//
// runtime/trace.h — per-stream spans written as Chrome trace JSON (opens in Perfetto and chrome://tracing).
//
// One process per rank, one thread row per stream, one "X" (complete) event per span, with numeric args such as
// bytes or FLOPs. Spans are recorded cheaply in memory when the tracer is enabled and written at the end:
//
//   GlobalTracer().SetEnabled(true);
//   { ScopedSpan span("compute", "gemm(2)"); span.Arg("flops", 1.2e9); RunGemm(); }   // on the stream's thread
//   std::string mine = GlobalTracer().ToChromeEvents(/*pid=*/rank);                  // this rank's events
//   ... gather to rank 0 (GatherStrings) ...
//   WAVEEP_RETURN_IF_ERROR(WriteChromeTrace("trace.json", fragments));
//
// Times are NowUs(): microseconds since the trace epoch, which InitProcess resets right after a barrier so that
// ranks line up (to within the barrier's skew).
#ifndef WAVEEP_RUNTIME_TRACE_H_
#define WAVEEP_RUNTIME_TRACE_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/status.h"

namespace waveep {

// Sets time zero of NowUs() to now.
void ResetTraceEpoch();

struct TraceSpan {
  std::string row;   // stream name: one thread row per distinct row
  std::string name;  // e.g. "dispatch(3)"
  std::string category;
  double start_us = 0;
  double dur_us = 0;
  std::vector<std::pair<std::string, double>> args;
};

class Tracer {
 public:
  void SetEnabled(bool on);
  // Lock-free: every ScopedSpan asks, on hot paths.
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }
  // Thread-safe; a no-op when disabled.
  void Add(TraceSpan span);
  std::vector<TraceSpan> Spans() const;
  void Clear();
  // This process's spans as comma-separated Chrome trace events (with process/thread name metadata), pid = rank.
  std::string ToChromeEvents(int pid) const;

 private:
  mutable std::mutex mu_;
  std::atomic<bool> enabled_{false};
  std::vector<TraceSpan> spans_;
};

Tracer& GlobalTracer();

// Records [construction, destruction) as a span on `row` when the global tracer is enabled.
// With the tracer off it costs an atomic load and a branch (inline), nothing else.
class ScopedSpan {
 public:
  ScopedSpan(absl::string_view row, absl::string_view name, absl::string_view category = "") {
    if (GlobalTracer().enabled()) Begin(row, name, category);
  }
  ~ScopedSpan() {
    if (span_ != nullptr) End();
  }
  ScopedSpan& Arg(absl::string_view key, double value) {
    if (span_ != nullptr) span_->args.emplace_back(std::string(key), value);
    return *this;
  }
  ScopedSpan(const ScopedSpan&) = delete;
  ScopedSpan& operator=(const ScopedSpan&) = delete;

 private:
  void Begin(absl::string_view row, absl::string_view name, absl::string_view category);
  void End();
  std::unique_ptr<TraceSpan> span_;  // null while the tracer is off
};

// Writes {"traceEvents":[...]} from per-rank fragments produced by Tracer::ToChromeEvents.
Status WriteChromeTrace(const std::string& path, const std::vector<std::string>& fragments);

}  // namespace waveep

#endif  // WAVEEP_RUNTIME_TRACE_H_
