// Copyright 2026 The waveep Authors.
//
// `waveep run`: MoE layer steps on a preset with synthetic weights/tokens, or on one layer of a safetensors
// checkpoint (--checkpoint, --layer) with real hidden states (--input) and the output written back (--output);
// summary, --verify, --json, --trace.
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <map>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "ep/cli/driver.h"
#include "ep/io/io.h"
#include "kernels/kernels.h"
#include "nlohmann/json.hpp"
#include "runtime/mpi_context.h"

ABSL_DECLARE_FLAG(std::string, checkpoint);
ABSL_DECLARE_FLAG(int, layer);
ABSL_DECLARE_FLAG(std::string, input);
ABSL_DECLARE_FLAG(std::string, output);

namespace waveep::cli {
namespace {

// Where the weights and tokens of a run come from (for the summary and --json).
struct Sources {
  std::string checkpoint;                       // "" = synthetic weights
  const ep::CheckpointWeights* ckpt = nullptr;  // owned by the session
  std::string weight_dtype;                     // safetensors dtype of this rank's first expert
  std::string input;                            // "" = synthetic tokens
  int64_t total_tokens = 0;
  std::string routing;  // "file", "router" (checkpoint gate), or the synthetic routing mode
  // Checkpoint data bytes read while building the layer: max over ranks, sum over ranks.
  double bytes_read_max = 0, bytes_read_total = 0;
};

// The layer config from the flags; with --checkpoint the model is its config.json when there is one.
StatusOr<ep::LayerConfig> ConfigFromFlags(const ProcessContext& ctx) {
  const int num_ranks = ctx.world_size;
  const std::string dir = absl::GetFlag(FLAGS_checkpoint);
  bool from_checkpoint = false;
  if (!dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec))
      return absl::NotFoundError(absl::StrCat("--checkpoint=", dir, ": no such directory"));
    const std::string config = (std::filesystem::path(dir) / "config.json").string();
    if (std::filesystem::exists(config, ec)) {
      // LayerConfigFromFlags validates everything against --model; point it at the checkpoint's config.
      absl::SetFlag(&FLAGS_model, config);
      from_checkpoint = true;
    }
  }
  if (absl::GetFlag(FLAGS_layer) < -1)
    return absl::InvalidArgumentError(absl::StrCat("--layer must be >= 0 (or -1), got ", absl::GetFlag(FLAGS_layer)));
  if (absl::GetFlag(FLAGS_layer) >= 0 && dir.empty()) return absl::InvalidArgumentError("--layer needs --checkpoint");
  WAVEEP_ASSIGN_OR_RETURN(ep::LayerConfig cfg, LayerConfigFromFlags(ctx));
  if (from_checkpoint) {
    WAVEEP_ASSIGN_OR_RETURN(cfg.model, ep::LoadCheckpointConfig(dir));  // same shape, the directory's name
    WAVEEP_RETURN_IF_ERROR(ep::ValidateLayerConfig(cfg, num_ranks));
  }
  return cfg;
}

