// Copyright 2026 The waveep Authors.
//
// `waveep bench`: scaling sweeps. For every (model, tokens per rank) the layer is built once and the wave counts are
// interleaved step by step (W=1, W=2, ..., W=1, W=2, ...), so the speedup over W=1 is measured in the same run under
// the same machine noise. Table on stdout (rank 0), progress on stderr, --csv / --json files.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <sstream>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "ep/cli/bench_internal.h"
#include "ep/cli/driver.h"
#include "ep/cli/flag_values.h"
#include "kernels/kernels.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, models, "tiny", "Comma-separated model presets (or JSON paths) to sweep");
ABSL_FLAG(std::string, waves_list, "1,2,4,8", "Comma-separated wave counts; 1 (the baseline) is always added");
ABSL_FLAG(std::string, tokens_list, "128,512", "Comma-separated tokens per rank");
ABSL_FLAG(std::string, csv, "", "Write the table as CSV to this file");
ABSL_FLAG(std::string, dedup_list, "1",
          "Comma-separated dispatch deduplication settings to measure side by side: 1 or on (--dedup_hosts decides "
          "per host or per rank), host (per destination host across hosts, per rank inside one), rank (per "
          "destination rank), 0 or off; e.g. host,rank,off");

namespace waveep::cli {

std::vector<std::string> BenchFlagNames() {
  return {"models", "waves_list", "tokens_list", "steps",   "warmup", "dtype",     "routing",      "seed",
          "csv",    "json",       "cluster",     "backend", "device", "timeout_s", "blas_threads", "shared_experts",
          "quiet",  "dedup_list", "dedup_hosts"};
}

namespace {

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

// One --dedup_list entry: LayerConfig::dedup and dedup_hosts.
struct DedupSetting {
  bool dedup = true;
  bool hosts = true;
  bool operator==(const DedupSetting& o) const { return dedup == o.dedup && hosts == o.hosts; }
};

// What the flags ask `waveep bench` to measure: models x tokens per rank x wave counts (W = 1 always included).
struct BenchPlan {
  std::vector<std::string> models;
  std::vector<int64_t> tokens;
  std::vector<int64_t> waves;       // sorted, unique, with 1
  std::vector<DedupSetting> dedup;  // deduplication settings, in the order given
  ep::RoutingMode routing = ep::RoutingMode::kGate;
};

StatusOr<BenchPlan> BenchPlanFromFlags(const ProcessContext& ctx) {
  WAVEEP_RETURN_IF_ERROR(CheckSameOnAllRanks(
      ctx, "the command line (flags)",
      absl::StrCat(CanonicalFlags(), absl::GetFlag(FLAGS_models), absl::GetFlag(FLAGS_waves_list),
                   absl::GetFlag(FLAGS_tokens_list), absl::GetFlag(FLAGS_cluster), absl::GetFlag(FLAGS_dedup_list))));
  BenchPlan plan;
  WAVEEP_ASSIGN_OR_RETURN(plan.waves, ParseIntList("waves_list", absl::GetFlag(FLAGS_waves_list)));
  WAVEEP_ASSIGN_OR_RETURN(plan.tokens, ParseIntList("tokens_list", absl::GetFlag(FLAGS_tokens_list)));
  std::vector<int64_t>& waves = plan.waves;
  if (std::find(waves.begin(), waves.end(), 1) == waves.end()) waves.insert(waves.begin(), 1);
  std::sort(waves.begin(), waves.end());
  waves.erase(std::unique(waves.begin(), waves.end()), waves.end());
  for (int64_t t : plan.tokens)
    if (t < 0) return absl::InvalidArgumentError(absl::StrCat("--tokens_list: tokens per rank must be >= 0, got ", t));
  for (absl::string_view v : absl::StrSplit(absl::GetFlag(FLAGS_dedup_list), ',', absl::SkipEmpty())) {
    v = absl::StripAsciiWhitespace(v);
    DedupSetting d;
    if (v == "0" || v == "off") {
      d = {false, false};
    } else if (v == "1" || v == "on") {
      d = {true, absl::GetFlag(FLAGS_dedup_hosts)};
    } else if (v == "rank") {
      d = {true, false};
    } else if (v == "host") {
      d = {true, true};
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--dedup_list: '", v, "' is not one of 1, on, host, rank, 0, off"));
    }
    if (std::find(plan.dedup.begin(), plan.dedup.end(), d) == plan.dedup.end()) plan.dedup.push_back(d);
  }
  if (plan.dedup.empty()) return absl::InvalidArgumentError("--dedup_list is empty");
  plan.models = absl::StrSplit(absl::GetFlag(FLAGS_models), ',', absl::SkipEmpty());
  if (plan.models.empty()) return absl::InvalidArgumentError("--models is empty");
  return plan;
}

// One model's layer config (W = 1) and the wave counts of the plan it can run (others are skipped with a note),
// after every rank agreed that the layer fits in memory at every token count.
StatusOr<std::pair<ep::LayerConfig, std::vector<int>>> BenchModel(const ProcessContext& ctx, const BenchPlan& plan,
                                                                  const std::string& model_name, bool quiet) {
  ep::LayerConfig cfg;
  WAVEEP_ASSIGN_OR_RETURN(cfg.model, LoadModelConfig(model_name));
  WAVEEP_ASSIGN_OR_RETURN(cfg.dispatch_dtype, ParseDType(absl::GetFlag(FLAGS_dtype)));
  cfg.shared_experts = absl::GetFlag(FLAGS_shared_experts);
  cfg.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  WAVEEP_ASSIGN_OR_RETURN(cfg.device, DeviceFromFlag(ctx));
  std::vector<int> model_waves;
  for (int64_t w : plan.waves) {
    if (w < 1 || w > INT_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("--waves_list: ", w, " is not a wave count (need >= 1)"));
    }
    cfg.num_waves = static_cast<int>(w);
    Status ok = ep::ValidateLayerConfig(cfg, ctx.world_size);
    if (!ok.ok()) {
      if (w == 1) return ok;
      if (ctx.world_rank == 0 && !quiet)
        std::fprintf(stderr, "[waveep] %s: skipping waves=%lld (%s)\n", model_name.c_str(), static_cast<long long>(w),
                     std::string(ok.message()).c_str());
      continue;
    }
    model_waves.push_back(static_cast<int>(w));
  }
  cfg.num_waves = 1;
  // Free memory differs between nodes: every rank must learn of a rank that cannot fit the layer (a failure on
  // one rank only would leave the others waiting in the next collective until --timeout_s).
  Status fits;
  for (int64_t t : plan.tokens) {
    if (fits.ok()) fits = ep::CheckLayerFitsInMemory(cfg, ctx.world_size, t);
  }
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, fits));
  return std::make_pair(cfg, model_waves);
}

