// Copyright 2026 The waveep Authors.
//
// `waveep topo probe|check|model|tune`: the topology module on the command line. Everything is computed on every
// rank (cheap, and identical by construction); rank 0 prints and writes files. `probe` (and `--probe` on the
// others) is collective: launch it under mpirun with the ranks you want measured.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "ep/cli/cli.h"
#include "nlohmann/json.hpp"
#include "topology/topology.h"

// NOTES: --cluster is defined in flags.cc (same meaning for bench: a preset name or a cluster JSON file); one
// definition per binary, so topo reuses it.
ABSL_FLAG(bool, probe, false, "check/model/tune: measure the cluster this job runs on first (collective, as `probe`)");
ABSL_FLAG(bool, strict, false, "check: exit 3 when any link is comm-bound");
ABSL_FLAG(int, nodes, 0, "Replicate the cluster's node to this many nodes (0 = as described)");
ABSL_FLAG(int, ranks, 0, "EP group size (ranks on devices 0..N-1, filling nodes in order); 0 = every device");
ABSL_FLAG(int, max_waves, 0, "model: predict W = 1..this (0 = min(experts per rank, 16))");
ABSL_FLAG(std::string, wave_split, "experts",
          "model: what waves split — experts (waveep's scheduler) or tokens (schedulers that cut every expert's rows)");
ABSL_FLAG(bool, all_links, false, "check: one row per link instance instead of one per group of identical links");
ABSL_FLAG(std::string, out, "cluster-probed.json", "probe: where to write the measured cluster JSON");
ABSL_FLAG(int64_t, probe_min_bytes, 1024, "probe: smallest all-to-all block per peer (bytes)");
ABSL_FLAG(int64_t, probe_max_bytes, 64ll << 20, "probe: largest all-to-all block per peer (bytes); doubling sizes");
ABSL_FLAG(int, probe_iters, 20, "probe: timed iterations per all-to-all size (x5 for blocks <= 64 KiB)");
ABSL_FLAG(int, probe_warmup, 2, "probe: untimed iterations before each measurement");
ABSL_FLAG(double, probe_round_ms, 5,
          "probe: each of the all-to-all sweep's 5 timing rounds per method and size lasts at least this long (small "
          "blocks run more iterations)");
ABSL_FLAG(int64_t, probe_pair_bytes, 4ll << 20, "probe: message size of the pairwise bandwidth test (bytes)");
ABSL_FLAG(int, probe_pair_iters, 10, "probe: messages per pairwise bandwidth test (x10 ping-pongs for latency)");
ABSL_FLAG(std::vector<std::string>, probe_compare, {},
          "probe: more comm backends (comma-separated, e.g. mpi,ucx) timed in the all-to-all sweep beside --backend "
          "and MPI_Alltoallv, same buffers and sizes; the cluster's links still come from --backend");
ABSL_FLAG(int, probe_gemm_max_rows, 256, "probe: GEMM-rate probe runs M = 1, 2, 4, .. this rows per expert");
ABSL_FLAG(double, probe_gemm_min_ms, 20, "probe: each GEMM-rate point runs at least this many milliseconds");

