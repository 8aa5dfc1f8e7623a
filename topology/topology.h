// Copyright 2026 The waveep Authors.
//
// topology/topology.h — the public header of the topology module: cluster descriptions, the per-link balance
// check, the wave-pipeline performance model, the tuner, and the link/GEMM probe.
//
// A Cluster is a graph: devices (one per EP rank) and switches are vertices, links are edges with a kind, a
// bandwidth per direction (GB/s = 1e9 B/s) and a latency (us). It is loaded from JSON (presets in
// configs/clusters/, schema in docs/topology.md) or measured by ProbeCluster under mpirun. Traffic between two
// devices follows the cheapest path (sum of 1/bandwidth), so sharing — several GPUs behind one NIC, a PCIe uplink,
// a cross-socket bus — falls out of the graph without special cases.
//
//   WAVEEP_ASSIGN_OR_RETURN(ModelConfig model, LoadModelConfig("deepseek-v4-pro"));
//   WAVEEP_ASSIGN_OR_RETURN(topology::Cluster cluster, topology::LoadCluster("h800-8x-ib400"));
//
//   // 1. The balance threshold and one verdict per link (waveep topo check).
//   topology::CheckOptions opts;
//   opts.dispatch_dtype = DType::kFP8E4M3;
//   opts.tokens_per_rank = 4096;
//   WAVEEP_ASSIGN_OR_RETURN(topology::CheckReport report, topology::CheckBalance(model, cluster, opts));
//   report.threshold.published_flops_per_byte == 6144   // 6HI / 3H = 2I
//   for (const topology::LinkCheck& l : report.links) ... l.margin, l.comm_bound, l.exposed_fraction ...
//
//   // 2. Predicted step time for W = 1..Wmax (waveep topo model; bench prints it next to measurements).
//   topology::StepShape shape;
//   shape.tokens_per_rank = 4096;
//   shape.dispatch_dtype = DType::kFP8E4M3;
//   WAVEEP_ASSIGN_OR_RETURN(topology::Prediction p, topology::PredictStep(model, cluster, shape));
//   p.t_seq_us, p.waves[w - 1].step_us, p.best_waves, p.best_speedup
//
// Units everywhere: bytes, GB/s (1e9 bytes/s, per direction), microseconds, TFLOP/s (1e12 FLOP/s, dense).
// Thread safety: every function is pure (reads its arguments, returns a value) except ProbeCluster, which is a
// collective over MPI and must be called by every rank. Nothing here throws or exits.
#ifndef WAVEEP_TOPOLOGY_TOPOLOGY_H_
#define WAVEEP_TOPOLOGY_TOPOLOGY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "comm/comm.h"
#include "runtime/runtime.h"