// --warmup + --steps rounds on one session; each round runs every (dedup setting, wave count) once, interleaved so
// every configuration sees the same machine state. One series per configuration: index d * waves + i.
StatusOr<std::vector<StepSeries>> MeasureWaves(const ProcessContext& ctx, Session& s, RunPoint p,
                                               const std::vector<DedupSetting>& dedup,
                                               const std::vector<int>& model_waves) {
  const int steps = absl::GetFlag(FLAGS_steps), warmup = absl::GetFlag(FLAGS_warmup);
  std::vector<StepSeries> series(dedup.size() * model_waves.size());
  for (int rep = 0; rep < warmup + steps; ++rep) {
    for (size_t c = 0; c < series.size(); ++c) {
      const size_t i = c % model_waves.size();
      const DedupSetting want = dedup[c / model_waves.size()];
      if (s.layer->config().dedup != want.dedup || s.layer->config().dedup_hosts != want.hosts)
        WAVEEP_RETURN_IF_ERROR(s.layer->SetDedup(want.dedup, want.hosts));
      WAVEEP_RETURN_IF_ERROR(s.layer->SetNumWaves(model_waves[i]));
      p.steps = 1;
      p.warmup = rep < warmup ? 1 : 0;
      if (rep < warmup) p.steps = 0;
      WAVEEP_ASSIGN_OR_RETURN(StepSeries one, RunSteps(ctx, s, p));
      StepSeries& acc = series[c];
      for (size_t k = 0; k < one.step_ms.size(); ++k) {
        acc.step_ms.push_back(one.step_ms[k]);
        acc.layout_ms.push_back(one.layout_ms[k]);
        acc.compute_ms.push_back(one.compute_ms[k]);
        acc.comm_ms.push_back(one.comm_ms[k]);
        acc.efficiency.push_back(one.efficiency[k]);
        acc.flops_per_step = one.flops_per_step;
        acc.bytes_sent_per_step = one.bytes_sent_per_step;
        acc.dispatch_bytes_per_step = one.dispatch_bytes_per_step;
        acc.internode_bytes_per_step = one.internode_bytes_per_step;
        acc.dedup = one.dedup;
        acc.hierarchical = one.hierarchical;
      }
    }
  }
  return series;
}

