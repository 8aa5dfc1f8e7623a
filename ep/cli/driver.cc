// Copyright 2026 The waveep Authors.
#include "ep/cli/driver.h"

#include <cstdio>

#include "runtime/mpi_context.h"

namespace waveep::cli {

StatusOr<Session> OpenSession(const ProcessContext& ctx, const RunPoint& p, const std::string& backend) {
  Session s;
  comm::Options opts;
  opts.timeout = p.cfg.timeout;
  WAVEEP_ASSIGN_OR_RETURN(s.comm, comm::CreateCommunicator(backend, ctx, opts));
  s.weights = ep::MakeSyntheticWeights(p.cfg.model, p.seed);
  WAVEEP_ASSIGN_OR_RETURN(s.layer, ep::MoeLayer::Create(ctx, s.comm.get(), p.cfg, *s.weights));
  WAVEEP_ASSIGN_OR_RETURN(
      s.batch, ep::MakeSyntheticBatch(p.cfg.model, p.routing, p.seed,
                                      static_cast<int64_t>(ctx.world_rank) * p.tokens_per_rank, p.tokens_per_rank));
  s.out.assign(static_cast<size_t>(p.tokens_per_rank * p.cfg.model.hidden_size), 0.0f);
  return s;
}

// Seconds between two progress lines of a long run.
constexpr double kProgressEveryS = 5.0;

StatusOr<StepSeries> RunSteps(const ProcessContext& ctx, Session& s, const RunPoint& p) {
  StepSeries series;
  series.dedup = s.layer->dedup();
  series.hierarchical = s.layer->hierarchical();
  const int total = p.warmup + p.steps;
  const double started = NowUs();
  double last_progress = started;
  for (int i = 0; i < total; ++i) {
    const bool timed = i >= p.warmup;
    if (timed && i == total - 1) GlobalTracer().Clear();  // the trace keeps the last step only
    ep::StepStats st;
    WAVEEP_RETURN_IF_ERROR(s.layer->Forward(s.batch, s.out.data(), &st));
    if (!timed) continue;
    // Aggregate: [step, layout, compute, comm] max; [eff, flops, bytes, rows] summed (rows: max).
    double mx[4] = {st.step_us, st.layout_us, st.compute_busy_us, st.comm_busy_us}, gmx[4];
    double sm[5] = {st.overlap_efficiency, st.flops, st.bytes_sent, st.bytes_sent_dispatch, st.bytes_sent_internode},
           gsm[5];
    long long rows = st.recv_rows, grows = 0;
    const char* what = "the per-step statistics reduction";
    WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, mx, gmx, 4, MPI_DOUBLE, MPI_MAX, what));
    WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, sm, gsm, 5, MPI_DOUBLE, MPI_SUM, what));
    WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &rows, &grows, 1, MPI_LONG_LONG, MPI_MAX, what));
    series.step_ms.push_back(gmx[0] * 1e-3);
    series.layout_ms.push_back(gmx[1] * 1e-3);
    series.compute_ms.push_back(gmx[2] * 1e-3);
    series.comm_ms.push_back(gmx[3] * 1e-3);
    series.efficiency.push_back(gsm[0] / ctx.world_size);
    series.flops_per_step = gsm[1];
    series.bytes_sent_per_step = gsm[2];
    series.dispatch_bytes_per_step = gsm[3];
    series.internode_bytes_per_step = gsm[4];
    series.max_rows_per_rank = grows;
    series.last_local = std::move(st);
    // Progress a person can read on long runs: one line every kProgressEveryS seconds, not one per step.
    const double now = NowUs();
    if (p.progress && ctx.world_rank == 0 && (now - last_progress) * 1e-6 >= kProgressEveryS && i + 1 < total) {
      last_progress = now;
      const int done = i - p.warmup + 1;
      const double left_s = (now - started) * 1e-6 / (i + 1) * (total - i - 1);
      std::fprintf(stderr, "[waveep] %s step %d/%d (%.0f%%): last %.2f ms, about %.0f s left\n", p.label.c_str(), done,
                   p.steps, 100.0 * done / p.steps, series.step_ms.back(), left_s);
    }
  }
  return series;
}

}  // namespace waveep::cli