namespace waveep::cli {
namespace {

using nlohmann::ordered_json;

// Flags shown by `waveep topo --help`, in this order.
const std::vector<std::string> kTopoFlags = {"model",
                                             "cluster",
                                             "probe",
                                             "dtype",
                                             "tokens_per_rank",
                                             "ranks",
                                             "nodes",
                                             "strict",
                                             "json",
                                             "all_links",
                                             "dedup",
                                             "dedup_hosts",
                                             "max_waves",
                                             "wave_split",
                                             "out",
                                             "backend",
                                             "probe_min_bytes",
                                             "probe_max_bytes",
                                             "probe_iters",
                                             "probe_warmup",
                                             "probe_round_ms",
                                             "probe_pair_bytes",
                                             "probe_pair_iters",
                                             "probe_compare",
                                             "probe_gemm_max_rows",
                                             "probe_gemm_min_ms",
                                             "blas_threads",
                                             "timeout_s",
                                             "quiet"};

// Every topo flag (kTopoFlags), so that ranks given different command lines fail together instead of diverging
// (e.g. a different --strict would give different exit codes).
std::string CanonicalTopoFlags() {
  std::string out;
  for (const std::string& name : kTopoFlags) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    absl::StrAppend(&out, name, "=", flag != nullptr ? flag->CurrentValue() : "?", ";");
  }
  return out;
}

StatusOr<DType> DtypeFromFlag() {
  WAVEEP_ASSIGN_OR_RETURN(DType t, ParseDType(absl::GetFlag(FLAGS_dtype)));
  if (t != DType::kBF16 && t != DType::kFP8E4M3)
    return absl::InvalidArgumentError(absl::StrCat("--dtype=", absl::GetFlag(FLAGS_dtype), ": use bf16 or fp8"));
  return t;
}

std::string Human(double bytes) {
  if (bytes >= 1e9) return absl::StrFormat("%.2f GB", bytes / 1e9);
  if (bytes >= 1e6) return absl::StrFormat("%.2f MB", bytes / 1e6);
  if (bytes >= 1e3) return absl::StrFormat("%.2f kB", bytes / 1e3);
  return absl::StrFormat("%.0f B", bytes);
}

std::string Sizes(int64_t b) {
  if (b >= (1 << 20) && b % (1 << 20) == 0) return absl::StrCat(b >> 20, " MiB");
  if (b >= 1024 && b % 1024 == 0) return absl::StrCat(b >> 10, " KiB");
  return absl::StrCat(b, " B");
}

topology::ProbeOptions ProbeOptionsFromFlags(const ProcessContext& ctx) {
  topology::ProbeOptions o;
  o.backend = absl::GetFlag(FLAGS_backend);
  o.min_bytes = absl::GetFlag(FLAGS_probe_min_bytes);
  o.max_bytes = absl::GetFlag(FLAGS_probe_max_bytes);
  o.iters = absl::GetFlag(FLAGS_probe_iters);
  o.warmup = absl::GetFlag(FLAGS_probe_warmup);
  o.round_min_ms = absl::GetFlag(FLAGS_probe_round_ms);
  o.pair_bytes = absl::GetFlag(FLAGS_probe_pair_bytes);
  o.pair_iters = absl::GetFlag(FLAGS_probe_pair_iters);
  o.compare_backends = absl::GetFlag(FLAGS_probe_compare);
  o.gemm_max_rows = absl::GetFlag(FLAGS_probe_gemm_max_rows);
  o.gemm_min_ms = absl::GetFlag(FLAGS_probe_gemm_min_ms);
  o.blas_threads = ChooseBlasThreads(ctx);
  o.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  if (!absl::GetFlag(FLAGS_quiet)) {
    o.progress = [](absl::string_view line) {
      std::fprintf(stderr, "%s\n", std::string(line).c_str());
      std::fflush(stderr);
    };
  }
  return o;
}

// The cluster: probed (collective), or loaded; then --nodes.
StatusOr<topology::Cluster> ClusterFromFlags(const ProcessContext& ctx, const ModelConfig& model) {
  const std::string name = absl::GetFlag(FLAGS_cluster);
  topology::Cluster c;
  if (absl::GetFlag(FLAGS_probe)) {
    if (!name.empty()) return absl::InvalidArgumentError("give either --cluster or --probe, not both");
    WAVEEP_ASSIGN_OR_RETURN(c, topology::ProbeCluster(ctx, model, ProbeOptionsFromFlags(ctx)));
  } else {
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--cluster is missing: give a preset (",
                                                     absl::StrJoin(topology::ListClusterPresets(), ", "),
                                                     "), a JSON file, or --probe"));
    }
    WAVEEP_ASSIGN_OR_RETURN(c, topology::LoadCluster(name));
  }
  if (const int nodes = absl::GetFlag(FLAGS_nodes); nodes > 0) {
    WAVEEP_ASSIGN_OR_RETURN(c, topology::WithNodes(c, nodes));
  } else if (nodes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--nodes must be >= 0, got ", nodes));
  }
  return c;
}

std::string ClusterSummary(const topology::Cluster& c) {
  return absl::StrFormat("%s (%d node%s x %d %s, %s%s)", c.name, c.num_nodes, c.num_nodes == 1 ? "" : "s",
                         c.devices_per_node, c.device.kind == "cpu" ? "ranks" : "devices", c.device.model,
                         c.probed() ? ", probed" : "");
}

// Writes `json_text` to --json (nothing without it).
Status WriteJson(const std::string& json_text) {
  const std::string path = absl::GetFlag(FLAGS_json);
  if (path.empty()) return absl::OkStatus();
  return WriteTextFile(path, json_text);
}

// ---- check ---------------------------------------------------------------------------------------------------------

// Rows of identical links (same template, bandwidth, share and sharing) collapse into one unless --all_links.
struct RowGroup {
  std::vector<int> members;  // indices into report.links
};

std::vector<RowGroup> GroupRows(const topology::Cluster& c, const topology::CheckReport& rep) {
  std::vector<RowGroup> groups;
  std::map<std::string, int> index;
  for (size_t i = 0; i < rep.links.size(); ++i) {
    const topology::LinkCheck& l = rep.links[i];
    const topology::Link& link = c.links[l.link];
    std::string key = absl::StrFormat("%s|%.6g|%.9f|%d", link.name, l.bw_gbps, l.share, l.num_devices);
    if (absl::GetFlag(FLAGS_all_links)) key = absl::StrCat(i);
    auto it = index.find(key);
    if (it == index.end()) {
      index.emplace(key, static_cast<int>(groups.size()));
      groups.push_back(RowGroup{{static_cast<int>(i)}});
    } else {
      groups[it->second].members.push_back(static_cast<int>(i));
    }
  }
  return groups;
}

// Rows of the link table that are comm-bound (a group's verdict is its first member's).
int CommBoundRows(const topology::CheckReport& rep, const std::vector<RowGroup>& groups) {
  int rows = 0;
  for (const RowGroup& g : groups) rows += rep.links[g.members.front()].comm_bound ? 1 : 0;
  return rows;
}

