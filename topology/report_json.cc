// Copyright 2026 The waveep Authors.
//
// The JSON documents of `waveep topo check|model|tune --json`: a CheckReport, a Prediction and a TuneResult with the
// inputs they were computed from. Keys keep their order (ordered_json) so that files diff cleanly between runs.
#include <string>

#include "nlohmann/json.hpp"
#include "topology/topology.h"

namespace waveep::topology {
namespace {

using Json = nlohmann::ordered_json;

}  // namespace

std::string CheckReportToJson(const CheckReport& rep, const ModelConfig& model, const Cluster& c,
                              const CheckOptions& opt, int comm_bound_rows, int exit_code) {
  const Threshold& t = rep.threshold;
  Json j;
  j["command"] = "topo check";
  j["model"] = model.name;
  j["cluster"] = c.name;
  j["cluster_origin"] = c.origin;
  j["probed"] = c.probed();
  j["ranks"] = rep.num_ranks;
  j["tokens_per_rank"] = opt.tokens_per_rank;
  j["dispatch_dtype"] = std::string(DTypeName(opt.dispatch_dtype));
  j["threshold"] = {{"flops_per_pair", t.flops_per_pair},
                    {"published_bytes_per_pair", t.published_bytes_per_pair},
                    {"published_flops_per_byte", t.published_flops_per_byte},
                    {"dtype_bytes_per_pair", t.dtype_bytes_per_pair},
                    {"dtype_flops_per_byte", t.dtype_flops_per_byte},
                    {"scale_bytes_per_pair", t.scale_bytes_per_pair},
                    {"metadata_bytes_per_pair", t.metadata_bytes_per_pair},
                    {"refined_bytes_per_pair", t.refined_bytes_per_pair},
                    {"refined_flops_per_byte", t.refined_flops_per_byte},
                    {"local_fraction", t.local_fraction},
                    {"refined_remote_flops_per_byte", t.refined_remote_flops_per_byte}};
  j["device"] = {{"gemm_dtype", rep.gemm_dtype},
                 {"peak_tflops", rep.peak_tflops},
                 {"gemm_efficiency", rep.gemm_efficiency},
                 {"rows_per_expert", rep.rows_per_expert},
                 {"effective_tflops", rep.effective_tflops},
                 {"pair_flops_per_byte", rep.pair_flops_per_byte},
                 {"dedup", opt.dedup},
                 {"dedup_hosts", opt.dedup && opt.dedup_hosts},
                 {"dispatch_rows_per_pair", rep.dispatch_rows_per_pair},
                 {"internode_dispatch_rows_per_pair", rep.internode_dispatch_rows_per_pair},
                 {"internode_pair_flops_per_byte", rep.internode_pair_flops_per_byte},
                 {"nodes", rep.nodes},
                 {"pair_bytes", rep.pair_bytes}};
  Json links = Json::array();
  for (const LinkCheck& l : rep.links) {
    links.push_back({{"link", l.label},
                     {"name", c.links[l.link].name},
                     {"kind", std::string(LinkKindName(c.links[l.link].kind))},
                     {"bw_gbps", l.bw_gbps},
                     {"share", l.share},
                     {"devices", l.num_devices},
                     {"required_gbps", l.required_gbps},
                     {"flops_per_byte", l.flops_per_byte},
                     {"margin", l.margin},
                     {"verdict", l.comm_bound ? "comm-bound" : "balanced"},
                     {"exposed_fraction", l.exposed_fraction},
                     {"bytes_per_step", l.bytes_per_step},
                     {"bytes_per_step_without_dedup", l.bytes_per_step_without_dedup},
                     {"internode", l.internode},
                     {"dispatch_rows_per_pair", l.dispatch_rows_per_pair},
                     {"pair_flops_per_byte", l.pair_flops_per_byte}});
  }
  j["links"] = links;
  j["any_comm_bound"] = rep.any_comm_bound;
  j["comm_bound_rows"] = comm_bound_rows;
  j["exit_code"] = exit_code;
  return j.dump(2) + "\n";
}

std::string PredictionToJson(const Prediction& p, const ModelConfig& model, const Cluster& c, const StepShape& shape) {
  Json j;
  j["command"] = "topo model";
  j["model"] = model.name;
  j["cluster"] = c.name;
  j["ranks"] = p.num_ranks;
  j["tokens_per_rank"] = shape.tokens_per_rank;
  j["dispatch_dtype"] = std::string(DTypeName(shape.dispatch_dtype));
  j["comm_source"] = p.comm_source;
  j["dedup"] = shape.dedup;
  j["dispatch_rows_per_pair"] = p.dispatch_rows_per_pair;
  j["hierarchical"] = p.hierarchical;
  j["internode_rows_per_pair"] = p.internode_rows_per_pair;
  j["dispatch_bytes_per_rank"] = p.dispatch_bytes_per_rank;
  j["combine_bytes_per_rank"] = p.combine_bytes_per_rank;
  j["t_seq_us"] = p.t_seq_us;
  j["phases_us"] = {{"dispatch", p.dispatch_us}, {"compute", p.compute_us}, {"combine", p.combine_us},
                    {"layout", p.layout_us},     {"shared", p.shared_us},   {"reduce", p.reduce_us}};
  Json waves = Json::array();
  for (const WavePrediction& w : p.waves) {
    waves.push_back({{"waves", w.waves},
                     {"step_us", w.step_us},
                     {"formula_us", w.formula_us},
                     {"dispatch_us", w.dispatch_us},
                     {"compute_us", w.compute_us},
                     {"combine_us", w.combine_us},
                     {"gemm_efficiency", w.gemm_efficiency},
                     {"exposed_comm_us", w.exposed_comm_us},
                     {"speedup", w.speedup}});
  }
  j["waves"] = waves;
  j["best_waves"] = p.best_waves;
  j["best_speedup"] = p.best_speedup;
  j["notes"] = p.notes;
  return j.dump(2) + "\n";
}

std::string TuneResultToJson(const TuneResult& res, const ModelConfig& model, const Cluster& c, const StepShape& shape,
                             absl::string_view recommended_command) {
  Json j;
  j["command"] = "topo tune";
  j["model"] = model.name;
  j["cluster"] = c.name;
  j["tokens_per_rank"] = shape.tokens_per_rank;
  j["dispatch_dtype"] = std::string(DTypeName(shape.dispatch_dtype));
  Json cands = Json::array();
  for (const TuneCandidate& k : res.candidates) {
    cands.push_back({{"group_size", k.group_size},
                     {"layout", k.layout},
                     {"nodes_spanned", k.nodes_spanned},
                     {"best_waves", k.best_waves},
                     {"step_us", k.step_us},
                     {"t_seq_us", k.t_seq_us},
                     {"weight_gib_per_device", k.weight_gib_per_device},
                     {"fits", k.fits},
                     {"tightest_link", k.bottleneck}});
  }
  j["candidates"] = cands;
  if (res.best < 0) {
    j["recommended"] = nullptr;
    return j.dump(2) + "\n";
  }
  const TuneCandidate& b = res.candidates[res.best];
  j["recommended"] = {{"group_size", b.group_size},
                      {"waves", b.best_waves},
                      {"step_us", b.step_us},
                      {"speedup", b.t_seq_us / b.step_us},
                      {"command", std::string(recommended_command)}};
  return j.dump(2) + "\n";
}

}  // namespace waveep::topology
