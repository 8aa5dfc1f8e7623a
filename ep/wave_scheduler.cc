// Copyright 2026 The waveep Authors.
#include <algorithm>

#include "ep/ep_internal.h"

namespace waveep::ep::internal {

StatusOr<std::unique_ptr<WaveScheduler>> WaveScheduler::Create(Device device, absl::Duration timeout) {
  std::unique_ptr<WaveScheduler> s(new WaveScheduler());
  s->device_ = device;
  s->timeout_ = timeout;
  StreamOptions so;
  so.timeout = timeout;
  so.name = "comm";
  WAVEEP_ASSIGN_OR_RETURN(s->comm_, Stream::Create(device, so));
  so.name = "compute";
  WAVEEP_ASSIGN_OR_RETURN(s->compute_, Stream::Create(device, so));
  return s;
}

Status WaveScheduler::EnsureEvents(int num_waves) {
  auto grow = [&](std::vector<std::unique_ptr<Event>>& v, const char* what) -> Status {
    while (static_cast<int>(v.size()) < num_waves) {
      WAVEEP_ASSIGN_OR_RETURN(auto ev, Event::Create(device_, absl::StrCat(what, "(", v.size(), ")")));
      v.push_back(std::move(ev));
    }
    return absl::OkStatus();
  };
  WAVEEP_RETURN_IF_ERROR(grow(dispatch_done_, "dispatch_done"));
  WAVEEP_RETURN_IF_ERROR(grow(recv_free_, "recv_free"));
  WAVEEP_RETURN_IF_ERROR(grow(unpacked_, "unpacked"));
  if (inputs_ready_ == nullptr) {
    WAVEEP_ASSIGN_OR_RETURN(inputs_ready_, Event::Create(device_, "inputs_ready"));
  }
  if (all_combined_ == nullptr) {
    WAVEEP_ASSIGN_OR_RETURN(all_combined_, Event::Create(device_, "all_combined"));
  }
  return absl::OkStatus();
}

void WaveScheduler::AddSpan(SpanRecord r) {
  if (GlobalTracer().enabled()) {
    TraceSpan t;
    t.row = r.stream;
    t.name = r.name;
    t.category = r.stream;
    t.start_us = r.start_us;
    t.dur_us = r.end_us - r.start_us;
    if (r.bytes > 0) t.args.emplace_back("bytes", r.bytes);
    if (r.flops > 0) t.args.emplace_back("flops", r.flops);
    GlobalTracer().Add(std::move(t));
  }
  std::lock_guard<std::mutex> lock(spans_mu_);
  if (spans_ != nullptr) spans_->push_back(std::move(r));
}

Status WaveScheduler::Timed(Stream& s, int slot, std::string name, double bytes, double flops,
                            const std::function<Status(Stream&)>& enqueue) {
  WAVEEP_RETURN_IF_ERROR(s.Enqueue([this, slot] {
    begin_us_[slot] = NowUs();
    return absl::OkStatus();
  }));
  WAVEEP_RETURN_IF_ERROR(enqueue(s));
  return s.Enqueue([this, &s, slot, name = std::move(name), bytes, flops] {
    AddSpan(SpanRecord{std::string(s.name()), name, begin_us_[slot], NowUs(), bytes, flops});
    return absl::OkStatus();
  });
}

Status WaveScheduler::Run(int num_waves, const WaveOps& ops, std::vector<SpanRecord>* spans) {
  if (num_waves < 1) return absl::InvalidArgumentError(absl::StrCat("waves must be >= 1, got ", num_waves));
  WAVEEP_RETURN_IF_ERROR(EnsureEvents(num_waves));
  {
    std::lock_guard<std::mutex> lock(spans_mu_);
    spans_ = spans;
  }
  Stream& cs = *comm_;
  Stream& xs = *compute_;
  auto value = [](const std::function<double(int)>& f, int w) { return f ? f(w) : 0.0; };
  // Timing slots: 5 per wave (pack, dispatch, gemm, unpack, combine) + head + tail + finish.
  begin_us_.assign(5 * static_cast<size_t>(num_waves) + 3, 0.0);
  auto op = [&](const WaveOps::WaveFn& fn, int w) { return [&fn, w](Stream& s) { return fn(w, s); }; };

  auto dispatch = [&](int w) -> Status {
    if (w >= 2) WAVEEP_RETURN_IF_ERROR(cs.Wait(*recv_free_[w - 2]));  // receive buffer w % 2 consumed by gemm(w-2)
    WAVEEP_RETURN_IF_ERROR(Timed(cs, 5 * w, absl::StrCat("pack(", w, ")"), 0, 0, op(ops.pack, w)));
    WAVEEP_RETURN_IF_ERROR(
        Timed(cs, 5 * w + 1, absl::StrCat("dispatch(", w, ")"), value(ops.dispatch_bytes, w), 0, op(ops.dispatch, w)));
    return cs.Record(*dispatch_done_[w]);
  };
  auto combine = [&](int w) -> Status {
    WAVEEP_RETURN_IF_ERROR(cs.Wait(*unpacked_[w]));
    return Timed(cs, 5 * w + 4, absl::StrCat("combine(", w, ")"), value(ops.combine_bytes, w), 0, op(ops.combine, w));
  };
  auto compute = [&](int w) -> Status {
    WAVEEP_RETURN_IF_ERROR(xs.Wait(*dispatch_done_[w]));
    WAVEEP_RETURN_IF_ERROR(
        Timed(xs, 5 * w + 2, absl::StrCat("gemm(", w, ")"), 0, value(ops.gemm_flops, w), op(ops.gemm, w)));
    WAVEEP_RETURN_IF_ERROR(xs.Record(*recv_free_[w]));
    WAVEEP_RETURN_IF_ERROR(Timed(xs, 5 * w + 3, absl::StrCat("unpack(", w, ")"), 0, 0, op(ops.unpack, w)));
    return xs.Record(*unpacked_[w]);
  };

  // Host order == the schedule of docs/architecture.md: dispatch(0); for each w: gemm(w) | dispatch(w+1), combine(w-1);
  // combine(W-1). The head (the first half of the shared expert) fills the compute stream while pack(0) and dispatch(0)
  // run; it needs only the inputs LayerOps::Prepare staged on the comm stream before this. It is enqueued after
  // dispatch(0), so that its host-side cost (on CUDA, one library call per GEMM block) never delays the first exchange.
  Status enq = absl::OkStatus();
  if (ops.head) enq = cs.Record(*inputs_ready_);
  if (enq.ok()) enq = dispatch(0);
  if (enq.ok() && ops.head) {
    enq = xs.Wait(*inputs_ready_);
    if (enq.ok()) enq = Timed(xs, 5 * num_waves, "shared(0)", 0, ops.head_flops, ops.head);
  }
  for (int w = 0; w < num_waves && enq.ok(); ++w) {
    enq = compute(w);
    if (enq.ok() && w + 1 < num_waves) enq = dispatch(w + 1);
    if (enq.ok() && w >= 1) enq = combine(w - 1);
  }
  if (enq.ok()) enq = combine(num_waves - 1);
  if (enq.ok()) enq = cs.Record(*all_combined_);  // the comm stream is in order: every combine is done
  if (enq.ok() && ops.tail) enq = Timed(xs, 5 * num_waves + 1, "shared(1)", 0, ops.tail_flops, ops.tail);
  if (enq.ok()) enq = xs.Wait(*all_combined_);
  if (enq.ok() && ops.finish) enq = Timed(xs, 5 * num_waves + 2, "reduce", 0, 0, ops.finish);
  // Always drain both streams: their tasks reference this frame, even if enqueueing failed part-way. The drain waits
  // a little longer than any operation's own deadline, so that a hung exchange reports itself (exchange, wave,
  // pending peers) rather than as "stream did not drain".
  const absl::Duration op_timeout = timeout_ > absl::ZeroDuration() ? timeout_ : DefaultTimeout();
  const absl::Duration drain = op_timeout + std::max(absl::Seconds(2), op_timeout / 4);
  Status s_comm = cs.Synchronize(drain);
  Status s_comp = xs.Synchronize(drain);
  {
    std::lock_guard<std::mutex> lock(spans_mu_);
    spans_ = nullptr;
  }
  Status result = !enq.ok() ? enq : (!s_comm.ok() ? s_comm : s_comp);
  if (!result.ok()) {
    // Stream errors are sticky; start the next step on fresh streams so one failed step does not poison the layer.
    StreamOptions so;
    so.timeout = timeout_;
    so.name = "comm";
    if (auto c = Stream::Create(device_, so); c.ok()) comm_ = *std::move(c);
    so.name = "compute";
    if (auto c = Stream::Create(device_, so); c.ok()) compute_ = *std::move(c);
  }
  return result;
}

}  // namespace waveep::ep::internal