// One row of the table: W's series against the W = 1 median `base_median`.
BenchRow MakeBenchRow(const ProcessContext& ctx, const ep::LayerConfig& cfg, int64_t tokens, int waves,
                      const StepSeries& series, double base_median) {
  BenchRow r;
  r.dedup = series.dedup;
  r.dedup_hosts = series.hierarchical;
  r.mb_per_step = series.bytes_sent_per_step / 1e6;
  r.dispatch_mb_per_step = series.dispatch_bytes_per_step / 1e6;
  r.internode_mb_per_step = series.internode_bytes_per_step / 1e6;
  r.model = cfg.model.name;
  r.ranks = ctx.world_size;
  r.nodes = ctx.num_nodes;
  r.tokens_per_rank = tokens;
  r.waves = waves;
  r.dtype = std::string(DTypeName(cfg.dispatch_dtype));
  Summary st = Summarize(series.step_ms);
  r.step_ms_median = st.median;
  r.step_ms_min = st.min;
  r.step_ms_max = st.max;
  r.speedup = st.median > 0 ? base_median / st.median : 0;
  r.compute_ms = Summarize(series.compute_ms).median;
  r.comm_ms = Summarize(series.comm_ms).median;
  r.overlap_efficiency = Summarize(series.efficiency).median;
  r.tflops = st.median > 0 ? series.flops_per_step / (st.median * 1e-3) / 1e12 : 0;
  r.gbps_per_rank = st.median > 0 ? series.bytes_sent_per_step / ctx.world_size / (st.median * 1e-3) / 1e9 : 0;
  return r;
}

// The table on stdout, --csv and --json (rank 0).
Status ReportBench(const ProcessContext& ctx, const std::vector<BenchRow>& rows, int blas) {
  std::printf("%s", FormatBenchTable(rows, blas).c_str());
  std::fflush(stdout);
  if (const std::string path = absl::GetFlag(FLAGS_csv); !path.empty()) {
    WAVEEP_RETURN_IF_ERROR(WriteTextFile(path, BenchCsv(rows)));
  }
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    nlohmann::json j;
    j["command"] = "bench";
    j["ranks"] = ctx.world_size;
    j["nodes"] = ctx.num_nodes;
    j["launcher"] = ctx.launcher;
    j["blas"] = kernels::BlasInfo();
    j["blas_threads"] = blas;
    j["steps"] = absl::GetFlag(FLAGS_steps);
    j["warmup"] = absl::GetFlag(FLAGS_warmup);
    j["routing"] = absl::GetFlag(FLAGS_routing);
    j["rows"] = nlohmann::json::parse(BenchJsonRows(rows));
    WAVEEP_RETURN_IF_ERROR(WriteTextFile(path, j.dump(2) + "\n"));
  }
  return absl::OkStatus();
}