// Like OpenSession, with checkpoint weights and/or file tokens. Every local step is agreed on before the next
// collective one, so a bad file on any rank fails every rank with the same message instead of hanging.
StatusOr<Session> OpenCustomSession(const ProcessContext& ctx, const RunPoint& p, const std::string& backend,
                                    Sources* src) {
  const ModelConfig& m = p.cfg.model;
  Session s;
  comm::Options opts;
  opts.timeout = p.cfg.timeout;
  WAVEEP_ASSIGN_OR_RETURN(s.comm, comm::CreateCommunicator(backend, ctx, opts));
  const ep::CheckpointWeights* ckpt = nullptr;
  if (!src->checkpoint.empty()) {
    auto w = ep::OpenCheckpoint(src->checkpoint, m, absl::GetFlag(FLAGS_layer));
    WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, w.status()));
    ckpt = w->get();
    s.weights = *std::move(w);
  } else {
    s.weights = ep::MakeSyntheticWeights(m, p.seed);
  }
  src->ckpt = ckpt;

  // Tokens: this rank's rows of --input, or synthetic ones.
  bool need_router = false;
  if (!src->input.empty()) {
    auto in = ep::ReadTokenFile(src->input, m, ctx.world_rank, ctx.world_size);
    WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, in.status()));
    s.batch = std::move(in->batch);
    src->total_tokens = in->total_tokens;
    need_router = !in->has_routing;
    src->routing = in->has_routing ? "file" : "router";
    if (need_router && ckpt == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("--input=", src->input,
                                                     " has no topk_idx / topk_weights and there is no router without "
                                                     "--checkpoint: add the routing to the file or pass --checkpoint"));
    }
  } else {
    auto b = ep::MakeSyntheticBatch(m, p.routing, p.seed, static_cast<int64_t>(ctx.world_rank) * p.tokens_per_rank,
                                    p.tokens_per_rank);
    WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, b.status()));
    s.batch = *std::move(b);
    src->total_tokens = p.tokens_per_rank * ctx.world_size;
    // --routing=gate with a checkpoint: the checkpoint's router on the synthetic hidden states.
    need_router = ckpt != nullptr && p.routing == ep::RoutingMode::kGate && ckpt->has_router();
    src->routing = need_router ? "router" : std::string(ep::RoutingModeName(p.routing));
  }
  if (need_router) {
    std::vector<float> gate, bias;
    Status routed = ckpt->LoadRouter(&gate, &bias);
    if (routed.ok()) routed = ep::RouteWithGate(m, gate.data(), bias.empty() ? nullptr : bias.data(), &s.batch);
    WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, Annotate(routed, "routing the input tokens")));
  }
  WAVEEP_ASSIGN_OR_RETURN(s.layer, ep::MoeLayer::Create(ctx, s.comm.get(), p.cfg, *s.weights));
  if (ckpt != nullptr) {
    // This rank's own first expert: its file is open already (no other rank's file is touched).
    auto dt = ckpt->ExpertDTypeName(ctx.world_rank * (m.num_experts / ctx.world_size));
    src->weight_dtype = dt.ok() ? *dt : "?";
    double mine = static_cast<double>(ckpt->files().bytes_read());
    WAVEEP_RETURN_IF_ERROR(
        Allreduce(ctx, &mine, &src->bytes_read_max, 1, MPI_DOUBLE, MPI_MAX, "checkpoint bytes read"));
    WAVEEP_RETURN_IF_ERROR(
        Allreduce(ctx, &mine, &src->bytes_read_total, 1, MPI_DOUBLE, MPI_SUM, "checkpoint bytes read"));
  }
  s.out.assign(static_cast<size_t>(s.batch.num_tokens * m.hidden_size), 0.0f);
  return s;
}

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
  WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &mine, &best, 1, MPI_DOUBLE_INT, MPI_MAXLOC, "verify: worst error"));
  double rel = r.max_rel_l2, grel = 0;
  WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &rel, &grel, 1, MPI_DOUBLE, MPI_MAX, "verify: relative L2"));
  // The worst rank's token, to everyone (an allreduce rather than a broadcast: bounded like every other collective).
  long long mine_worst = ctx.world_rank == best.rank ? r.worst_token : LLONG_MIN, worst = 0;
  WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &mine_worst, &worst, 1, MPI_LONG_LONG, MPI_MAX, "verify: worst token"));
  v.max_normalized = best.val;
  v.max_rel_l2 = grel;
  v.worst_token = worst;
  v.passed = v.max_normalized <= v.tolerance;
  return v;
}