// Call after LoadModelConfig and before ClusterFromFlags: flag errors come in that order.
StatusOr<topology::CheckOptions> CheckOptionsFromFlags() {
  topology::CheckOptions opt;
  WAVEEP_ASSIGN_OR_RETURN(opt.dispatch_dtype, DtypeFromFlag());
  if (absl::GetFlag(FLAGS_tokens_per_rank) < 0) return absl::InvalidArgumentError("--tokens_per_rank must be >= 0");
  opt.tokens_per_rank = absl::GetFlag(FLAGS_tokens_per_rank);
  opt.num_ranks = absl::GetFlag(FLAGS_ranks);
  opt.dedup = absl::GetFlag(FLAGS_dedup);
  opt.dedup_hosts = absl::GetFlag(FLAGS_dedup_hosts);
  return opt;
}

// What is checked, and the threshold derived step by step from the model's shape.
void PrintThreshold(const ModelConfig& model, const topology::Cluster& c, const topology::CheckOptions& opt,
                    const topology::CheckReport& rep) {
  const topology::Threshold& t = rep.threshold;
  const double h = static_cast<double>(model.hidden_size), inter = static_cast<double>(model.moe_intermediate_size);
  const double bd = static_cast<double>(DTypeSize(opt.dispatch_dtype));
  const std::string dt = std::string(DTypeName(opt.dispatch_dtype));
  std::printf("waveep topo check: model %s on cluster %s\n", model.name.c_str(), ClusterSummary(c).c_str());
  std::printf("  EP group %d ranks, %d experts per rank, %" PRId64 " tokens/rank, top-%d; dispatch %s, combine bf16\n",
              rep.num_ranks, rep.local_experts, opt.tokens_per_rank, model.top_k, dt.c_str());
  std::printf("\nthreshold derivation (per (token, expert) pair; H=%.0f, I=%.0f)\n", h, inter);
  auto row = [](const std::string& what, const std::string& formula, const std::string& value) {
    const std::string line = absl::StrFormat("  %-26s %-30s %s", what, formula, value);
    std::printf("%s\n", std::string(absl::StripTrailingAsciiWhitespace(line)).c_str());
  };
  row("compute", "6*H*I", absl::StrFormat("= %.0f FLOPs", t.flops_per_pair));
  row("bytes, published", "(1 + 2)*H  (FP8 + BF16)", absl::StrFormat("= %.0f B", t.published_bytes_per_pair));
  row("published threshold", "6HI / 3H = 2I", absl::StrFormat("= %.0f FLOPs/byte", t.published_flops_per_byte));
  row(absl::StrCat("dispatch ", dt), absl::StrFormat("(%.0f + 2)*H", bd),
      absl::StrFormat("= %.0f B -> %.1f FLOPs/byte", t.dtype_bytes_per_pair, t.dtype_flops_per_byte));
  if (t.scale_bytes_per_pair > 0) {
    row("+ FP8 scales", absl::StrFormat("4 B per %d elements of H", model.fp8_block_size),
        absl::StrFormat("= %.0f B -> %.1f FLOPs/byte", t.scale_bytes_per_pair,
                        t.flops_per_pair / (t.dtype_bytes_per_pair + t.scale_bytes_per_pair)));
  } else {
    row("+ FP8 scales", "none (BF16 dispatch)", "");
  }
  row("+ routing metadata", "8*E / (T*K)",
      absl::StrFormat("= %.3f B -> %.1f FLOPs/byte (refined)", t.metadata_bytes_per_pair, t.refined_flops_per_byte));
  row("+ local fraction 1/R", absl::StrFormat("1/%d of the pairs stay local", rep.num_ranks),
      absl::StrFormat("-> %.1f FLOPs per byte on a link", t.refined_remote_flops_per_byte));
  row("refined threshold", "",
      absl::StrFormat("= %.1f FLOPs/byte (a device port carrying (R-1)/R of its pairs)",
                      t.refined_remote_flops_per_byte));
  if (opt.dedup) {
    row("dispatch dedup (--dedup)", absl::StrFormat("once per token and rank, R=%d", rep.num_ranks),
        absl::StrFormat("= %.3f dispatch rows per pair -> %.0f B per pair on a link", rep.dispatch_rows_per_pair,
                        rep.pair_bytes));
  } else {
    row("dispatch dedup", "off (--nodedup)", absl::StrFormat("1 dispatch row per pair -> %.0f B", rep.pair_bytes));
  }
  if (rep.internode_pair_bytes != rep.pair_bytes) {
    row("per node (--dedup_hosts)", absl::StrFormat("once per token and node, %d nodes", rep.nodes),
        absl::StrFormat("= %.3f rows per pair -> %.0f B -> %.1f FLOPs/byte on inter-node links",
                        rep.internode_dispatch_rows_per_pair, rep.internode_pair_bytes,
                        rep.internode_pair_flops_per_byte));
  }
}

