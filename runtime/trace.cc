// Copyright 2026 The waveep Authors.
#include "runtime/trace.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>

#include "nlohmann/json.hpp"
#include "runtime/stream.h"

namespace waveep {
namespace {
std::atomic<int64_t> g_epoch_ns{std::chrono::steady_clock::now().time_since_epoch().count()};
}  // namespace

void ResetTraceEpoch() { g_epoch_ns = std::chrono::steady_clock::now().time_since_epoch().count(); }

double NowUs() {
  int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  return static_cast<double>(now - g_epoch_ns.load(std::memory_order_relaxed)) * 1e-3;
}

void Tracer::SetEnabled(bool on) { enabled_.store(on, std::memory_order_relaxed); }
void Tracer::Add(TraceSpan span) {
  std::lock_guard<std::mutex> lock(mu_);
  if (enabled()) spans_.push_back(std::move(span));
}
std::vector<TraceSpan> Tracer::Spans() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spans_;
}
void Tracer::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  spans_.clear();
}

std::string Tracer::ToChromeEvents(int pid) const {
  std::vector<TraceSpan> spans = Spans();
  std::map<std::string, int> tids;
  nlohmann::json events = nlohmann::json::array();
  events.push_back(
      {{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", absl::StrCat("rank ", pid)}}}});
  events.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"args", {{"sort_index", pid}}}});
  for (const TraceSpan& s : spans) {
    auto [it, inserted] = tids.emplace(s.row, static_cast<int>(tids.size()));
    if (inserted) {
      events.push_back(
          {{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", it->second}, {"args", {{"name", s.row}}}});
    }
    nlohmann::json args = nlohmann::json::object();
    for (const auto& [k, v] : s.args) args[k] = v;
    events.push_back({{"name", s.name},
                      {"cat", s.category.empty() ? "waveep" : s.category},
                      {"ph", "X"},
                      {"pid", pid},
                      {"tid", it->second},
                      {"ts", s.start_us},
                      {"dur", s.dur_us},
                      {"args", args}});
  }
  std::string out;
  for (size_t i = 0; i < events.size(); ++i) absl::StrAppend(&out, i ? ",\n" : "", events[i].dump());
  return out;
}

Tracer& GlobalTracer() {
  static Tracer* t = new Tracer();
  return *t;
}

void ScopedSpan::Begin(absl::string_view row, absl::string_view name, absl::string_view category) {
  span_ = std::make_unique<TraceSpan>();
  span_->row = std::string(row);
  span_->name = std::string(name);
  span_->category = std::string(category);
  span_->start_us = NowUs();
}

void ScopedSpan::End() {
  span_->dur_us = NowUs() - span_->start_us;
  GlobalTracer().Add(std::move(*span_));
}

Status WriteChromeTrace(const std::string& path, const std::vector<std::string>& fragments) {
  std::ofstream out(path, std::ios::trunc);
  if (!out)
    return absl::PermissionDeniedError(absl::StrCat("cannot write trace file ", path, ": ", std::strerror(errno)));
  out << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  bool first = true;
  for (const std::string& f : fragments) {
    if (f.empty()) continue;
    out << (first ? "" : ",\n") << f;
    first = false;
  }
  out << "\n]}\n";
  if (!out) return absl::DataLossError(absl::StrCat("write error on trace file ", path));
  return absl::OkStatus();
}

}  // namespace waveep