namespace waveep::topology {

// ==== cluster description ==========================================================================================

// What a link is physically. "nic" in JSON is accepted as an alias of rdma.
enum class LinkKind {
  kNvlink,    // GPU <-> NVSwitch (or GPU <-> GPU) NVLink
  kPcie,      // PCIe (GPU <-> PCIe switch <-> root complex)
  kRdma,      // RDMA NIC (InfiniBand / RoCE) into a fabric
  kNet,       // non-RDMA network (TCP through MPI)
  kXbus,      // CPU socket interconnect (UPI / Infinity Fabric)
  kShm,       // processes on one host exchanging through shared memory
  kLoopback,  // a rank's block to itself (one memcpy)
};
// "nvlink", "pcie", "rdma", "net", "xbus", "shm", "loopback".
absl::string_view LinkKindName(LinkKind k);
// Parses the names above (and "nic" -> kRdma). InvalidArgument listing the valid names otherwise.
StatusOr<LinkKind> ParseLinkKind(absl::string_view name);

// GEMM efficiency (achieved / peak) as a function of the rows of one expert's GEMM (M). Points are interpolated
// linearly in log2(M) and clamped at both ends. Empty = derive from the roofline (see DeviceSpec).
struct GemmEfficiencyCurve {
  std::vector<double> rows;        // strictly increasing, > 0
  std::vector<double> efficiency;  // same length, in (0, 1]
  bool empty() const { return rows.empty(); }
  // Efficiency at `m` rows (m <= 0 is treated as 1 row). Requires !empty().
  double At(double m) const;
};

// One accelerator (or, on a CPU-only machine, one rank's share of the host). Every rank of a cluster runs on a
// device of this type (clusters are homogeneous).
struct DeviceSpec {
  std::string model;         // "NVIDIA H800 SXM5 80GB", "AMD EPYC (2 cores)"
  std::string kind = "gpu";  // "gpu" or "cpu"
  // Dense peak per device, TFLOP/s, keyed by dtype name ("fp8", "bf16", "f32"). At least one entry.
  std::map<std::string, double> compute_tflops;
  // If set, expert GEMMs always run in this dtype whatever the dispatch dtype (CPU: "f32"). Otherwise GEMMs run in
  // the dispatch dtype (FP8 dispatch -> FP8 GEMM, BF16 -> BF16).
  std::string gemm_dtype;
  // Best achievable fraction of peak for large GEMMs (used by the roofline when no curve is given). (0, 1].
  double max_gemm_efficiency = 0.7;
  double memory_bw_gbps = 0;  // device memory bandwidth (read + write), GB/s; > 0
  double memory_gib = 0;      // device memory, GiB (0 = unknown); the tuner checks expert weights against it
  int sm_count = 0;           // GPU: SMs, for the grouped-GEMM tile-quantisation term (0 = ignore)
  // CPU only: cores shared by the ranks of one node (0 = no contention model). With it, the model slows compute
  // and comm down while both streams of a rank are busy and threads outnumber cores.
  int cores = 0;
  // Measured interference (`topo probe`): while a rank's exchange and its expert GEMMs run at once, the GEMMs run at
  // `overlap_compute_speed` and the exchange at `overlap_comm_speed` of their speed alone, in (0, 1]. Both 0 = not
  // measured: the model then estimates contention from `cores` (CPU) or assumes none. Measured, they replace that
  // estimate: they also hold what `cores` cannot see (the network stack's CPU time, hosts that share cores, memory
  // bandwidth).
  double overlap_compute_speed = 0;
  double overlap_comm_speed = 0;
  GemmEfficiencyCurve gemm_efficiency;  // measured curve (probe) or published points; empty = roofline
  // Optional host-side conversion rates, GB/s of FP32 data: "to_bf16", "from_bf16", "to_fp8", "from_fp8". Absent
  // conversions are free (GPU kernels fuse them). The probe measures them on the CPU.
  std::map<std::string, double> convert_gbps;
  // Fixed cost of one scheduled operation (stream task / kernel launch), microseconds.
  double op_overhead_us = 0;