// The device's effective GEMM rate, which every link is held against.
void PrintDeviceRate(const topology::Cluster& c, const topology::CheckReport& rep) {
  std::printf("\ndevice: %s GEMMs, peak %.4g TFLOP/s x efficiency %.3f at M=%.1f rows/expert = %.4g TFLOP/s\n",
              rep.gemm_dtype.c_str(), rep.peak_tflops, rep.gemm_efficiency, rep.rows_per_expert, rep.effective_tflops);
  std::printf("  balanced iff C/B <= %.1f FLOPs/byte on every link, C = %.4g TFLOP/s, B = link bw / share\n",
              rep.pair_flops_per_byte, rep.effective_tflops);
  if (rep.internode_pair_bytes != rep.pair_bytes) {
    std::printf(
        "  (inter-node links, a token once per node: C/B <= %.1f FLOPs/byte; a proxy's intra-node links also carry "
        "the rows it forwards: each link's limit is its C/B max)\n",
        rep.internode_pair_flops_per_byte);
  }
  if (rep.rows_per_expert < 64 && c.device.gemm_efficiency.empty()) {
    std::printf(
        "  note: at %.1f rows per expert the GEMMs are weight-read bound; --tokens_per_rank=4096 checks the "
        "prefill regime\n",
        rep.rows_per_expert);
  }
}

// One row per group of identical links.
void PrintLinkTable(const topology::Cluster& c, const topology::CheckReport& rep, const std::vector<RowGroup>& groups) {
  std::printf(
      "\nlinks (uniform routing, contiguous placement; share = part of one rank's pair bytes on the link in "
      "its busiest direction)\n");
  std::printf("  %-38s %-8s %9s %7s %4s %9s %9s %9s %8s %19s  %s\n", "link", "kind", "bw GB/s", "share", "devs",
              "need GB/s", "C/B", "C/B max", "margin",
              rep.dispatch_rows_per_pair < 1 ? "MB/step (no dedup)" : "MB/step", "verdict");
  for (const RowGroup& g : groups) {
    const topology::LinkCheck& l = rep.links[g.members.front()];
    std::string label = l.label;
    if (g.members.size() > 1) label = absl::StrCat(label, " (x", g.members.size(), ")");
    std::string verdict =
        l.comm_bound ? absl::StrFormat("comm-bound, %.0f%% exposed", 100 * l.exposed_fraction) : "balanced";
    const std::string bytes = rep.dispatch_rows_per_pair < 1 ? absl::StrFormat("%.4g (%.4g)", l.bytes_per_step / 1e6,
                                                                               l.bytes_per_step_without_dedup / 1e6)
                                                             : absl::StrFormat("%.4g", l.bytes_per_step / 1e6);
    std::printf("  %-38s %-8s %9.4g %6.1f%% %4d %9.4g %9.1f %9.1f %7.2fx %19s  %s\n", label.c_str(),
                std::string(topology::LinkKindName(c.links[l.link].kind)).c_str(), l.bw_gbps, 100 * l.share,
                l.num_devices, l.required_gbps, l.flops_per_byte, l.pair_flops_per_byte, l.margin, bytes.c_str(),
                verdict.c_str());
  }
}

// The worst link's verdict (and, for a probed cluster, the host it sits on).
void PrintCheckVerdict(const topology::Cluster& c, const topology::CheckReport& rep, bool strict_fail) {
  if (rep.worst >= 0) {
    const topology::LinkCheck& w = rep.links[rep.worst];
    // A probed cluster knows which host each node is: name it, since that is where the slow NIC sits.
    std::string host;
    const int worst_node = c.vertices[c.links[w.link].a].node;
    if (c.probed() && worst_node >= 0) {
      const std::vector<std::string> hosts = absl::StrSplit(c.probe->hostnames, ',');
      if (static_cast<int>(hosts.size()) == c.num_nodes && c.num_nodes > 1)
        host = absl::StrCat(" on host ", hosts[worst_node]);
    }
    std::printf(
        "\nverdict: %s — worst link %s (%s%s) at %.2fx margin%s\n", rep.any_comm_bound ? "COMM-BOUND" : "balanced",
        w.label.c_str(), std::string(topology::LinkKindName(c.links[w.link].kind)).c_str(), host.c_str(), w.margin,
        rep.any_comm_bound ? absl::StrFormat(": %.0f%% of its transfer time cannot hide behind the expert GEMMs",
                                             100 * w.exposed_fraction)
                                 .c_str()
                           : "");
  } else {
    std::printf("\nverdict: no link carries expert traffic (one rank)\n");
  }
  if (strict_fail) std::printf("--strict: exit %d (a link is comm-bound)\n", kCheckFailed);
  std::fflush(stdout);
}