// What one `waveep run` ran on and measured: everything the summary and --json report.
struct RunReport {
  ep::LayerConfig cfg;
  RunPoint p;
  Sources src;
  std::string backend;
  int blas_threads = 1;
  bool custom = false;        // --checkpoint or --input
  bool dedup = false;         // dispatch deduplication in effect (MoeLayer::dedup())
  bool hierarchical = false;  // ... once per destination host (MoeLayer::hierarchical())
  int ranks = 1, nodes = 1;
  std::string launcher;
  long long min_tokens = 0, max_tokens = 0;  // tokens per rank (uneven with --input)
  StepSeries series;
  Summary step, layout, compute, comm, eff;
  double tflops = 0, gbps_per_rank = 0;
  char checksum_hex[32] = {};
  VerifySummary v;
  std::string output_path, trace_path;
};

// The steps to run from the flags (after the config is agreed on).
StatusOr<RunPoint> RunPointFromFlags(const ep::LayerConfig& cfg) {
  RunPoint p;
  p.cfg = cfg;
  p.tokens_per_rank = absl::GetFlag(FLAGS_tokens_per_rank);
  WAVEEP_ASSIGN_OR_RETURN(p.routing, ep::ParseRoutingMode(absl::GetFlag(FLAGS_routing)));
  p.seed = absl::GetFlag(FLAGS_seed);
  p.steps = absl::GetFlag(FLAGS_steps);
  p.warmup = absl::GetFlag(FLAGS_warmup);
  p.progress = !absl::GetFlag(FLAGS_quiet);
  p.label = cfg.model.name;
  return p;
}

// --output (every rank's rows, written by rank 0) and --trace (every rank's spans). Collective.
Status WriteRunFiles(const ProcessContext& ctx, const RunReport& r, const Session& s) {
  if (!r.output_path.empty()) {
    std::map<std::string, std::string> md = {
        {"format", "waveep run output"},
        {"model_config", ModelConfigToJson(r.cfg.model)},
        {"dispatch_dtype", std::string(DTypeName(r.cfg.dispatch_dtype))},
        {"shared_experts", r.cfg.shared_experts ? "true" : "false"},
        {"ranks", absl::StrCat(r.ranks)},
        {"waves", absl::StrCat(r.cfg.num_waves)},
        {"routing", r.src.routing},
        {"checkpoint", r.src.checkpoint},
        {"layer", r.src.ckpt != nullptr ? absl::StrCat(r.src.ckpt->layer()) : ""},
        {"input", r.src.input},
        {"seed", absl::StrCat(r.p.seed)},
    };
    WAVEEP_RETURN_IF_ERROR(ep::WriteTokenOutputs(ctx, r.output_path, s.batch, s.out.data(), md));
  }
  if (!r.trace_path.empty()) {
    WAVEEP_ASSIGN_OR_RETURN(std::vector<std::string> frags,
                            GatherStrings(ctx, GlobalTracer().ToChromeEvents(ctx.world_rank)));
    if (ctx.world_rank == 0) WAVEEP_RETURN_IF_ERROR(WriteChromeTrace(r.trace_path, frags));
  }
  return absl::OkStatus();
}