  // Peak TFLOP/s for `dtype_name`; NotFound naming the dtype and the rates that exist.
  StatusOr<double> PeakTflops(absl::string_view dtype_name) const;
};

// A switch (or any non-device vertex: NVSwitch, PCIe switch, CPU socket, NIC, fabric) as declared in JSON.
struct SwitchSpec {
  std::string name;            // with "count" > 0: instances name0 .. name{count-1}
  int count = 0;               // 0 = one switch called `name`
  std::string scope = "node";  // "node" (one per node), "group" (one per `group_nodes` nodes), "cluster"
  int group_nodes = 0;         // for scope "group"
};

// A link template as declared in JSON. Endpoints are "device" or a switch name; "{d}" is the device index within
// its node and "{i}" the instance index, with "/" and "%" by integer constants allowed: "plx{d/2}", "cpu{i/2}".
// A link with a "device" endpoint has one instance per device; otherwise `count` instances ({i} = 0..count-1),
// repeated once per node / group when an endpoint switch has that scope.
struct LinkSpec {
  std::string name;  // e.g. "nvlink"; rows of `topo check` are labelled with it
  LinkKind kind = LinkKind::kNvlink;
  std::string from = "device";
  std::string to;
  int count = 1;
  double bw_gbps = 0;           // per direction, > 0
  double latency_us = 0;        // >= 0
  bool duplex = true;           // false: both directions share bw_gbps (shared memory, loopback memcpy)
  double oversubscription = 1;  // >= 1: the fabric behind the link delivers bw_gbps / oversubscription under load
  // Per-node bandwidth (node index -> GB/s per direction) replacing bw_gbps on that node's instances: one host with a
  // slower NIC. Only for links that repeat per node (a "device" endpoint or a node-scoped switch); JSON
  // "node_bw_gbps": {"2": 0.0625}. The probe writes the NIC rate it measured for every node here.
  std::map<int, double> node_bw_gbps;
  double BwOnNode(int node) const {
    auto it = node_bw_gbps.find(node);
    return it == node_bw_gbps.end() ? bw_gbps : it->second;
  }
};

// One vertex of the expanded graph.
struct Vertex {
  std::string name;  // "n0.d3", "n0.nvswitch", "ib", "g0.leaf"
  int device = -1;   // global device index (node * devices_per_node + d), -1 for switches
  int node = -1;     // node index, -1 for group/cluster-scoped switches
};

// One link instance of the expanded graph.
struct Link {
  std::string name;  // the template's name
  LinkKind kind = LinkKind::kNvlink;
  int a = 0, b = 0;  // vertex indices; "forward" is a -> b. Loopback links have a == b.
  double bw_gbps = 0;
  double latency_us = 0;
  bool duplex = true;
  double oversubscription = 1;
  double effective_bw_gbps() const { return bw_gbps / oversubscription; }
};

// All-to-all-v timings measured by the probe (OSU style: `bytes` per peer block, every rank to every rank).
struct AlltoallPoint {
  int64_t bytes = 0;        // per (source, destination) block
  double comm_avg_us = 0;   // comm backend, blocking Alltoallv; avg over ranks of the per-iteration mean
  double comm_min_us = 0;   // fastest rank's mean
  double comm_max_us = 0;   // slowest rank's mean
  double async_avg_us = 0;  // comm backend, AlltoallvAsync on a stream + Synchronize (what the MoE layer does)
  double mpi_avg_us = 0;    // plain MPI_Alltoallv on the same buffers, same run (0 = not measured)
  double mpi_min_us = 0;
  double mpi_max_us = 0;
  // The probe times each method in several interleaved rounds, each round's per-iteration mean averaged over ranks:
  // the median round (robust to a round hit by descheduling) and the round-to-round spread, (slowest - fastest) /
  // mean. 0 = not measured (files from older probes).
  double comm_median_us = 0;
  double mpi_median_us = 0;
  double comm_spread = 0;
  double mpi_spread = 0;
  // Other comm backends timed beside it (ProbeOptions::compare_backends): blocking Alltoallv on the same buffers, in
  // the same rotation; median round and spread as above.
  struct Other {
    std::string backend;
    double median_us = 0;
    double spread = 0;
  };
  std::vector<Other> others{};  // (an initializer, so that aggregate initialization may leave it out)