Status CheckImpl(const ProcessContext& ctx, int* exit_code) {
  WAVEEP_ASSIGN_OR_RETURN(ModelConfig model, LoadModelConfig(absl::GetFlag(FLAGS_model)));
  WAVEEP_ASSIGN_OR_RETURN(topology::CheckOptions opt, CheckOptionsFromFlags());
  WAVEEP_ASSIGN_OR_RETURN(topology::Cluster c, ClusterFromFlags(ctx, model));
  WAVEEP_ASSIGN_OR_RETURN(topology::CheckReport rep, topology::CheckBalance(model, c, opt));
  const bool strict_fail = absl::GetFlag(FLAGS_strict) && rep.any_comm_bound;
  if (strict_fail) *exit_code = kCheckFailed;
  if (ctx.world_rank != 0) return absl::OkStatus();

  const std::vector<RowGroup> groups = GroupRows(c, rep);
  PrintThreshold(model, c, opt, rep);
  PrintDeviceRate(c, rep);
  PrintLinkTable(c, rep, groups);
  PrintCheckVerdict(c, rep, strict_fail);
  return WriteJson(topology::CheckReportToJson(rep, model, c, opt, CommBoundRows(rep, groups), *exit_code));
}

// ---- model ---------------------------------------------------------------------------------------------------------

StatusOr<topology::StepShape> ShapeFromFlags() {
  topology::StepShape s;
  s.tokens_per_rank = absl::GetFlag(FLAGS_tokens_per_rank);
  if (s.tokens_per_rank < 0) return absl::InvalidArgumentError("--tokens_per_rank must be >= 0");
  WAVEEP_ASSIGN_OR_RETURN(s.dispatch_dtype, DtypeFromFlag());
  s.num_ranks = absl::GetFlag(FLAGS_ranks);
  s.max_waves = absl::GetFlag(FLAGS_max_waves);
  if (s.max_waves < 0) return absl::InvalidArgumentError("--max_waves must be >= 0");
  s.shared_experts = absl::GetFlag(FLAGS_shared_experts);
  s.dedup = absl::GetFlag(FLAGS_dedup);
  s.dedup_hosts = absl::GetFlag(FLAGS_dedup_hosts);
  s.blas_threads = absl::GetFlag(FLAGS_blas_threads);
  const std::string split = absl::GetFlag(FLAGS_wave_split);
  if (split == "experts") {
    s.split = topology::WaveSplit::kExperts;
  } else if (split == "tokens") {
    s.split = topology::WaveSplit::kTokens;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--wave_split=", split, ": use experts or tokens"));
  }
  return s;
}

// The step's volumes and phase times, then one row per W.
void PrintPrediction(const ModelConfig& model, const topology::Cluster& c, const topology::StepShape& shape,
                     const topology::Prediction& p) {
  const std::string dt = std::string(DTypeName(shape.dispatch_dtype));
  std::printf("waveep topo model: model %s on cluster %s\n", model.name.c_str(), ClusterSummary(c).c_str());
  std::printf("  %d ranks, %d experts per rank, %" PRId64
              " tokens/rank, dispatch %s, %.1f rows per expert, local "
              "fraction 1/%d\n",
              p.num_ranks, p.local_experts, shape.tokens_per_rank, dt.c_str(), p.rows_per_expert, p.num_ranks);
  std::printf("  per step per rank: dispatch %s + combine %s to other ranks (rows of %.0f B / %.0f B)\n",
              Human(p.dispatch_bytes_per_rank).c_str(), Human(p.combine_bytes_per_rank).c_str(), p.dispatch_row_bytes,
              p.combine_row_bytes);
  if (shape.dedup) {
    std::printf("  dispatch rows per pair at W=1: %.3f per rank%s\n", p.dispatch_rows_per_pair,
                p.hierarchical
                    ? absl::StrFormat(", %.3f to other nodes (once per node)", p.internode_rows_per_pair).c_str()
                    : "");
  }
  std::printf("  compute: %s GEMMs at %.4g TFLOP/s peak; comm: %s\n", p.gemm_dtype.c_str(), p.peak_tflops,
              p.comm_source.c_str());
  std::printf("  phases at W=1: D %.1f us, C %.1f us, R %.1f us (+ layout %.1f, shared %.1f, reduce %.1f)\n",
              p.dispatch_us, p.compute_us, p.combine_us, p.layout_us, p.shared_us, p.reduce_us);
  std::printf("  T_seq = %.1f us\n\n", p.t_seq_us);
  std::printf("  %3s %12s %12s %10s %10s %10s %6s %11s %8s\n", "W", "T_wave us", "formula us", "d us", "c us", "r us",
              "eff", "exposed us", "speedup");
  for (const topology::WavePrediction& w : p.waves) {
    std::printf("  %3d %12.1f %12.1f %10.1f %10.1f %10.1f %6.3f %11.1f %7.2fx%s\n", w.waves, w.step_us, w.formula_us,
                w.dispatch_us, w.compute_us, w.combine_us, w.gemm_efficiency, w.exposed_comm_us, w.speedup,
                w.waves == p.best_waves ? "  <- best" : "");
  }
  std::printf("\nbest: --waves=%d, predicted %.1f us per step, %.2fx over sequential\n", p.best_waves,
              p.waves[p.best_waves - 1].step_us, p.best_speedup);
  std::printf("notes:\n");
  for (const std::string& n : p.notes) std::printf("  - %s\n", n.c_str());
  std::fflush(stdout);
}

