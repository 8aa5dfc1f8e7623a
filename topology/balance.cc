// Copyright 2026 The waveep Authors.
//
// The balance threshold and the per-link check. The derivation is in docs/topology.md; in short, a
// (token, expert) pair costs 6HI FLOPs on the expert's device and moves one dispatch row out and one combine row
// back, so a link carrying a fraction `share` of a device's pair bytes needs share * F / (6HI / pair bytes) of
// bandwidth to stay hidden behind a device computing F FLOP/s.
#include <algorithm>
#include <cmath>
#include <limits>

#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {

namespace internal {

std::string GemmDtypeName(const DeviceSpec& device, DType dispatch_dtype) {
  if (!device.gemm_dtype.empty()) return device.gemm_dtype;
  return std::string(DTypeName(dispatch_dtype));
}

double WeightBytesPerElement(absl::string_view gemm_dtype) {
  auto t = ParseDType(gemm_dtype);
  return t.ok() ? static_cast<double>(DTypeSize(*t)) : 2.0;
}

double GemmEfficiency(const DeviceSpec& device, const ModelConfig& model, double peak_flops, double weight_bytes,
                      double rows_per_expert, int experts) {
  const double m = std::max(rows_per_expert, 1.0);
  if (!device.gemm_efficiency.empty()) return device.gemm_efficiency.At(m);
  const double h = static_cast<double>(model.hidden_size), inter = static_cast<double>(model.moe_intermediate_size);
  // Tile quantisation of one grouped launch: 128x128 output tiles of the gate/up GEMM ([M, 2I] per expert) spread
  // over the SMs; a last partial wave of tiles leaves SMs idle.
  double occupancy = 1.0;
  if (device.sm_count > 0 && experts > 0) {
    const double tiles = experts * std::ceil(m / 128.0) * std::ceil(2.0 * inter / 128.0);
    occupancy = tiles / (std::ceil(tiles / device.sm_count) * device.sm_count);
  }
  // Memory roofline: every expert's weights (3HI elements) are read once per launch, whatever M.
  const double flops = 6.0 * h * inter * m;
  const double weight_us = 3.0 * h * inter * weight_bytes / (device.memory_bw_gbps * 1e3);
  const double memory_bound = flops / peak_flops * 1e6 / weight_us;  // efficiency if weight reads dominated
  return std::min(device.max_gemm_efficiency * occupancy, memory_bound);
}

}  // namespace internal

StatusOr<Threshold> DeriveThreshold(const ModelConfig& model, DType dispatch_dtype, int num_ranks,
                                    int64_t tokens_per_rank) {
  WAVEEP_RETURN_IF_ERROR(ValidateModelConfig(model));
  if (dispatch_dtype != DType::kBF16 && dispatch_dtype != DType::kFP8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype=", DTypeName(dispatch_dtype), ": the dispatch dtype must be bf16 or fp8"));
  }
  if (num_ranks < 1) return absl::InvalidArgumentError(absl::StrCat("EP group of ", num_ranks, " ranks"));
  if (tokens_per_rank < 0) return absl::InvalidArgumentError("tokens_per_rank must be >= 0");
  const double h = static_cast<double>(model.hidden_size);
  Threshold t;
  t.flops_per_pair = model.FlopsPerPair();
  // Published: FP8 dispatch (1 byte) + BF16 combine (2 bytes) per element of H, nothing else. 6HI / 3H = 2I exactly
  // in floating point for the presets (both products are exact integers below 2^53).
  t.published_bytes_per_pair = (1.0 + 2.0) * h;
  t.published_flops_per_byte = t.flops_per_pair / t.published_bytes_per_pair;
  const double bd = static_cast<double>(DTypeSize(dispatch_dtype));
  t.dtype_bytes_per_pair = (bd + 2.0) * h;
  t.dtype_flops_per_byte = t.flops_per_pair / t.dtype_bytes_per_pair;
  t.scale_bytes_per_pair = static_cast<double>(model.DispatchRowBytes(dispatch_dtype)) - bd * h;
  // waveep exchanges E int64 counts per rank per step (R peers x L local experts); top-k weights stay at the origin.
  const double pairs = static_cast<double>(tokens_per_rank) * model.top_k;
  t.metadata_bytes_per_pair = pairs > 0 ? 8.0 * model.num_experts / pairs : 0.0;
  t.refined_bytes_per_pair = t.dtype_bytes_per_pair + t.scale_bytes_per_pair + t.metadata_bytes_per_pair;
  t.refined_flops_per_byte = t.flops_per_pair / t.refined_bytes_per_pair;
  t.local_fraction = 1.0 / num_ranks;
  t.refined_remote_flops_per_byte =
      num_ranks > 1 ? t.refined_flops_per_byte / (1.0 - t.local_fraction) : std::numeric_limits<double>::infinity();
  return t;
}