Status BenchImpl(const ProcessContext& ctx) {
  WAVEEP_ASSIGN_OR_RETURN(BenchPlan plan, BenchPlanFromFlags(ctx));
  const int blas = ChooseBlasThreads(ctx);
  kernels::SetBlasThreads(blas);
  const bool quiet = absl::GetFlag(FLAGS_quiet);
  WAVEEP_ASSIGN_OR_RETURN(plan.routing, ep::ParseRoutingMode(absl::GetFlag(FLAGS_routing)));
  WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<Predictor> predictor, MakePredictor(absl::GetFlag(FLAGS_cluster), ctx));

  std::vector<BenchRow> rows;
  for (const std::string& model_name : plan.models) {
    // Validate the model and every wave count before building anything.
    WAVEEP_ASSIGN_OR_RETURN(auto model, BenchModel(ctx, plan, model_name, quiet));
    const ep::LayerConfig& cfg = model.first;
    const std::vector<int>& model_waves = model.second;
    for (int64_t t : plan.tokens) {
      RunPoint p;
      p.cfg = cfg;
      p.tokens_per_rank = t;
      p.routing = plan.routing;
      p.seed = absl::GetFlag(FLAGS_seed);
      p.steps = 1;
      p.warmup = 0;
      p.progress = false;
      if (ctx.world_rank == 0 && !quiet)
        std::fprintf(stderr, "[waveep] bench %s tokens/rank=%lld: building layer (%d experts/rank)...\n",
                     model_name.c_str(), static_cast<long long>(t), cfg.model.num_experts / ctx.world_size);
      WAVEEP_ASSIGN_OR_RETURN(Session s, OpenSession(ctx, p, absl::GetFlag(FLAGS_backend)));
      WAVEEP_ASSIGN_OR_RETURN(std::vector<StepSeries> series, MeasureWaves(ctx, s, p, plan.dedup, model_waves));
      for (size_t c = 0; c < series.size(); ++c) {
        const size_t d = c / model_waves.size(), i = c % model_waves.size();
        const double base_median = Summarize(series[d * model_waves.size()].step_ms).median;
        BenchRow r = MakeBenchRow(ctx, cfg, t, model_waves[i], series[c], base_median);
        if (predictor) {
          ep::LayerConfig row_cfg = cfg;
          row_cfg.dedup = r.dedup;
          row_cfg.dedup_hosts = r.dedup_hosts;
          WAVEEP_ASSIGN_OR_RETURN(r.predicted_ms, predictor->StepMs(row_cfg, t, model_waves[i], ctx.world_size));
        }
        rows.push_back(r);
        if (ctx.world_rank == 0 && !quiet)
          std::fprintf(stderr, "[waveep]   waves=%d dedup=%s: median %.3f ms (speedup %.2fx, overlap %.2f)\n", r.waves,
                       DedupModeName(r.dedup, r.dedup_hosts), r.step_ms_median, r.speedup, r.overlap_efficiency);
      }
    }
  }
  if (ctx.world_rank != 0) return absl::OkStatus();
  return ReportBench(ctx, rows, blas);
}

}  // namespace