// The human summary on stdout (rank 0).
void PrintRunSummary(const RunReport& r) {
  const ModelConfig& m = r.cfg.model;
  const int l = m.num_experts / r.ranks;
  std::printf("waveep run: model=%s (H=%lld I=%lld E=%d top-%d, %d shared) ranks=%d nodes=%d\n", m.name.c_str(),
              static_cast<long long>(m.hidden_size), static_cast<long long>(m.moe_intermediate_size), m.num_experts,
              m.top_k, r.cfg.shared_experts ? m.num_shared_experts : 0, r.ranks, r.nodes);
  if (r.min_tokens == r.max_tokens) {
    std::printf("  tokens/rank=%lld", r.max_tokens);
  } else {
    std::printf("  tokens/rank=%lld-%lld", r.min_tokens, r.max_tokens);
  }
  std::printf(" experts/rank=%d waves=%d dtype=%s routing=%s backend=%s dedup=%s blas_threads=%d\n", l, r.cfg.num_waves,
              std::string(DTypeName(r.cfg.dispatch_dtype)).c_str(), r.src.routing.c_str(), r.backend.c_str(),
              DedupModeName(r.dedup, r.hierarchical), r.blas_threads);
  if (r.src.ckpt != nullptr) {
    std::printf("  checkpoint  %s layer %d (%s naming, %s weights): read %.2f MB max per rank, %.2f MB all ranks\n",
                r.src.checkpoint.c_str(), r.src.ckpt->layer(),
                std::string(ep::CheckpointFamilyName(r.src.ckpt->family())).c_str(), r.src.weight_dtype.c_str(),
                r.src.bytes_read_max / 1e6, r.src.bytes_read_total / 1e6);
  }
  if (!r.src.input.empty()) {
    std::printf("  input       %s: %lld tokens, routing from %s\n", r.src.input.c_str(),
                static_cast<long long>(r.src.total_tokens), r.src.routing == "file" ? "the file" : "the router");
  }
  std::printf("  step time   median %.3f ms  min %.3f  max %.3f  (%d steps after %d warm-up)\n", r.step.median,
              r.step.min, r.step.max, r.p.steps, r.p.warmup);
  std::printf("  per step    layout %.3f ms  compute busy %.3f ms  comm busy %.3f ms  overlap efficiency %.2f\n",
              r.layout.median, r.compute.median, r.comm.median, r.eff.median);
  std::printf("  throughput  %.4f TFLOP/s (all ranks)  sent %.2f MB/step  %.3f GB/s per rank\n", r.tflops,
              r.series.bytes_sent_per_step / 1e6, r.gbps_per_rank);
  std::printf("  sent        dispatch %.2f MB/step  combine %.2f MB/step  to other nodes %.2f MB/step\n",
              r.series.dispatch_bytes_per_step / 1e6,
              (r.series.bytes_sent_per_step - r.series.dispatch_bytes_per_step) / 1e6,
              r.series.internode_bytes_per_step / 1e6);
  if (r.v.ran) {
    std::printf("  verify      %s  max error %.3e (tolerance %.3e)  max rel L2 %.3e  worst token %lld\n",
                r.v.passed ? "PASS" : "FAIL", r.v.max_normalized, r.v.tolerance, r.v.max_rel_l2, r.v.worst_token);
  }
  // On CPU the low-order bits of the expert GEMMs depend on the BLAS kernel (OpenBLAS picks one per CPU), so the
  // line names it: checksums compare only between runs on the same kernel.
  const std::string core = r.cfg.device.is_cpu() ? kernels::BlasCoreName() : "";
  std::printf("  output_checksum %s%s\n", r.checksum_hex,
              core.empty() ? "" : absl::StrCat("  (BLAS kernel ", core, ")").c_str());
  if (!r.output_path.empty())
    std::printf("  output      %s (output [%lld, %lld] F32, topk_idx, topk_weights)\n", r.output_path.c_str(),
                static_cast<long long>(r.src.total_tokens), static_cast<long long>(m.hidden_size));
  if (!r.trace_path.empty())
    std::printf("  trace       %s (last step; open in https://ui.perfetto.dev)\n", r.trace_path.c_str());
  std::fflush(stdout);
}