namespace internal {

StatusOr<int> ValidateStep(const ModelConfig& model, const Cluster& cluster, int num_ranks, int64_t tokens_per_rank,
                           DType dispatch_dtype) {
  WAVEEP_RETURN_IF_ERROR(ValidateModelConfig(model));
  if (num_ranks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--ranks=", num_ranks, " must be >= 0 (0 = every device)"));
  }
  const int r = num_ranks > 0 ? num_ranks : cluster.num_devices();
  if (r > cluster.num_devices()) {
    return absl::InvalidArgumentError(absl::StrCat("--ranks=", r, " exceeds the ", cluster.num_devices(),
                                                   " devices of cluster '", cluster.name, "' (add --nodes)"));
  }
  if (model.num_experts % r != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", model.name, ": ", model.num_experts, " experts are not divisible by ranks (", r, ")"));
  }
  if (tokens_per_rank < 0) return absl::InvalidArgumentError("--tokens_per_rank must be >= 0");
  if (dispatch_dtype != DType::kBF16 && dispatch_dtype != DType::kFP8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype=", DTypeName(dispatch_dtype), ": the dispatch dtype must be bf16 or fp8"));
  }
  if (dispatch_dtype == DType::kFP8E4M3 && model.hidden_size % model.fp8_block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hidden_size=", model.hidden_size,
                                                   " is not a multiple of the FP8 block (", model.fp8_block_size, ")"));
  }
  return r;
}

}  // namespace internal

