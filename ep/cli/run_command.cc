// Copyright 2026 The waveep Authors.
//
// `waveep run`: MoE layer steps on a preset with synthetic weights/tokens; summary, --verify, --json, --trace.
#include <cinttypes>
#include <cstdio>

#include "absl/flags/flag.h"
#include "ep/cli/driver.h"
#include "kernels/kernels.h"
#include "nlohmann/json.hpp"

namespace waveep::cli {
namespace {

struct VerifySummary {
  bool ran = false;
  bool passed = true;
  double max_normalized = 0, max_rel_l2 = 0, tolerance = 0;
  long long worst_token = -1;
};

StatusOr<VerifySummary> VerifyAllRanks(const ProcessContext& ctx, const ep::LayerConfig& cfg, const Session& s) {
  Status local = absl::OkStatus();
  ep::VerifyResult r;
  auto res = ep::VerifyAgainstReference(cfg, *s.weights, s.batch, s.out.data());
  if (res.ok()) {
    r = *res;
  } else {
    local = res.status();
  }
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, local));
  VerifySummary v;
  v.ran = true;
  v.tolerance = r.tolerance;
  // Worst token: the rank with the largest normalized error reports it.
  struct {
    double val;
    int rank;
  } mine{r.max_normalized, ctx.world_rank}, best{};
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&mine, &best, 1, MPI_DOUBLE_INT, MPI_MAXLOC, ctx.world));
  double rel = r.max_rel_l2, grel = 0;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&rel, &grel, 1, MPI_DOUBLE, MPI_MAX, ctx.world));
  long long worst = r.worst_token;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Bcast(&worst, 1, MPI_LONG_LONG, best.rank, ctx.world));
  v.max_normalized = best.val;
  v.max_rel_l2 = grel;
  v.worst_token = worst;
  v.passed = v.max_normalized <= v.tolerance;
  return v;
}

