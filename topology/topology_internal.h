// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "topology/topology.h"
//
// Helpers shared by the topology .cc files: routing and per-link traffic, GEMM efficiency, row sizes, limits. Not part
// of the API; tests include it to check the routing directly.
#ifndef WAVEEP_TOPOLOGY_TOPOLOGY_INTERNAL_H_
#define WAVEEP_TOPOLOGY_TOPOLOGY_INTERNAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "topology/topology.h"

namespace waveep::topology {

// ---- routing and traffic ------------------------------------------------------------------------------------------
// In waveep::topology rather than `internal`: the balance check and the model build on them, and the tests call them
// directly.

// Path between two devices: the links it crosses and, for each, whether it goes a -> b (forward).
struct Route {
  std::vector<int> links;
  std::vector<bool> forward;
  double latency_us = 0;  // sum of link latencies
};

// Cheapest path (sum of 1 / effective bandwidth, then fewest hops, then lowest link index) from device `src` to
// device `dst` (global indices); src == dst uses the device's loopback link. Switches forward, devices do not.
// NotFound if unreachable, OutOfRange for bad indices.
StatusOr<Route> FindRoute(const Cluster& cluster, int src, int dst);

// Per link, the expert traffic of one step under uniform routing over `num_ranks` ranks placed on devices
// 0 .. num_ranks-1 with contiguous expert placement: every rank sends 1/R of its (token, expert) pairs to every rank
// (itself included), dispatch rows out and combine rows back.
struct LinkTraffic {
  // Fraction of one rank's pairs whose dispatch (resp. combine) row crosses the link in each direction. A device's
  // NVLink port in EP8 carries 7/8 of its pairs' dispatch rows forward (out) and 7/8 of others' rows back (in).
  double dispatch_fwd = 0, dispatch_rev = 0, combine_fwd = 0, combine_rev = 0;
  // Dispatch rows crossing the link per pair of one rank in each direction, as the layer sends them under the
  // DispatchRouting given to ExpertTraffic: dispatch_fwd/rev x rows per pair without per-node dispatch; with it,
  // each other node's rows go to its proxy (node rows per pair) and the proxy's forwarded rows cross its node again.
  double dispatch_rows_fwd = 0, dispatch_rows_rev = 0;
  int num_flows = 0;        // (src, dst) rank pairs crossing the link
  int internode_flows = 0;  // ... of which between ranks on different nodes
  // Ranks behind the link: of the ranks whose dispatch rows cross it, the smaller set of the two directions. A
  // GPU's own port: 1; a NIC shared by 4 GPUs: 4; a PCIe uplink of a 2-GPU switch: 2.
  int num_devices = 0;
  // Share of one rank's pair bytes (dispatch + combine) carried in the busiest direction, or in both together on a
  // half-duplex link. `dispatch_bytes` / `combine_bytes` are the row sizes.
  double Share(double dispatch_bytes, double combine_bytes, bool duplex) const;
  // Bytes of one rank's pairs carried in the busiest direction (both together on a half-duplex link) with the
  // dispatch rows as routed (dispatch_rows_fwd/rev): `dispatch_row_bytes` is one row, `combine_bytes` one combine row.
  double RoutedBytesPerPair(double dispatch_row_bytes, double combine_bytes, bool duplex) const;
};

// How the layer sends dispatch rows (ep::LayerConfig::dedup / dedup_hosts): `rows_per_pair` rows per (token,
// expert) pair to each destination rank (DedupRowsPerPair over ranks; 1 without deduplication). `per_node_nodes` > 0
// (per-node dispatch over that many full nodes): rows for another node go once per node, `node_rows_per_pair` per
// pair, to the proxy there (the device with the sender's index within its node, as the layer picks it), which
// forwards each destination's rows (`rows_per_pair`) inside its node.
struct DispatchRouting {
  double rows_per_pair = 1;
  int per_node_nodes = 0;
  double node_rows_per_pair = 1;
};

// One entry per link of cluster.links. InvalidArgument if num_ranks is < 1 or exceeds the devices, or a per-node
// routing whose nodes are not full.
StatusOr<std::vector<LinkTraffic>> ExpertTraffic(const Cluster& cluster, int num_ranks,
                                                 const DispatchRouting& routing = {});

namespace internal {

// The graph is expanded per device and routed from every device: keep it to a size that expands in seconds.
inline constexpr int64_t kMaxDevices = 65536;

// Bytes of one combined row (BF16).
inline double CombineRowBytes(const ModelConfig& model) { return 2.0 * static_cast<double>(model.hidden_size); }

// The dtype the expert GEMMs run in ("fp8", "bf16", "f32") and its bytes per weight element.
std::string GemmDtypeName(const DeviceSpec& device, DType dispatch_dtype);
double WeightBytesPerElement(absl::string_view gemm_dtype);

// Achieved / peak for one grouped-GEMM launch of `experts` experts with `rows_per_expert` rows each: the device's
// measured curve at that M when it has one, else min(max_gemm_efficiency * tile occupancy, memory roofline).
double GemmEfficiency(const DeviceSpec& device, const ModelConfig& model, double peak_flops, double weight_bytes,
                      double rows_per_expert, int experts);

// Single-source cheapest paths from device `src`: for every vertex, the link used to reach it (-1: none / src).
struct RouteTree {
  std::vector<int> via_link;
  std::vector<double> cost;
};
RouteTree ShortestPaths(const Cluster& cluster, int src);
// Walks the tree back from `dst`; empty links if unreachable (and src != dst).
Route RouteFromTree(const Cluster& cluster, const RouteTree& tree, int src, int dst);

// The EP group size for a step: `num_ranks`, or every device of the cluster when it is 0. Checks the model, that the
// group fits the cluster and divides the experts, the token count and the dispatch dtype (bf16/fp8, H a multiple of
// the FP8 block). Shared by CheckBalance and PredictStep so that both accept and reject the same steps.
StatusOr<int> ValidateStep(const ModelConfig& model, const Cluster& cluster, int num_ranks, int64_t tokens_per_rank,
                           DType dispatch_dtype);

// Ranks per node when `num_ranks` ranks fill the cluster's devices in order.
int RanksOnFirstNode(const Cluster& cluster, int num_ranks);
// Nodes that `num_ranks` ranks filling the devices in order span.
int NodesSpanned(const Cluster& cluster, int num_ranks);
// The nodes a per-node dispatch (ep::LayerConfig::dedup_hosts) spans: NodesSpanned when `dedup` and `dedup_hosts`
// are on and the ranks fill at least two nodes completely (the layer's proxies assume every node holds as many
// ranks); 0 when the per-rank figures apply. Shared by CheckBalance and PredictStep.
int PerNodeDispatchNodes(const Cluster& cluster, int num_ranks, bool dedup, bool dedup_hosts);

}  // namespace internal
}  // namespace waveep::topology

#endif  // WAVEEP_TOPOLOGY_TOPOLOGY_INTERNAL_H_