Status ModelImpl(const ProcessContext& ctx) {
  WAVEEP_ASSIGN_OR_RETURN(ModelConfig model, LoadModelConfig(absl::GetFlag(FLAGS_model)));
  WAVEEP_ASSIGN_OR_RETURN(topology::StepShape shape, ShapeFromFlags());
  WAVEEP_ASSIGN_OR_RETURN(topology::Cluster c, ClusterFromFlags(ctx, model));
  WAVEEP_ASSIGN_OR_RETURN(topology::Prediction p, topology::PredictStep(model, c, shape));
  if (ctx.world_rank != 0) return absl::OkStatus();
  PrintPrediction(model, c, shape, p);
  return WriteJson(topology::PredictionToJson(p, model, c, shape));
}

// ---- tune ----------------------------------------------------------------------------------------------------------

// The command line that runs candidate `b` (--model as given on this command line).
std::string RecommendedCommand(const topology::TuneCandidate& b, const topology::Cluster& c,
                               const topology::StepShape& shape) {
  return absl::StrFormat(
      "mpirun -np %d --map-by ppr:%d:node waveep run --model=%s --dtype=%s --tokens_per_rank=%d --waves=%d",
      b.group_size, std::min(b.group_size, c.devices_per_node), absl::GetFlag(FLAGS_model),
      DTypeName(shape.dispatch_dtype), shape.tokens_per_rank, b.best_waves);
}

// One row per candidate group size.
void PrintTuneTable(const ModelConfig& model, const topology::Cluster& c, const topology::StepShape& shape,
                    const topology::TuneResult& res) {
  const std::string dt = std::string(DTypeName(shape.dispatch_dtype));
  std::printf("waveep topo tune: model %s, %" PRId64 " tokens/rank, dispatch %s, on %s (%d devices)\n\n",
              model.name.c_str(), shape.tokens_per_rank, dt.c_str(), ClusterSummary(c).c_str(), c.num_devices());
  std::printf("  %5s  %-26s %3s %11s %11s %8s %9s %5s  %s\n", "group", "layout", "W", "T_step us", "T_seq us",
              "speedup", "GiB/dev", "fits", "tightest link");
  for (size_t i = 0; i < res.candidates.size(); ++i) {
    const topology::TuneCandidate& k = res.candidates[i];
    std::printf("  %5d  %-26s %3d %11.1f %11.1f %7.2fx %9.2f %5s  %s%s\n", k.group_size, k.layout.c_str(), k.best_waves,
                k.step_us, k.t_seq_us, k.t_seq_us / k.step_us, k.weight_gib_per_device, k.fits ? "yes" : "NO",
                k.bottleneck.c_str(), static_cast<int>(i) == res.best ? "  <- best" : "");
  }
}

// The best candidate and how to run it (or that none fits).
void PrintRecommendation(const topology::Cluster& c, const topology::TuneResult& res, const std::string& cmd) {
  if (res.best < 0) {
    std::printf("\nno EP group fits the routed expert weights of this layer in device memory\n");
    std::fflush(stdout);
    return;
  }
  const topology::TuneCandidate& b = res.candidates[res.best];
  std::printf("\nrecommended: EP group of %d ranks (%s), --waves=%d: %.1f us per step, %.2fx over sequential\n",
              b.group_size, b.layout.c_str(), b.best_waves, b.step_us, b.t_seq_us / b.step_us);
  std::printf("  %s\n", cmd.c_str());
  if (b.group_size < c.num_devices()) {
    std::printf(
        "  (the cluster's %d devices hold %d such groups: run them as data-parallel replicas, one mpirun "
        "each, or one job with --ranks=%d per group)\n",
        c.num_devices(), c.num_devices() / b.group_size, b.group_size);
  }
  std::printf("  note: GiB/dev counts this layer's routed experts only; multiply by the layers a device holds\n");
  std::fflush(stdout);
}

Status TuneImpl(const ProcessContext& ctx) {
  WAVEEP_ASSIGN_OR_RETURN(ModelConfig model, LoadModelConfig(absl::GetFlag(FLAGS_model)));
  WAVEEP_ASSIGN_OR_RETURN(topology::StepShape shape, ShapeFromFlags());
  if (shape.num_ranks != 0) return absl::InvalidArgumentError("topo tune chooses the EP group itself: drop --ranks");
  WAVEEP_ASSIGN_OR_RETURN(topology::Cluster c, ClusterFromFlags(ctx, model));
  WAVEEP_ASSIGN_OR_RETURN(topology::TuneResult res, topology::Tune(model, c, shape));
  if (ctx.world_rank != 0) return absl::OkStatus();
  const std::string cmd = res.best >= 0 ? RecommendedCommand(res.candidates[res.best], c, shape) : "";
  PrintTuneTable(model, c, shape, res);
  PrintRecommendation(c, res, cmd);
  return WriteJson(topology::TuneResultToJson(res, model, c, shape, cmd));
}

// ---- probe ---------------------------------------------------------------------------------------------------------