  // How the comm backend's blocking exchange compares with MPI_Alltoallv at this size, on the median rounds (the
  // means where medians were not measured): kFaster when at or below MPI's; kWithinNoise when slower by no more than
  // the larger of the two round-to-round spreads (the runs cannot tell them apart); kSlower otherwise; kNotCompared
  // when MPI was not measured.
  enum class VersusMpi { kNotCompared, kFaster, kWithinNoise, kSlower };
  VersusMpi CompareWithMpi() const;
  // MPI_Alltoallv's time over the backend's on the same statistic (> 1: the backend is faster); 0 when MPI was not
  // measured.
  double MpiOverComm() const;
};
struct AlltoallCurve {
  int ranks = 0;
  std::string backend;
  std::vector<AlltoallPoint> points;  // increasing bytes
  // Time of one exchange with `block_bytes` per peer, interpolated linearly between points and extrapolated past
  // the last one with the slope of the last two. Uses async_avg_us when measured, else comm_avg_us.
  double ExchangeUs(double block_bytes) const;
};

// Pairwise measurement between two ranks (probe).
struct PairMeasurement {
  int a = 0, b = 0;       // world ranks, a < b
  std::string kind;       // "shm" or "net"
  double latency_us = 0;  // half round trip of an 8-byte ping-pong
  double uni_gbps = 0;    // a -> b only
  double bidir_gbps = 0;  // both directions at once, sum of both
};

// Present when the cluster was measured (`"probed": true` in JSON).
struct ProbeInfo {
  std::string date;       // ISO 8601, UTC
  std::string hostnames;  // comma-separated, one per node
  std::string backend;
  int ranks = 0;
  std::string model;  // model whose shapes the GEMM probe used
  int blas_threads = 0;
  std::vector<PairMeasurement> pairs;
  std::optional<AlltoallCurve> alltoall;
  std::vector<std::string> notes;  // how each figure in the file was derived
};

struct Cluster {
  std::string name;
  std::string description;
  std::vector<std::string> sources;  // where every figure comes from
  std::string origin;                // file it was loaded from ("" if built in code)
  int num_nodes = 1;
  int devices_per_node = 1;
  DeviceSpec device;
  std::vector<SwitchSpec> switches;
  std::vector<LinkSpec> link_specs;
  std::optional<LinkSpec> loopback;  // absent: memcpy at device.memory_bw_gbps / 2, latency 0
  std::optional<ProbeInfo> probe;

  // The expanded graph, filled by ExpandCluster (ParseCluster/LoadCluster/WithNodes do it). Devices are vertices
  // 0 .. num_devices()-1, in global device order.
  std::vector<Vertex> vertices;
  std::vector<Link> links;

