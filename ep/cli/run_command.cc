// Copyright 2026 The waveep Authors.
//
// `waveep run`: MoE layer steps on a preset with synthetic weights/tokens, or on one layer of a safetensors
// checkpoint (--checkpoint, --layer) with real hidden states (--input) and the output written back (--output);
// summary, --verify, --json, --trace.
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <filesystem>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "ep/cli/driver.h"
#include "kernels/kernels.h"
#include "nlohmann/json.hpp"

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

Status RunImpl(const ProcessContext& ctx, int* exit_code) {
  // Everything that can be wrong with the flags is found before any communication, identically on every rank.
  auto cfg_or = ConfigFromFlags(ctx);
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
  Sources src;
  src.checkpoint = absl::GetFlag(FLAGS_checkpoint);
  src.input = absl::GetFlag(FLAGS_input);
  src.routing = std::string(ep::RoutingModeName(p.routing));
  src.total_tokens = p.tokens_per_rank * ctx.world_size;
  const std::string output_path = absl::GetFlag(FLAGS_output);
  const bool custom = !src.checkpoint.empty() || !src.input.empty();
  if (ctx.world_rank == 0 && !absl::GetFlag(FLAGS_quiet)) {
    std::fprintf(stderr, "[waveep] %s weights for %d experts per rank (%.1f MB per rank)...\n",
                 src.checkpoint.empty() ? "generating" : "loading", l,
                 3.0 * m.hidden_size * m.moe_intermediate_size * l * 4 / 1e6);
  }
  auto session_or = custom ? OpenCustomSession(ctx, p, absl::GetFlag(FLAGS_backend), &src)
                           : OpenSession(ctx, p, absl::GetFlag(FLAGS_backend));
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, session_or.status()));
  Session s = *std::move(session_or);
  if (src.ckpt != nullptr && ctx.world_rank == 0) {
    for (const std::string& note : src.ckpt->notes()) std::fprintf(stderr, "[waveep] note: %s\n", note.c_str());
  }
  // Token counts per rank (uneven with --input).
  long long my_tokens = s.batch.num_tokens, min_tokens = 0, max_tokens = 0;
  WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &my_tokens, &min_tokens, 1, MPI_LONG_LONG, MPI_MIN, "tokens per rank"));
  WAVEEP_RETURN_IF_ERROR(Allreduce(ctx, &my_tokens, &max_tokens, 1, MPI_LONG_LONG, MPI_MAX, "tokens per rank"));
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
  if (!output_path.empty()) {
    std::map<std::string, std::string> md = {
        {"format", "waveep run output"},
        {"model_config", ModelConfigToJson(m)},
        {"dispatch_dtype", std::string(DTypeName(cfg.dispatch_dtype))},
        {"shared_experts", cfg.shared_experts ? "true" : "false"},
        {"ranks", absl::StrCat(ctx.world_size)},
        {"waves", absl::StrCat(cfg.num_waves)},
        {"routing", src.routing},
        {"checkpoint", src.checkpoint},
        {"layer", src.ckpt != nullptr ? absl::StrCat(src.ckpt->layer()) : ""},
        {"input", src.input},
        {"seed", absl::StrCat(p.seed)},
    };
    WAVEEP_RETURN_IF_ERROR(ep::WriteTokenOutputs(ctx, output_path, s.batch, s.out.data(), md));
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
    if (min_tokens == max_tokens) {
      std::printf("  tokens/rank=%lld", max_tokens);
    } else {
      std::printf("  tokens/rank=%lld-%lld", min_tokens, max_tokens);
    }
    std::printf(" experts/rank=%d waves=%d dtype=%s routing=%s backend=%s blas_threads=%d\n", l, cfg.num_waves,
                std::string(DTypeName(cfg.dispatch_dtype)).c_str(), src.routing.c_str(),
                absl::GetFlag(FLAGS_backend).c_str(), blas);
    if (src.ckpt != nullptr) {
      std::printf("  checkpoint  %s layer %d (%s naming, %s weights): read %.2f MB max per rank, %.2f MB all ranks\n",
                  src.checkpoint.c_str(), src.ckpt->layer(),
                  std::string(ep::CheckpointFamilyName(src.ckpt->family())).c_str(), src.weight_dtype.c_str(),
                  src.bytes_read_max / 1e6, src.bytes_read_total / 1e6);
    }
    if (!src.input.empty()) {
      std::printf("  input       %s: %lld tokens, routing from %s\n", src.input.c_str(),
                  static_cast<long long>(src.total_tokens), src.routing == "file" ? "the file" : "the router");
    }
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
    if (!output_path.empty())
      std::printf("  output      %s (output [%lld, %lld] F32, topk_idx, topk_weights)\n", output_path.c_str(),
                  static_cast<long long>(src.total_tokens), static_cast<long long>(m.hidden_size));
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
      j["launcher"] = ctx.launcher;
      j["tokens_per_rank"] = custom ? max_tokens : p.tokens_per_rank;
      j["total_tokens"] = src.total_tokens;
      j["routing_source"] = src.routing;
      if (src.ckpt != nullptr) {
        j["checkpoint"] = src.checkpoint;
        j["layer"] = src.ckpt->layer();
        j["checkpoint_family"] = std::string(ep::CheckpointFamilyName(src.ckpt->family()));
        j["checkpoint_weight_dtype"] = src.weight_dtype;
        j["checkpoint_bytes_read_max_rank"] = src.bytes_read_max;
        j["checkpoint_bytes_read_total"] = src.bytes_read_total;
      }
      if (!src.input.empty()) j["input"] = src.input;
      if (!output_path.empty()) j["output"] = output_path;
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