// Who was measured, the device figures, and one row per measured pair.
void PrintProbeSummary(const topology::Cluster& c) {
  const topology::ProbeInfo& p = *c.probe;
  std::printf("# waveep topo probe: %d ranks on %d node(s) [%s], backend %s, %s\n", p.ranks, c.num_nodes,
              p.hostnames.c_str(), p.backend.c_str(), p.date.c_str());
  std::printf("# device: %s; FP32 expert FFN %.2f GFLOP/s per rank (best M), memcpy %.2f GB/s per rank\n",
              c.device.model.c_str(), c.device.compute_tflops.at("f32") * 1e3, c.device.memory_bw_gbps / 2);
  std::printf("#\n# pairwise, through the %s backend (8-byte ping-pong; %s messages)\n", p.backend.c_str(),
              Sizes(absl::GetFlag(FLAGS_probe_pair_bytes)).c_str());
  std::printf("# %4s %4s %-5s %12s %12s %12s\n", "a", "b", "kind", "latency(us)", "uni(GB/s)", "bidir(GB/s)");
  for (const topology::PairMeasurement& m : p.pairs) {
    std::printf("  %4d %4d %-5s %12.2f %12.3f %12.3f\n", m.a, m.b, m.kind.c_str(), m.latency_us, m.uni_gbps,
                m.bidir_gbps);
  }
}

// The all-to-all-v sweep, OSU style, the comm backend and MPI_Alltoallv side by side.
void PrintAlltoallTable(const topology::AlltoallCurve& a) {
  std::printf(
      "#\n# all-to-all-v, OSU style: Size = bytes per (source, destination) block; avg/min/max over ranks "
      "of the per-iteration mean\n");
  std::printf(
      "# algbw = Size*R/avg, busbw = Size*(R-1)/avg (bytes leaving a rank); %s = comm backend blocking "
      "Alltoallv, async = AlltoallvAsync on a stream + Synchronize (adds the hand-off to the stream's thread, see "
      "the notes below);\n# noise = (slowest - fastest) / mean of the interleaved timing rounds; MPI/comm* = "
      "MPI_Alltoallv time / "
      "backend time on the median rounds (> 1: the backend is faster)\n",
      a.backend.c_str());
  std::printf("# %-10s %10s %10s %10s %9s %9s | %10s %10s %10s %9s | %10s | %9s %6s %9s\n", "Size", "Avg(us)",
              "Min(us)", "Max(us)", "algbw", "busbw", "MPI Avg", "MPI Min", "MPI Max", "MPI busbw", "async Avg",
              "MPI/comm*", "noise", "MPI noise");
  for (const topology::AlltoallPoint& q : a.points) {
    const double alg = static_cast<double>(q.bytes) * a.ranks / (q.comm_avg_us * 1e3);
    const double bus = static_cast<double>(q.bytes) * (a.ranks - 1) / (q.comm_avg_us * 1e3);
    const double mbus = q.mpi_avg_us > 0 ? static_cast<double>(q.bytes) * (a.ranks - 1) / (q.mpi_avg_us * 1e3) : 0;
    std::printf("  %-10" PRId64
                " %10.2f %10.2f %10.2f %9.3f %9.3f | %10.2f %10.2f %10.2f %9.3f | %10.2f | %8.2fx %5.1f%% %8.1f%%\n",
                q.bytes, q.comm_avg_us, q.comm_min_us, q.comm_max_us, alg, bus, q.mpi_avg_us, q.mpi_min_us,
                q.mpi_max_us, mbus, q.async_avg_us, q.MpiOverComm(), 100 * q.comm_spread, 100 * q.mpi_spread);
  }
}

// How the comm backend compares with MPI_Alltoallv over the sweep: the comm backend is meant to be at least as fast
// as plain MPI_Alltoallv on the same buffers, so say where it is not.
void PrintVersusMpi(const topology::ProbeInfo& p) {
  int faster = 0, within_noise = 0, slower = 0;
  double worst = 1e30;
  int64_t worst_bytes = 0;
  std::vector<std::string> slower_sizes;
  for (const topology::AlltoallPoint& q : p.alltoall->points) {
    switch (q.CompareWithMpi()) {
      case topology::AlltoallPoint::VersusMpi::kNotCompared:
        continue;
      case topology::AlltoallPoint::VersusMpi::kFaster:
        ++faster;
        break;
      case topology::AlltoallPoint::VersusMpi::kWithinNoise:
        ++within_noise;
        break;
      case topology::AlltoallPoint::VersusMpi::kSlower:
        ++slower;
        slower_sizes.push_back(Sizes(q.bytes));
        break;
    }
    const double ratio = q.MpiOverComm();
    if (ratio < worst) {
      worst = ratio;
      worst_bytes = q.bytes;
    }
  }
  if (faster + within_noise + slower > 0) {
    std::printf(
        "# %s backend vs MPI_Alltoallv: faster at %d of %d sizes, slower by less than the round-to-round noise at "
        "%d, slower beyond it at %d%s%s; worst median-round ratio at %s (%.2fx MPI's speed)\n",
        p.backend.c_str(), faster, faster + within_noise + slower, within_noise, slower, slower > 0 ? ": " : "",
        absl::StrJoin(slower_sizes, ", ").c_str(), Sizes(worst_bytes).c_str(), worst);
  }
}