  int num_devices() const { return num_nodes * devices_per_node; }
  bool probed() const { return probe.has_value(); }
};

// Builds `vertices` and `links` from the templates and validates everything (ValidateCluster). InvalidArgument naming
// the field, e.g. `links[1] ("nic").to = "ibb": no switch named "ibb" (switches: nvswitch, ib)`.
Status ExpandCluster(Cluster* cluster);

// Checks the templates and, if expanded, that every device can reach every other. InvalidArgument naming the field:
// unknown link endpoints, bandwidth <= 0, negative latency, missing compute rate, bad scopes.
Status ValidateCluster(const Cluster& cluster);

// Parses and expands JSON text; `origin` names it in errors. Unknown fields are errors (typos get caught).
StatusOr<Cluster> ParseCluster(absl::string_view json_text, absl::string_view origin);

// A preset by name (searched in PresetDirs("clusters"), runtime/config.h) or a file by path (anything with '/' or
// ending in ".json"). NotFound for an unknown preset lists the presets.
StatusOr<Cluster> LoadCluster(absl::string_view name_or_path);

// Preset names found in PresetDirs("clusters"), sorted.
std::vector<std::string> ListClusterPresets();

// The same cluster with `num_nodes` identical nodes (re-expanded). InvalidArgument if num_nodes < 1 or if a
// group-scoped switch does not divide it.
StatusOr<Cluster> WithNodes(const Cluster& cluster, int num_nodes);

// JSON in the schema ParseCluster reads (pretty-printed, 2 spaces). Round-trips: ParseCluster(ClusterToJson(c))
// describes the same cluster.
std::string ClusterToJson(const Cluster& cluster);

// "n0.d3 -> n0.nvswitch" style label of a link (loopback: "n0.d3 (self)").
std::string LinkLabel(const Cluster& cluster, const Link& link);

// ==== balance threshold and check ==================================================================================

// The FLOPs-per-byte threshold (docs/topology.md §2), derived from the model shape and dtypes (never hard-coded).
struct Threshold {
  double flops_per_pair = 0;            // 6 * H * I
  double published_bytes_per_pair = 0;  // (1 + 2) * H: FP8 dispatch + BF16 combine, no refinements
  double published_flops_per_byte = 0;  // 6HI / 3H = 2I (6144 for V4-Pro, 4096 for V4-Flash)
  double dtype_bytes_per_pair = 0;      // (b_dispatch + 2) * H for the dtype asked for, no refinements
  double dtype_flops_per_byte = 0;
  double scale_bytes_per_pair = 0;           // FP8: 4 bytes per fp8_block_size elements of H; 0 for BF16
  double metadata_bytes_per_pair = 0;        // count exchange (E int64 per rank per step) over T*K pairs
  double refined_bytes_per_pair = 0;         // dtype + scales + metadata
  double refined_flops_per_byte = 0;         // per byte moved, local pairs included
  double local_fraction = 0;                 // 1 / R of the pairs never leave their rank
  double refined_remote_flops_per_byte = 0;  // per byte that crosses a link: refined / (1 - 1/R)
};
// InvalidArgument for R < 1, a dtype other than bf16/fp8, or an invalid model. tokens_per_rank 0 leaves the
// metadata term out.
StatusOr<Threshold> DeriveThreshold(const ModelConfig& model, DType dispatch_dtype, int num_ranks,
                                    int64_t tokens_per_rank);

struct CheckOptions {
  DType dispatch_dtype = DType::kFP8E4M3;  // combine is always BF16
  int64_t tokens_per_rank = 4096;          // sets rows per expert, hence the GEMM efficiency
  int num_ranks = 0;                       // EP group size; 0 = every device of the cluster
  // Dispatch deduplication (ep::LayerConfig::dedup, on by default in the layer and the CLI): a token's dispatch row
  // crosses to each destination rank once, DedupRowsPerPair(model, R, 1) rows per (token, expert) pair on average.
  bool dedup = false;
  // With `dedup`, across nodes (ep::LayerConfig::dedup_hosts, on by default): a token crosses to each other node
  // once, DedupRowsPerPair(model, R, 1, R / nodes) rows per pair on links that only inter-node traffic crosses (NICs,
  // fabric), to the proxy there (the device with the sender's index within its node), which forwards the rows over
  // its node's links (counted on them). Needs every node full (R a multiple of devices_per_node); otherwise per rank.
  bool dedup_hosts = false;
};

struct LinkCheck {
  int link = 0;        // index into cluster.links
  std::string label;   // LinkLabel
  double bw_gbps = 0;  // effective (after oversubscription), per direction
  // Fraction of one rank's pair bytes on this link (busiest direction), the pair bytes being this link's
  // (dispatch_rows_per_pair below): LinkTraffic::RoutedBytesPerPair over them.
  double share = 0;
  int num_devices = 0;       // ranks behind the link (LinkTraffic::num_devices): GPUs per NIC, ...
  double required_gbps = 0;  // bandwidth that keeps the link hidden behind the expert GEMMs
  // Device FLOPs per byte this link can move for it: effective FLOP/s / (bw / share). Balanced iff it is at most
  // CheckReport::pair_flops_per_byte (the link's own form of "C / B <= 2I").
  double flops_per_byte = 0;
  double margin = 0;            // bw / required (1e30 if the link's share is 0)
  bool comm_bound = false;      // margin < 1
  double exposed_fraction = 0;  // comm-bound: 1 - margin, the part of the link's transfer time compute cannot hide
  // Bytes the link moves per step in its busiest direction (both together when half duplex): share x T x K x pair
  // bytes, with CheckOptions::dedup as given, and what they would be without deduplication.
  double bytes_per_step = 0;
  double bytes_per_step_without_dedup = 0;
  // Dispatch rows per pair on this link, and 6HI / (those rows' bytes + a combine row): the threshold its
  // flops_per_byte is held against: the rows routed over the link over the pair flows that cross it. The report's
  // values, except with CheckOptions::dedup_hosts: inter-node links carry the node-level rows, a proxy's
  // intra-node links also the rows it forwards (a GPU's NVLink port 2x the per-rank rows).
  double dispatch_rows_per_pair = 1;
  double pair_flops_per_byte = 0;
  bool internode = false;  // only traffic between nodes crosses it
};

struct CheckReport {
  Threshold threshold;
  int num_ranks = 0;
  int local_experts = 0;
  double rows_per_expert = 0;  // T * K * R / E under uniform routing
  std::string gemm_dtype;      // dtype the expert GEMMs run in
  double peak_tflops = 0;
  double gemm_efficiency = 0;   // at rows_per_expert
  double effective_tflops = 0;  // peak * efficiency
  // Dispatch rows per (token, expert) pair that cross a link: DedupRowsPerPair(model, R, 1) with CheckOptions::dedup,
  // else 1; and the bytes of one pair on a link: dispatch row (with scales) x dispatch_rows_per_pair + combine row.
  double dispatch_rows_per_pair = 1;
  double pair_bytes = 0;
  // With CheckOptions::dedup_hosts (and dedup) over full nodes: DedupRowsPerPair(model, R, 1, R / nodes), the dispatch
  // rows per pair on inter-node links; else dispatch_rows_per_pair.
  double internode_dispatch_rows_per_pair = 1;
  // A pair's bytes on an inter-node link with those rows, and 6HI / them (the threshold of those links).
  double internode_pair_bytes = 0;
  double internode_pair_flops_per_byte = 0;
  int nodes = 1;  // nodes the EP group spans
  // 6HI / pair_bytes: the threshold each link's flops_per_byte is held against. Without dedup it equals
  // threshold.refined_remote_flops_per_byte * (1 - 1/R) minus metadata.
  double pair_flops_per_byte = 0;
  std::vector<LinkCheck> links;  // one per link instance that carries expert traffic, in cluster.links order
  bool any_comm_bound = false;
  int worst = -1;  // index into `links` with the smallest margin (-1 if none carries traffic)
};

// Per-link balance: required_gbps = share * effective FLOP/s / (6HI / pair bytes). InvalidArgument when the model
// does not split over the ranks (E % R), when the cluster lacks the compute rate for the GEMM dtype, etc.
StatusOr<CheckReport> CheckBalance(const ModelConfig& model, const Cluster& cluster, const CheckOptions& options);

// The `waveep topo check --json` document (pretty-printed, 2 spaces, newline-terminated): what was checked (model,
// cluster, options), the threshold, the device figures and one entry per link of `report`. `comm_bound_rows` (rows of
// the caller's text table that are comm-bound) and `exit_code` are the caller's and written as given.
std::string CheckReportToJson(const CheckReport& report, const ModelConfig& model, const Cluster& cluster,
                              const CheckOptions& options, int comm_bound_rows, int exit_code);

// ==== performance model =============================================================================================

// How waves split the work. waveep's scheduler splits each rank's experts (per-expert M is unchanged; each wave's
// grouped GEMM has fewer experts). kTokens models schedulers that split tokens (per-expert M shrinks with W).
enum class WaveSplit { kExperts, kTokens };

struct StepShape {
  int64_t tokens_per_rank = 128;        // T, >= 0
  DType dispatch_dtype = DType::kBF16;  // bf16 or fp8; combine is BF16
  int num_ranks = 0;                    // R; 0 = every device of the cluster (ranks on devices 0..R-1)
  // Wmax: predictions for W = 1..Wmax. 0 = min(local experts, 16). InvalidArgument above the local experts when
  // waves split experts (waveep refuses that W too).
  int max_waves = 0;
  bool shared_experts = true;  // the model's shared expert(s), computed locally after the last wave
  int blas_threads = 0;        // CPU contention model; 0 = cores per rank - 1 (min 1), as the CLI
  WaveSplit split = WaveSplit::kExperts;
  bool use_measured_alltoall = true;  // use the probe's all-to-all curve when it matches R
  // Dispatch deduplication (ep::LayerConfig::dedup): dispatch rows per pair = DedupRowsPerPair(model, R, W).
  bool dedup = false;
  // With `dedup` over several full nodes (ep::LayerConfig::dedup_hosts): a wave's exchange carries
  // DedupRowsPerPair(model, R, W, R / nodes) rows per pair (the inter-node link bounds it), plus the forwarding inside
  // the node (a copy and a shared-memory hop of the per-rank rows, at memory speed).
  bool dedup_hosts = false;
};

// Expected dispatch rows per (token, expert) pair when each token is sent once per destination rank and wave (the
// layer's dispatch deduplication), under uniform routing within the model's group limit: a token's topk_group groups
// are drawn uniformly from n_group, its K experts uniformly from the drawn groups' experts; ranks hold contiguous
// experts, each rank's split into W waves of equal expert counts. E[(rank, wave) slices a token reaches] / K =
// sum over slices of (1 - C(P - m, K) / C(P, K)) / K, averaged over the group draws (P: the drawn groups' experts, m:
// the slice's experts among them). In (0, 1]; 1 when every slice holds one expert.
// Per node (ep::LayerConfig::dedup_hosts): `ranks_per_node` consecutive ranks form a destination, once per token and
// wave; its wave w is the union of its ranks' waves w (not contiguous experts when W > 1). num_ranks must be a
// multiple of it (else 1).
double DedupRowsPerPair(const ModelConfig& model, int num_ranks, int num_waves, int ranks_per_node = 1);

// Per-wave figures for one W. Times are for one wave unless named otherwise.
struct WavePrediction {
  int waves = 1;
  double step_us = 0;          // simulated two-stream schedule (layout and tail included) — the prediction
  double formula_us = 0;       // closed form d + (W-1)*max(c, d+r) + c + r (routed experts only)
  double dispatch_us = 0;      // d: pack + exchange of one wave (mean over waves)
  double compute_us = 0;       // c: gather/convert + expert FFN + result conversion of one wave (mean)
  double combine_us = 0;       // r: exchange of one wave's results (mean)
  double gemm_efficiency = 0;  // of one wave's grouped GEMM
  double exposed_comm_us = 0;  // step_us - (busy compute time of the step): communication not hidden
  double speedup = 0;          // t_seq_us / step_us
};

struct Prediction {
  int num_ranks = 0;
  int local_experts = 0;
  double rows_per_expert = 0;         // per step, uniform routing
  double local_fraction = 0;          // 1 / R
  double dispatch_row_bytes = 0;      // H * b + FP8 scales
  double combine_row_bytes = 0;       // 2H
  double dispatch_rows_per_pair = 1;  // DedupRowsPerPair at W = 1 with StepShape::dedup, else 1
  // StepShape::dedup_hosts in effect: rows per pair sent to other nodes (DedupRowsPerPair per node, W = 1).
  bool hierarchical = false;
  double internode_rows_per_pair = 1;
  double dispatch_bytes_per_rank = 0;  // sent to other ranks per step (W = 1)
  double combine_bytes_per_rank = 0;
  std::string gemm_dtype;
  double peak_tflops = 0;
  // Whole-step phase times at W = 1 (sum over waves): D, C, R of docs/topology.md §4.
  double dispatch_us = 0, compute_us = 0, combine_us = 0;
  double layout_us = 0;               // routing check + count exchange + wave boundaries
  double shared_us = 0;               // shared expert(s), overlapping the last combine
  double reduce_us = 0;               // weighted combine-reduce at the origin
  double t_seq_us = 0;                // == waves[0].step_us
  std::vector<WavePrediction> waves;  // W = 1 .. Wmax
  int best_waves = 1;
  double best_speedup = 1;
  std::string comm_source;         // "measured all-to-all (probe, R ranks)" or "link model (bottleneck: ...)"
  std::vector<std::string> notes;  // assumptions that shaped the numbers
};

// Predicts one MoE layer step per rank for W = 1..Wmax (see docs/topology.md for every equation). InvalidArgument
// for shapes that waveep itself would refuse (E % R, bad dtype, T < 0) and for clusters lacking a needed rate.
StatusOr<Prediction> PredictStep(const ModelConfig& model, const Cluster& cluster, const StepShape& shape);

// The `waveep topo model --json` document (pretty-printed, 2 spaces, newline-terminated): the step asked for, the
// phase times and one entry per W of `prediction`.
std::string PredictionToJson(const Prediction& prediction, const ModelConfig& model, const Cluster& cluster,
                             const StepShape& shape);

// ==== tuner ========================================================================================================

struct TuneCandidate {
  int group_size = 0;  // EP ranks per group (devices 0..G-1, i.e. filling nodes in order)
  int nodes_spanned = 0;
  std::string layout;  // "within one node (nvlink)", "across 2 nodes (rdma)", ...
  int best_waves = 1;
  double step_us = 0;  // at best_waves
  double t_seq_us = 0;
  double weight_gib_per_device = 0;  // this layer's routed expert weights per device
  bool fits = true;                  // weights fit in device memory
  std::string bottleneck;            // slowest link kind for this group
};
struct TuneResult {
  std::vector<TuneCandidate> candidates;  // increasing group size
  int best = -1;                          // index of the fastest candidate that fits (-1: none)
};
// Tries every EP group size G that divides the cluster's devices and the experts, predicts each at its best W.
StatusOr<TuneResult> Tune(const ModelConfig& model, const Cluster& cluster, const StepShape& shape);

// The `waveep topo tune --json` document (pretty-printed, 2 spaces, newline-terminated): one entry per candidate and
// the recommended one (null when none fits), with `recommended_command`, the caller's command line for it.
std::string TuneResultToJson(const TuneResult& result, const ModelConfig& model, const Cluster& cluster,
                             const StepShape& shape, absl::string_view recommended_command);

// ==== probe ========================================================================================================

struct ProbeOptions {
  std::string backend = "mpi";  // comm backend measured (comm::AvailableBackends())
  // More comm backends timed in the all-to-all sweep beside `backend` and MPI_Alltoallv, on the same buffers and
  // sizes, in the same interleaved rounds (AlltoallPoint::others). The cluster's links come from `backend` only.
  std::vector<std::string> compare_backends;
  int64_t min_bytes = 1024;  // all-to-all sweep, per peer block, doubling
  int64_t max_bytes = 64ll << 20;
  int iters = 20;  // timed iterations per size and method, at least (small sizes run more, see docs)
  int warmup = 2;
  // Each of the all-to-all sweep's timing rounds (5 per method and size) runs at least this long on the slowest
  // rank: iterations are added to short rounds (small blocks) so that one descheduling cannot dominate a round.
  double round_min_ms = 5;
  int64_t pair_bytes = 4ll << 20;  // pairwise bandwidth message size
  int pair_iters = 10;
  int gemm_max_rows = 256;  // GEMM-rate probe: M = 1, 2, 4, .. this
  double gemm_min_ms = 20;  // each GEMM point runs at least this long
  int blas_threads = 1;     // set by the caller (CLI: ChooseBlasThreads)
  // Called on rank 0 with one line per step (the CLI prints them on stderr). May be empty.
  std::function<void(absl::string_view)> progress;
  absl::Duration timeout = absl::Seconds(60);
};

// Measures the cluster the job runs on (collective over WorldComm(ctx); every rank must call it with the same options).
// Devices are ranks (ranks per node must be equal on every node); links are shm within a node, net between nodes,
// and loopback; the GEMM rate of `model`'s expert FFN (FP32 via kernels::GroupedGemmNT on the CPU) gives the compute
// rate and the efficiency curve. Every rank returns the same Cluster (probed, expanded, valid).
StatusOr<Cluster> ProbeCluster(const ProcessContext& ctx, const ModelConfig& model, const ProbeOptions& options);

}  // namespace waveep::topology

#endif  // WAVEEP_TOPOLOGY_TOPOLOGY_H_