Status RunImpl(const ProcessContext& ctx, int* exit_code) {
  // Everything that can be wrong with the flags is found before any communication, identically on every rank.
  auto cfg_or = LayerConfigFromFlags(ctx.world_size);
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, cfg_or.status()));
  ep::LayerConfig cfg = *std::move(cfg_or);
  WAVEEP_RETURN_IF_ERROR(CheckSameOnAllRanks(ctx, "the command line (flags) or model config",
                                             absl::StrCat(CanonicalFlags(), "|", ModelConfigToJson(cfg.model))));
  const int blas = ChooseBlasThreads(ctx);
  kernels::SetBlasThreads(blas);

  RunPoint p;
  p.cfg = cfg;
  p.tokens_per_rank = absl::GetFlag(FLAGS_tokens_per_rank);
  WAVEEP_ASSIGN_OR_RETURN(p.routing, ep::ParseRoutingMode(absl::GetFlag(FLAGS_routing)));
  p.seed = absl::GetFlag(FLAGS_seed);
  p.steps = absl::GetFlag(FLAGS_steps);
  p.warmup = absl::GetFlag(FLAGS_warmup);
  p.progress = !absl::GetFlag(FLAGS_quiet);
  p.label = cfg.model.name;
  const std::string trace_path = absl::GetFlag(FLAGS_trace);
  GlobalTracer().SetEnabled(!trace_path.empty());

  const ModelConfig& m = cfg.model;
  const int l = m.num_experts / ctx.world_size;
  if (ctx.world_rank == 0 && !absl::GetFlag(FLAGS_quiet)) {
    std::fprintf(stderr, "[waveep] generating weights for %d experts per rank (%.1f MB per rank)...\n", l,
                 3.0 * m.hidden_size * m.moe_intermediate_size * l * 4 / 1e6);
  }
  auto session_or = OpenSession(ctx, p, absl::GetFlag(FLAGS_backend));
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, session_or.status()));
  Session s = *std::move(session_or);
  WAVEEP_ASSIGN_OR_RETURN(StepSeries series, RunSteps(ctx, s, p));
  Summary step = Summarize(series.step_ms), layout = Summarize(series.layout_ms);
  Summary compute = Summarize(series.compute_ms), commt = Summarize(series.comm_ms);
  Summary eff = Summarize(series.efficiency);
  WAVEEP_ASSIGN_OR_RETURN(uint64_t checksum, ep::GlobalChecksum(ctx, s.out.data(), static_cast<int64_t>(s.out.size())));

  VerifySummary v;
  if (absl::GetFlag(FLAGS_verify)) {
    if (ctx.world_rank == 0 && !absl::GetFlag(FLAGS_quiet))
      std::fprintf(stderr, "[waveep] verifying against the dense reference...\n");
    WAVEEP_ASSIGN_OR_RETURN(v, VerifyAllRanks(ctx, cfg, s));
  }
  if (!trace_path.empty()) {
    WAVEEP_ASSIGN_OR_RETURN(std::vector<std::string> frags,
                            GatherStrings(ctx, GlobalTracer().ToChromeEvents(ctx.world_rank)));
    if (ctx.world_rank == 0) WAVEEP_RETURN_IF_ERROR(WriteChromeTrace(trace_path, frags));
  }

  const double tflops = step.median > 0 ? series.flops_per_step / (step.median * 1e-3) / 1e12 : 0;
  const double gbps_per_rank =
      step.median > 0 ? series.bytes_sent_per_step / ctx.world_size / (step.median * 1e-3) / 1e9 : 0;
  char checksum_hex[32];
  std::snprintf(checksum_hex, sizeof(checksum_hex), "%016" PRIx64, checksum);

  if (ctx.world_rank == 0) {
    std::printf("waveep run: model=%s (H=%lld I=%lld E=%d top-%d, %d shared) ranks=%d nodes=%d\n", m.name.c_str(),
                static_cast<long long>(m.hidden_size), static_cast<long long>(m.moe_intermediate_size), m.num_experts,
                m.top_k, cfg.shared_experts ? m.num_shared_experts : 0, ctx.world_size, ctx.num_nodes);
    std::printf("  tokens/rank=%lld experts/rank=%d waves=%d dtype=%s routing=%s backend=%s blas_threads=%d\n",
                static_cast<long long>(p.tokens_per_rank), l, cfg.num_waves,
                std::string(DTypeName(cfg.dispatch_dtype)).c_str(), std::string(ep::RoutingModeName(p.routing)).c_str(),
                absl::GetFlag(FLAGS_backend).c_str(), blas);
    std::printf("  step time   median %.3f ms  min %.3f  max %.3f  (%d steps after %d warm-up)\n", step.median,
                step.min, step.max, p.steps, p.warmup);
    std::printf("  per step    layout %.3f ms  compute busy %.3f ms  comm busy %.3f ms  overlap efficiency %.2f\n",
                layout.median, compute.median, commt.median, eff.median);
    std::printf("  throughput  %.4f TFLOP/s (all ranks)  sent %.2f MB/step  %.3f GB/s per rank\n", tflops,
                series.bytes_sent_per_step / 1e6, gbps_per_rank);
    if (v.ran) {
      std::printf("  verify      %s  max error %.3e (tolerance %.3e)  max rel L2 %.3e  worst token %lld\n",
                  v.passed ? "PASS" : "FAIL", v.max_normalized, v.tolerance, v.max_rel_l2, v.worst_token);
    }
    std::printf("  output_checksum %s\n", checksum_hex);
    if (!trace_path.empty())
      std::printf("  trace       %s (last step; open in https://ui.perfetto.dev)\n", trace_path.c_str());
    std::fflush(stdout);

    if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
      nlohmann::json j;
      j["command"] = "run";
      j["model"] = m.name;
      j["model_config"] = nlohmann::json::parse(ModelConfigToJson(m));
      j["ranks"] = ctx.world_size;
      j["nodes"] = ctx.num_nodes;
      j["tokens_per_rank"] = p.tokens_per_rank;
      j["experts_per_rank"] = l;
      j["waves"] = cfg.num_waves;
      j["dtype"] = std::string(DTypeName(cfg.dispatch_dtype));
      j["routing"] = std::string(ep::RoutingModeName(p.routing));
      j["backend"] = absl::GetFlag(FLAGS_backend);
      j["device"] = cfg.device.ToString();
      j["seed"] = p.seed;
      j["shared_experts"] = cfg.shared_experts;
      j["blas_threads"] = blas;
      j["blas"] = kernels::BlasInfo();
      j["steps"] = p.steps;
      j["warmup"] = p.warmup;
      j["step_ms_median"] = step.median;
      j["step_ms_min"] = step.min;
      j["step_ms_max"] = step.max;
      j["step_ms"] = series.step_ms;
      j["layout_ms_median"] = layout.median;
      j["compute_busy_ms_median"] = compute.median;
      j["comm_busy_ms_median"] = commt.median;
      j["overlap_efficiency_median"] = eff.median;
      j["flops_per_step"] = series.flops_per_step;
      j["tflops"] = tflops;
      j["bytes_sent_per_step"] = series.bytes_sent_per_step;
      j["gbps_sent_per_rank"] = gbps_per_rank;
      j["max_rows_per_rank"] = series.max_rows_per_rank;
      if (v.ran) {
        j["verify_passed"] = v.passed;
        j["verify_max_rel_err"] = v.max_normalized;
        j["verify_max_rel_l2"] = v.max_rel_l2;
        j["verify_tolerance"] = v.tolerance;
        j["verify_worst_token"] = v.worst_token;
      }
      j["output_checksum"] = checksum_hex;
      WAVEEP_RETURN_IF_ERROR(WriteTextFile(path, j.dump(2) + "\n"));
    }
  }
  if (v.ran && !v.passed) {
    if (ctx.world_rank == 0)
      std::fprintf(stderr, "waveep run: error: verification FAILED: max error %.3e > tolerance %.3e (token %lld)\n",
                   v.max_normalized, v.tolerance, v.worst_token);
    *exit_code = kCheckFailed;
  }
  return absl::OkStatus();
}

}  // namespace

int RunMain(const ProcessContext& ctx) {
  int code = kOk;
  Status s = RunImpl(ctx, &code);
  if (!s.ok()) {
    ReportError(ctx, "run", s);
    return ExitCodeFor(s);
  }
  return code;
}

}  // namespace waveep::cli