// --json: the same figures, machine-readable.
nlohmann::json RunReportToJson(const RunReport& r) {
  const ModelConfig& m = r.cfg.model;
  nlohmann::json j;
  j["command"] = "run";
  j["model"] = m.name;
  j["model_config"] = nlohmann::json::parse(ModelConfigToJson(m));
  j["ranks"] = r.ranks;
  j["nodes"] = r.nodes;
  j["launcher"] = r.launcher;
  j["tokens_per_rank"] = r.custom ? r.max_tokens : r.p.tokens_per_rank;
  j["total_tokens"] = r.src.total_tokens;
  j["routing_source"] = r.src.routing;
  if (r.src.ckpt != nullptr) {
    j["checkpoint"] = r.src.checkpoint;
    j["layer"] = r.src.ckpt->layer();
    j["checkpoint_family"] = std::string(ep::CheckpointFamilyName(r.src.ckpt->family()));
    j["checkpoint_weight_dtype"] = r.src.weight_dtype;
    j["checkpoint_bytes_read_max_rank"] = r.src.bytes_read_max;
    j["checkpoint_bytes_read_total"] = r.src.bytes_read_total;
  }
  if (!r.src.input.empty()) j["input"] = r.src.input;
  if (!r.output_path.empty()) j["output"] = r.output_path;
  j["experts_per_rank"] = m.num_experts / r.ranks;
  j["waves"] = r.cfg.num_waves;
  j["dtype"] = std::string(DTypeName(r.cfg.dispatch_dtype));
  j["routing"] = std::string(ep::RoutingModeName(r.p.routing));
  j["backend"] = r.backend;
  j["device"] = r.cfg.device.ToString();
  j["seed"] = r.p.seed;
  j["shared_experts"] = r.cfg.shared_experts;
  j["blas_threads"] = r.blas_threads;
  j["blas"] = kernels::BlasInfo();
  j["blas_core"] = kernels::BlasCoreName();  // the checksum depends on it on CPU
  j["steps"] = r.p.steps;
  j["warmup"] = r.p.warmup;
  j["step_ms_median"] = r.step.median;
  j["step_ms_min"] = r.step.min;
  j["step_ms_max"] = r.step.max;
  j["step_ms"] = r.series.step_ms;
  j["layout_ms_median"] = r.layout.median;
  j["compute_busy_ms_median"] = r.compute.median;
  j["comm_busy_ms_median"] = r.comm.median;
  j["overlap_efficiency_median"] = r.eff.median;
  j["flops_per_step"] = r.series.flops_per_step;
  j["tflops"] = r.tflops;
  j["bytes_sent_per_step"] = r.series.bytes_sent_per_step;
  j["dedup"] = r.dedup;
  j["dedup_hosts"] = r.hierarchical;
  j["dispatch_bytes_per_step"] = r.series.dispatch_bytes_per_step;
  j["internode_bytes_per_step"] = r.series.internode_bytes_per_step;
  j["gbps_sent_per_rank"] = r.gbps_per_rank;
  j["max_rows_per_rank"] = r.series.max_rows_per_rank;
  if (r.v.ran) {
    j["verify_passed"] = r.v.passed;
    j["verify_max_rel_err"] = r.v.max_normalized;
    j["verify_max_rel_l2"] = r.v.max_rel_l2;
    j["verify_tolerance"] = r.v.tolerance;
    j["verify_worst_token"] = r.v.worst_token;
  }
  j["output_checksum"] = r.checksum_hex;
  return j;
}