void PrintProbe(const topology::Cluster& c) {
  const topology::ProbeInfo& p = *c.probe;
  PrintProbeSummary(c);
  if (p.alltoall.has_value()) {
    PrintAlltoallTable(*p.alltoall);
    PrintVersusMpi(p);
  }
  std::printf("#\n# derived cluster (%s):\n", c.name.c_str());
  for (const std::string& n : p.notes) std::printf("#   %s\n", n.c_str());
}

Status ProbeImpl(const ProcessContext& ctx) {
  WAVEEP_ASSIGN_OR_RETURN(ModelConfig model, LoadModelConfig(absl::GetFlag(FLAGS_model)));
  if (!absl::GetFlag(FLAGS_cluster).empty()) return absl::InvalidArgumentError("topo probe measures: drop --cluster");
  WAVEEP_ASSIGN_OR_RETURN(topology::Cluster c, topology::ProbeCluster(ctx, model, ProbeOptionsFromFlags(ctx)));
  if (ctx.world_rank != 0) return absl::OkStatus();
  PrintProbe(c);
  const std::string path = absl::GetFlag(FLAGS_out);
  const std::string cluster_json = topology::ClusterToJson(c);
  WAVEEP_RETURN_IF_ERROR(WriteTextFile(path, cluster_json));
  std::printf("wrote %s (check it with: waveep topo check --cluster=%s --model=%s)\n", path.c_str(), path.c_str(),
              model.name.c_str());
  std::fflush(stdout);
  ordered_json j;
  j["command"] = "topo probe";
  j["cluster_file"] = path;
  j["cluster"] = ordered_json::parse(cluster_json, nullptr, false);
  return WriteJson(j.dump(2) + "\n");
}

}  // namespace

std::string TopoUsage() {
  std::string s =
      "usage: [mpirun -np N] waveep topo <check|model|tune|probe> [flags]\n"
      "\n"
      "  check   threshold derivation for --model/--dtype and one verdict per link of --cluster (or --probe):\n"
      "          balanced, or comm-bound with the exposed fraction. --strict exits 3 if any link is comm-bound.\n"
      "  model   predicted T_seq and T_wave(W) for W = 1..Wmax, best W and speedup (two-stream schedule replay)\n"
      "  tune    recommends the EP group layout and --waves, and prints the command line to use\n"
      "  probe   (under mpirun) measures pairwise latency/bandwidth, an all-to-all-v sweep (comm backend and plain\n"
      "          MPI_Alltoallv side by side), the expert GEMM rate; writes a cluster JSON to --out\n"
      "\n"
      "examples:\n"
      "  waveep topo check --model=deepseek-v4-pro --cluster=h800-8x-ib400 --dtype=fp8 --tokens_per_rank=4096\n"
      "  waveep topo tune  --model=deepseek-v4-pro --cluster=h800-8x-ib400 --nodes=4 --dtype=fp8 "
      "--tokens_per_rank=4096\n"
      "  mpirun -np 4 --oversubscribe waveep topo probe --model=tiny --out=local.json\n"
      "  waveep topo model --model=tiny --cluster=local.json --tokens_per_rank=512\n"
      "\nflags:\n";
  absl::StrAppend(&s, FlagsHelp(kTopoFlags, 20));
  absl::StrAppend(&s, "\ncluster presets: ", absl::StrJoin(topology::ListClusterPresets(), ", "), "\n");
  absl::StrAppend(&s, "comm backends (--backend): ", absl::StrJoin(comm::AvailableBackends(), ", "), "\n");
  return s;
}

int TopoMain(const ProcessContext& ctx, const std::vector<std::string>& args) {
  if (args.size() != 1 || (args[0] != "check" && args[0] != "model" && args[0] != "tune" && args[0] != "probe")) {
    const Status s = absl::InvalidArgumentError(
        args.empty() ? "missing subcommand: check, model, tune or probe (see waveep topo --help)"
                     : absl::StrCat("unknown subcommand '", absl::StrJoin(args, " "),
                                    "': use check, model, tune or probe (see waveep topo --help)"));
    ReportError(ctx, "topo", s);
    return kUsage;
  }
  const std::string cmd = absl::StrCat("topo ", args[0]);
  int code = kOk;
  Status s =
      CheckSameOnAllRanks(ctx, "the command line (topo flags)", absl::StrCat(args[0], "|", CanonicalTopoFlags()));
  if (s.ok()) {
    if (args[0] == "check") s = CheckImpl(ctx, &code);
    if (args[0] == "model") s = ModelImpl(ctx);
    if (args[0] == "tune") s = TuneImpl(ctx);
    if (args[0] == "probe") s = ProbeImpl(ctx);
  }
  // Rank 0 may fail alone (writing files); everyone returns the same exit code.
  s = AgreeOnStatus(ctx, s);
  if (!s.ok()) {
    ReportError(ctx, cmd, s);
    return ExitCodeFor(s);
  }
  return code;
}

}  // namespace waveep::cli