std::string FormatBenchTable(const std::vector<BenchRow>& rows, int blas_threads) {
  std::ostringstream o;
  o << "waveep bench (blas_threads=" << blas_threads
    << "): speedup is vs waves=1 (same dedup) measured in the same run; MB/step: all ranks, dispatch + combine, "
       "xnode_MB: the part between nodes\n";
  bool pred = false;
  for (const BenchRow& r : rows) pred |= r.predicted_ms > 0;
  char line[512];
  std::snprintf(line, sizeof(line), "%-18s %5s %8s %5s %5s %5s %10s %9s %9s %8s %10s %10s %8s %9s %10s %9s %9s%s\n",
                "model", "ranks", "tok/rank", "dtype", "waves", "dedup", "median_ms", "min_ms", "max_ms", "speedup",
                "compute_ms", "comm_ms", "overlap", "TFLOP/s", "GB/s/rank", "MB/step", "xnode_MB",
                pred ? "  pred_ms  pred/meas" : "");
  o << line;
  for (const BenchRow& r : rows) {
    std::string p = pred ? absl::StrCat("  ", Fmt("%7.3f", r.predicted_ms), "  ",
                                        Fmt("%9.2f", r.step_ms_median > 0 ? r.predicted_ms / r.step_ms_median : 0))
                         : "";
    std::snprintf(
        line, sizeof(line),
        "%-18s %5d %8lld %5s %5d %5s %10.3f %9.3f %9.3f %7.2fx %10.3f %10.3f %8.2f %9.4f %10.3f %9.3f %9.3f%s\n",
        r.model.c_str(), r.ranks, static_cast<long long>(r.tokens_per_rank), r.dtype.c_str(), r.waves,
        DedupModeName(r.dedup, r.dedup_hosts), r.step_ms_median, r.step_ms_min, r.step_ms_max, r.speedup, r.compute_ms,
        r.comm_ms, r.overlap_efficiency, r.tflops, r.gbps_per_rank, r.mb_per_step, r.internode_mb_per_step, p.c_str());
    o << line;
  }
  return o.str();
}

std::string BenchCsv(const std::vector<BenchRow>& rows) {
  std::ostringstream o;
  o << "model,ranks,tokens_per_rank,dtype,waves,step_ms_median,step_ms_min,step_ms_max,speedup,compute_ms,comm_ms,"
       "overlap_efficiency,tflops,gbps_per_rank,predicted_ms,nodes,dedup,mb_per_step,dispatch_mb_per_step,"
       "internode_mb_per_step,dedup_hosts\n";
  for (const BenchRow& r : rows) {
    o << r.model << ',' << r.ranks << ',' << r.tokens_per_rank << ',' << r.dtype << ',' << r.waves << ','
      << r.step_ms_median << ',' << r.step_ms_min << ',' << r.step_ms_max << ',' << r.speedup << ',' << r.compute_ms
      << ',' << r.comm_ms << ',' << r.overlap_efficiency << ',' << r.tflops << ',' << r.gbps_per_rank << ','
      << r.predicted_ms << ',' << r.nodes << ',' << (r.dedup ? 1 : 0) << ',' << r.mb_per_step << ','
      << r.dispatch_mb_per_step << ',' << r.internode_mb_per_step << ',' << (r.dedup_hosts ? 1 : 0) << '\n';
  }
  return o.str();
}

std::string BenchJsonRows(const std::vector<BenchRow>& rows) {
  nlohmann::json a = nlohmann::json::array();
  for (const BenchRow& r : rows) {
    a.push_back({{"model", r.model},
                 {"ranks", r.ranks},
                 {"tokens_per_rank", r.tokens_per_rank},
                 {"dtype", r.dtype},
                 {"waves", r.waves},
                 {"step_ms_median", r.step_ms_median},
                 {"step_ms_min", r.step_ms_min},
                 {"step_ms_max", r.step_ms_max},
                 {"speedup", r.speedup},
                 {"compute_ms", r.compute_ms},
                 {"comm_ms", r.comm_ms},
                 {"overlap_efficiency", r.overlap_efficiency},
                 {"tflops", r.tflops},
                 {"gbps_per_rank", r.gbps_per_rank},
                 {"predicted_ms", r.predicted_ms},
                 {"nodes", r.nodes},
                 {"dedup", r.dedup},
                 {"dedup_hosts", r.dedup_hosts},
                 {"mb_per_step", r.mb_per_step},
                 {"dispatch_mb_per_step", r.dispatch_mb_per_step},
                 {"internode_mb_per_step", r.internode_mb_per_step}});
  }
  return a.dump();
}

int BenchMain(const ProcessContext& ctx) {
  Status s = BenchImpl(ctx);
  if (!s.ok()) {
    ReportError(ctx, "bench", s);
    return ExitCodeFor(s);
  }
  return kOk;
}

}  // namespace waveep::cli