Status RunImpl(const ProcessContext& ctx, int* exit_code) {
  // Everything that can be wrong with the flags is found before any communication, identically on every rank.
  auto cfg_or = ConfigFromFlags(ctx);
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, cfg_or.status()));
  RunReport r;
  r.cfg = *std::move(cfg_or);
  WAVEEP_RETURN_IF_ERROR(CheckSameOnAllRanks(ctx, "the command line (flags) or model config",
                                             absl::StrCat(CanonicalFlags(), "|", ModelConfigToJson(r.cfg.model))));
  r.blas_threads = ChooseBlasThreads(ctx);
  kernels::SetBlasThreads(r.blas_threads);
  WAVEEP_ASSIGN_OR_RETURN(r.p, RunPointFromFlags(r.cfg));
  r.trace_path = absl::GetFlag(FLAGS_trace);
  GlobalTracer().SetEnabled(!r.trace_path.empty());
  r.backend = absl::GetFlag(FLAGS_backend);
  r.ranks = ctx.world_size;
  r.nodes = ctx.num_nodes;
  r.launcher = ctx.launcher;

  const ModelConfig& m = r.cfg.model;
  r.src.checkpoint = absl::GetFlag(FLAGS_checkpoint);
  r.src.input = absl::GetFlag(FLAGS_input);
  r.src.routing = std::string(ep::RoutingModeName(r.p.routing));
  r.src.total_tokens = r.p.tokens_per_rank * ctx.world_size;
  r.output_path = absl::GetFlag(FLAGS_output);
  r.custom = !r.src.checkpoint.empty() || !r.src.input.empty();
  if (ctx.world_rank == 0 && !absl::GetFlag(FLAGS_quiet)) {
    const int l = m.num_experts / ctx.world_size;
    std::fprintf(stderr, "[waveep] %s weights for %d experts per rank (%.1f MB per rank)...\n",
                 r.src.checkpoint.empty() ? "generating" : "loading", l,
                 3.0 * m.hidden_size * m.moe_intermediate_size * l * 4 / 1e6);
  }
  auto session_or = r.custom ? OpenCustomSession(ctx, r.p, r.backend, &r.src) : OpenSession(ctx, r.p, r.backend);
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, session_or.status()));
  Session s = *std::move(session_or);
  r.dedup = s.layer->dedup();
  r.hierarchical = s.layer->hierarchical();
  if (r.src.ckpt != nullptr && ctx.world_rank == 0) {
    for (const std::string& note : r.src.ckpt->notes()) std::fprintf(stderr, "[waveep] note: %s\n", note.c_str());
  }
  long long my_tokens = s.batch.num_tokens;
  WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &my_tokens, &r.min_tokens, 1, MPI_LONG_LONG, MPI_MIN, "tokens per rank"));
  WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &my_tokens, &r.max_tokens, 1, MPI_LONG_LONG, MPI_MAX, "tokens per rank"));

  WAVEEP_ASSIGN_OR_RETURN(r.series, RunSteps(ctx, s, r.p));
  r.step = Summarize(r.series.step_ms);
  r.layout = Summarize(r.series.layout_ms);
  r.compute = Summarize(r.series.compute_ms);
  r.comm = Summarize(r.series.comm_ms);
  r.eff = Summarize(r.series.efficiency);
  WAVEEP_ASSIGN_OR_RETURN(uint64_t checksum, ep::GlobalChecksum(ctx, s.out.data(), static_cast<int64_t>(s.out.size())));
  std::snprintf(r.checksum_hex, sizeof(r.checksum_hex), "%016" PRIx64, checksum);
  if (absl::GetFlag(FLAGS_verify)) {
    if (ctx.world_rank == 0 && !absl::GetFlag(FLAGS_quiet))
      std::fprintf(stderr, "[waveep] verifying against the dense reference...\n");
    WAVEEP_ASSIGN_OR_RETURN(r.v, VerifyAllRanks(ctx, r.cfg, s));
  }
  WAVEEP_RETURN_IF_ERROR(WriteRunFiles(ctx, r, s));
  r.tflops = r.step.median > 0 ? r.series.flops_per_step / (r.step.median * 1e-3) / 1e12 : 0;
  r.gbps_per_rank =
      r.step.median > 0 ? r.series.bytes_sent_per_step / ctx.world_size / (r.step.median * 1e-3) / 1e9 : 0;

  if (ctx.world_rank == 0) {
    PrintRunSummary(r);
    if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty())
      WAVEEP_RETURN_IF_ERROR(WriteTextFile(path, RunReportToJson(r).dump(2) + "\n"));
  }
  if (r.v.ran && !r.v.passed) {
    if (ctx.world_rank == 0)
      std::fprintf(stderr, "waveep run: error: verification FAILED: max error %.3e > tolerance %.3e (token %lld)\n",
                   r.v.max_normalized, r.v.tolerance, r.v.worst_token);
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
