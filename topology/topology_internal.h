// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "topology/topology.h"
//
// Helpers shared by the topology .cc files: GEMM efficiency, routing trees, row sizes. Not part of the API.
#ifndef WAVEEP_TOPOLOGY_TOPOLOGY_INTERNAL_H_
#define WAVEEP_TOPOLOGY_TOPOLOGY_INTERNAL_H_

#include <string>
#include <vector>

#include "topology/topology.h"

namespace waveep::topology::internal {

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

}  // namespace waveep::topology::internal

#endif  // WAVEEP_TOPOLOGY_TOPOLOGY_INTERNAL_H_