StatusOr<CheckReport> CheckBalance(const ModelConfig& model, const Cluster& cluster, const CheckOptions& options) {
  WAVEEP_ASSIGN_OR_RETURN(const int r, internal::ValidateStep(model, cluster, options.num_ranks,
                                                              options.tokens_per_rank, options.dispatch_dtype));
  CheckReport rep;
  WAVEEP_ASSIGN_OR_RETURN(rep.threshold, DeriveThreshold(model, options.dispatch_dtype, r, options.tokens_per_rank));
  rep.num_ranks = r;
  rep.local_experts = model.num_experts / r;
  rep.rows_per_expert = static_cast<double>(options.tokens_per_rank) * model.top_k * r / model.num_experts;
  rep.gemm_dtype = internal::GemmDtypeName(cluster.device, options.dispatch_dtype);
  WAVEEP_ASSIGN_OR_RETURN(rep.peak_tflops, cluster.device.PeakTflops(rep.gemm_dtype));
  rep.gemm_efficiency =
      internal::GemmEfficiency(cluster.device, model, rep.peak_tflops * 1e12,
                               internal::WeightBytesPerElement(rep.gemm_dtype), rep.rows_per_expert, rep.local_experts);
  rep.effective_tflops = rep.peak_tflops * rep.gemm_efficiency;

  // With deduplication a pair's dispatch row crosses dispatch_rows_per_pair times on average (by symmetry the same
  // for every destination rank); its combine row still returns once. Per node (dedup_hosts, full nodes only), rows
  // to another node go to its proxy once per node (the node-level figure) and the proxy forwards them inside the
  // node: ExpertTraffic routes both legs.
  rep.dispatch_rows_per_pair = options.dedup ? DedupRowsPerPair(model, r, 1) : 1.0;
  rep.nodes = internal::NodesSpanned(cluster, r);
  const int per_node = internal::PerNodeDispatchNodes(cluster, r, options.dedup, options.dedup_hosts);
  rep.internode_dispatch_rows_per_pair =
      per_node > 0 ? DedupRowsPerPair(model, r, 1, r / per_node) : rep.dispatch_rows_per_pair;
  DispatchRouting routing;
  routing.rows_per_pair = rep.dispatch_rows_per_pair;
  routing.per_node_nodes = per_node;
  routing.node_rows_per_pair = rep.internode_dispatch_rows_per_pair;
  WAVEEP_ASSIGN_OR_RETURN(std::vector<LinkTraffic> traffic, ExpertTraffic(cluster, r, routing));
  const double db_row = static_cast<double>(model.DispatchRowBytes(options.dispatch_dtype));
  const double db = db_row * rep.dispatch_rows_per_pair;
  const double cb = internal::CombineRowBytes(model);
  const double flops = rep.effective_tflops * 1e12;
  const double pairs_per_step = static_cast<double>(options.tokens_per_rank) * model.top_k;
  rep.pair_bytes = db + cb;
  rep.pair_flops_per_byte = rep.threshold.flops_per_pair / (db + cb);
  rep.internode_pair_bytes = db_row * rep.internode_dispatch_rows_per_pair + cb;
  rep.internode_pair_flops_per_byte = rep.threshold.flops_per_pair / rep.internode_pair_bytes;
  double worst = std::numeric_limits<double>::infinity();
  for (size_t li = 0; li < cluster.links.size(); ++li) {
    const Link& l = cluster.links[li];
    const LinkTraffic& t = traffic[li];
    if (t.num_flows == 0) continue;  // carries no expert traffic for this group (e.g. devices outside it)
    LinkCheck c;
    c.link = static_cast<int>(li);
    c.label = LinkLabel(cluster, l);
    c.internode = t.internode_flows == t.num_flows;
    // The link's dispatch rows per pair of the flows that cross it: the routed rows over the pair flows (with
    // per-node dispatch a proxy's links also carry the rows it forwards, so this can exceed the per-rank figure).
    const double flows = t.dispatch_fwd + t.dispatch_rev;
    c.dispatch_rows_per_pair = flows > 0 ? (t.dispatch_rows_fwd + t.dispatch_rows_rev) / flows : 0.0;
    const double db_link = db_row * c.dispatch_rows_per_pair;
    c.pair_flops_per_byte = rep.threshold.flops_per_pair / (db_link + cb);
    c.bw_gbps = l.effective_bw_gbps();
    // Bytes of one rank's pairs in the busiest direction, as routed; `share` expresses them in the link's pair bytes.
    const double routed = t.RoutedBytesPerPair(db_row, cb, l.duplex);
    c.share = routed / (db_link + cb);
    c.num_devices = t.num_devices;
    // Bytes per second this link must move while the device computes: routed bytes per pair * pairs/s.
    c.required_gbps = routed * flops / rep.threshold.flops_per_pair / 1e9;
    c.flops_per_byte = flops * c.share / (c.bw_gbps * 1e9);
    c.margin = c.required_gbps > 0 ? c.bw_gbps / c.required_gbps : 1e30;
    c.comm_bound = c.margin < 1.0;
    c.exposed_fraction = c.comm_bound ? 1.0 - c.margin : 0.0;
    c.bytes_per_step = routed * pairs_per_step;
    c.bytes_per_step_without_dedup = t.Share(db_row, cb, l.duplex) * (db_row + cb) * pairs_per_step;
    if (c.margin < worst) {
      worst = c.margin;
      rep.worst = static_cast<int>(rep.links.size());
    }
    rep.any_comm_bound = rep.any_comm_bound || c.comm_bound;
    rep.links.push_back(std::move(c));
  }
  return rep;
}

}  // namespace waveep::topology
