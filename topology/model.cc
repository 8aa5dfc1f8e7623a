// Copyright 2026 The waveep Authors.
//
// The performance model: per-operation costs of one MoE layer step on one rank, replayed through the same
// two-stream schedule the wave scheduler enqueues (ep/moe_layer.cc), and the tuner on top of it. Every equation is
// in docs/topology.md.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {
namespace {

// Time of one all-to-all-v exchange as a function of the bytes each rank sends each peer.
class ExchangeModel {
 public:
  static StatusOr<ExchangeModel> Create(const Cluster& c, int r, bool use_measured) {
    ExchangeModel m;
    m.overhead_us_ = c.device.op_overhead_us;
    if (use_measured && c.probe.has_value() && c.probe->alltoall.has_value() && c.probe->alltoall->ranks == r &&
        !c.probe->alltoall->points.empty()) {
      m.curve_ = &*c.probe->alltoall;
      m.source_ = absl::StrCat("measured all-to-all (probe, ", r, " ranks, ", c.probe->alltoall->backend,
                               c.probe->alltoall->points.front().async_avg_us > 0 ? " async" : "", ")");
      return m;
    }
    WAVEEP_ASSIGN_OR_RETURN(std::vector<LinkTraffic> traffic, ExpertTraffic(c, r));
    // Per flow of `b` bytes, a link direction carrying k flows needs k * b / bw; flows of one exchange run at once.
    double worst_d = 0, worst_c = 0;
    for (size_t li = 0; li < c.links.size(); ++li) {
      const Link& l = c.links[li];
      const LinkTraffic& t = traffic[li];
      const double bw = l.effective_bw_gbps() * 1e3;  // bytes per microsecond
      const double kd = (l.duplex ? std::max(t.dispatch_fwd, t.dispatch_rev) : t.dispatch_fwd + t.dispatch_rev) * r;
      const double kc = (l.duplex ? std::max(t.combine_fwd, t.combine_rev) : t.combine_fwd + t.combine_rev) * r;
      if (kd / bw > worst_d) {
        worst_d = kd / bw;
        m.bottleneck_ = LinkLabel(c, l) + " (" + std::string(LinkKindName(l.kind)) + ")";
      }
      worst_c = std::max(worst_c, kc / bw);
    }
    m.us_per_byte_dispatch_ = worst_d;
    m.us_per_byte_combine_ = worst_c;
    for (int s = 0; s < r; ++s) {
      internal::RouteTree tree = internal::ShortestPaths(c, s);
      for (int d = 0; d < r; ++d) {
        m.latency_us_ = std::max(m.latency_us_, internal::RouteFromTree(c, tree, s, d).latency_us);
      }
    }
    m.source_ = absl::StrCat("link model (bottleneck ", m.bottleneck_, ")");
    return m;
  }

  // One exchange with `block_bytes` to every peer (and to itself).
  double Us(double block_bytes, bool dispatch) const {
    if (curve_ != nullptr) return curve_->ExchangeUs(block_bytes);
    return overhead_us_ + latency_us_ + block_bytes * (dispatch ? us_per_byte_dispatch_ : us_per_byte_combine_);
  }
  const std::string& source() const { return source_; }

 private:
  const AlltoallCurve* curve_ = nullptr;
  double overhead_us_ = 0;
  double latency_us_ = 0;
  double us_per_byte_dispatch_ = 0, us_per_byte_combine_ = 0;
  std::string bottleneck_;
  std::string source_;
};

// One operation of the schedule: runs on a stream after the previous operation of that stream and its deps.
struct Op {
  int stream;  // 0 comm, 1 compute
  double work_us;
  std::vector<int> deps;
};

struct SimResult {
  double end_us = 0;
  double compute_work_us = 0;
};

// Replays the ops on two streams. While both streams are busy, each progresses at its `both` rate (CPU cores
// shared by the compute threads and the comm thread), otherwise at full speed.
SimResult Simulate(const std::vector<Op>& ops, double comm_rate_both, double compute_rate_both) {
  const int n = static_cast<int>(ops.size());
  std::vector<std::vector<int>> queue(2);
  for (int i = 0; i < n; ++i) queue[ops[i].stream].push_back(i);
  std::vector<double> remaining(n), done(n, -1.0);
  for (int i = 0; i < n; ++i) remaining[i] = ops[i].work_us;
  size_t head[2] = {0, 0};
  int running[2] = {-1, -1};
  double t = 0;
  int finished = 0;
  SimResult res;
  for (const Op& o : ops) res.compute_work_us += o.stream == 1 ? o.work_us : 0;
  while (finished < n) {
    for (int s = 0; s < 2; ++s) {
      if (running[s] >= 0 || head[s] >= queue[s].size()) continue;
      const int i = queue[s][head[s]];
      bool ready = true;
      for (int d : ops[i].deps) ready = ready && done[d] >= 0;
      if (ready) running[s] = i;
    }
    WAVEEP_CHECK(running[0] >= 0 || running[1] >= 0) << "performance model schedule deadlocked";
    const bool both = running[0] >= 0 && running[1] >= 0;
    const double rate[2] = {both ? comm_rate_both : 1.0, both ? compute_rate_both : 1.0};
    double dt = std::numeric_limits<double>::infinity();
    for (int s = 0; s < 2; ++s) {
      if (running[s] >= 0) dt = std::min(dt, remaining[running[s]] / rate[s]);
    }
    t += dt;
    for (int s = 0; s < 2; ++s) {
      const int i = running[s];
      if (i < 0) continue;
      remaining[i] -= dt * rate[s];
      if (remaining[i] <= 1e-9 * std::max(1.0, ops[i].work_us)) {
        done[i] = t;
        running[s] = -1;
        ++head[s];
        ++finished;
      }
    }
  }
  res.end_us = t;
  return res;
}

double ConvertUs(const DeviceSpec& d, const char* key, double f32_bytes) {
  auto it = d.convert_gbps.find(key);
  return it == d.convert_gbps.end() ? 0.0 : f32_bytes / (it->second * 1e3);
}

}  // namespace

double DedupRowsPerPair(const ModelConfig& model, int num_ranks, int num_waves, int ranks_per_node) {
  const int e_count = model.num_experts, k = model.top_k;
  if (num_ranks < 1 || num_waves < 1 || e_count < 1 || k < 1 || e_count % num_ranks != 0 || ranks_per_node < 1 ||
      num_ranks % ranks_per_node != 0)
    return 1.0;
  const int l = e_count / num_ranks;
  if (num_waves > l) return 1.0;
  // Groups (DeepSeek's n_group / topk_group); none = one group drawn always.
  bool grouped =
      model.n_group > 1 && model.topk_group >= 1 && model.topk_group <= model.n_group && e_count % model.n_group == 0;
  if (grouped) {  // enumerate the group draws only while there are few (C(n_group, topk_group) <= 10^5)
    double draws = 1;
    for (int i = 0; i < model.topk_group; ++i) draws = draws * (model.n_group - i) / (i + 1);
    grouped = draws <= 1e5;
  }
  const int n_group = grouped ? model.n_group : 1, topk_group = grouped ? model.topk_group : 1;
  const int g_size = e_count / n_group;
  // Slices: rank r's wave w = its local experts [b, e), W waves of L / W experts (the first L % W one more); a
  // destination's wave w = the union of its ranks' waves w.
  std::vector<std::vector<int>> slices(static_cast<size_t>(num_ranks / ranks_per_node) * num_waves);
  for (int r = 0; r < num_ranks; ++r) {
    int b = r * l;
    for (int w = 0; w < num_waves; ++w) {
      const int n = l / num_waves + (w < l % num_waves ? 1 : 0);
      std::vector<int>& slice = slices[static_cast<size_t>(r / ranks_per_node) * num_waves + w];
      for (int x = b; x < b + n; ++x) slice.push_back(x);
      b += n;
    }
  }
  // P(a slice with m of the P drawn experts gets none of K uniform draws without replacement) = C(P-m, K) / C(P, K).
  auto untouched = [k](int pool, int m) {
    if (pool - m < k) return 0.0;
    double q = 1.0;
    for (int i = 0; i < k; ++i) q *= static_cast<double>(pool - m - i) / (pool - i);
    return q;
  };
  // Every draw of topk_group groups (at most C(n_group, topk_group); DeepSeek-V3: C(8, 4) = 70).
  std::vector<int> chosen(topk_group);
  for (int i = 0; i < topk_group; ++i) chosen[i] = i;
  double sum = 0;
  int64_t draws = 0;
  std::vector<char> in_draw(n_group);
  for (;;) {
    std::fill(in_draw.begin(), in_draw.end(), 0);
    for (int g : chosen) in_draw[g] = 1;
    const int pool = topk_group * g_size;
    double reached = 0;
    for (const std::vector<int>& slice : slices) {
      int m = 0;
      for (int x : slice) m += in_draw[x / g_size];
      if (m > 0) reached += 1.0 - untouched(pool, m);
    }
    sum += reached;
    ++draws;
    // Next combination in lexicographic order.
    int i = topk_group - 1;
    while (i >= 0 && chosen[i] == n_group - topk_group + i) --i;
    if (i < 0) break;
    ++chosen[i];
    for (int j = i + 1; j < topk_group; ++j) chosen[j] = chosen[j - 1] + 1;
  }
  return std::min(1.0, sum / static_cast<double>(draws) / k);
}

StatusOr<Prediction> PredictStep(const ModelConfig& model, const Cluster& cluster, const StepShape& shape) {
  WAVEEP_ASSIGN_OR_RETURN(const int r, internal::ValidateStep(model, cluster, shape.num_ranks, shape.tokens_per_rank,
                                                              shape.dispatch_dtype));
  const DeviceSpec& dev = cluster.device;
  Prediction p;
  p.num_ranks = r;
  p.local_experts = model.num_experts / r;
  const int l = p.local_experts;
  const double h = static_cast<double>(model.hidden_size), inter = static_cast<double>(model.moe_intermediate_size);
  const double t_tok = static_cast<double>(shape.tokens_per_rank);
  const double pairs = t_tok * model.top_k;  // sent by, and (uniform) received by, every rank
  p.rows_per_expert = pairs / l;
  p.local_fraction = 1.0 / r;
  p.dispatch_row_bytes = static_cast<double>(model.DispatchRowBytes(shape.dispatch_dtype));
  p.combine_row_bytes = internal::CombineRowBytes(model);
  p.dispatch_rows_per_pair = shape.dedup ? DedupRowsPerPair(model, r, 1) : 1.0;
  p.dispatch_bytes_per_rank = pairs * p.dispatch_rows_per_pair * (1.0 - p.local_fraction) * p.dispatch_row_bytes;
  // Per node (dedup_hosts): over full nodes only.
  const int dpn = cluster.devices_per_node;
  const int nodes = internal::PerNodeDispatchNodes(cluster, r, shape.dedup, shape.dedup_hosts);
  p.hierarchical = nodes > 0;
  p.internode_rows_per_pair = p.hierarchical ? DedupRowsPerPair(model, r, 1, r / nodes) : p.dispatch_rows_per_pair;
  if (p.hierarchical) {
    // To other nodes once per node; inside the node, own rows to the node's other ranks and forwarded rows.
    const double remote = (nodes - 1.0) / nodes, local_peers = (dpn - 1.0) / r;
    p.dispatch_bytes_per_rank =
        pairs * p.dispatch_row_bytes *
        (p.internode_rows_per_pair * remote + p.dispatch_rows_per_pair * (local_peers + remote * (dpn - 1.0) / dpn));
  }
  p.combine_bytes_per_rank = pairs * (1.0 - p.local_fraction) * p.combine_row_bytes;
  p.gemm_dtype = internal::GemmDtypeName(dev, shape.dispatch_dtype);
  WAVEEP_ASSIGN_OR_RETURN(p.peak_tflops, dev.PeakTflops(p.gemm_dtype));
  const double peak = p.peak_tflops * 1e12;
  const double wbytes = internal::WeightBytesPerElement(p.gemm_dtype);
  WAVEEP_ASSIGN_OR_RETURN(ExchangeModel ex, ExchangeModel::Create(cluster, r, shape.use_measured_alltoall));
  p.comm_source = ex.source();

  // CPU contention: compute (blas threads) and comm (one thread) of every rank on the node share its cores.
  double comm_both = 1.0, compute_both = 1.0;
  if (dev.overlap_compute_speed > 0 && dev.overlap_comm_speed > 0) {
    compute_both = dev.overlap_compute_speed;
    comm_both = dev.overlap_comm_speed;
    p.notes.push_back(absl::StrFormat(
        "interference (measured by topo probe): while both streams run, compute runs at %.2fx and comm at %.2fx of "
        "their solo speed",
        compute_both, comm_both));
  } else if (dev.kind == "cpu" && dev.cores > 0) {
    const int rpn = internal::RanksOnFirstNode(cluster, r);
    const int bt = shape.blas_threads > 0 ? shape.blas_threads : std::max(1, dev.cores / rpn - 1);
    const double cores = dev.cores;
    const double s_compute = std::min(1.0, cores / (rpn * bt));
    const double s_comm = std::min(1.0, cores / rpn);
    const double s_both = std::min(1.0, cores / (rpn * (bt + 1.0)));
    compute_both = s_both / s_compute;
    comm_both = s_both / s_comm;
    p.notes.push_back(absl::StrFormat(
        "CPU contention: %d ranks x (%d BLAS + 1 comm) threads on %d cores; while both streams run, compute "
        "runs at %.2fx and comm at %.2fx of their solo speed",
        rpn, bt, dev.cores, compute_both, comm_both));
  }
  const char* to_key = shape.dispatch_dtype == DType::kFP8E4M3 ? "to_fp8" : "to_bf16";
  const char* from_key = shape.dispatch_dtype == DType::kFP8E4M3 ? "from_fp8" : "from_bf16";
  const double ovh = dev.op_overhead_us;
  auto ffn_us = [&](double rows, double rows_per_expert, int experts, double intermediate) {
    if (rows <= 0) return 0.0;
    ModelConfig shp = model;
    shp.moe_intermediate_size = static_cast<int64_t>(intermediate);
    const double eff = internal::GemmEfficiency(dev, shp, peak, wbytes, rows_per_expert, experts);
    return rows * 6.0 * h * intermediate / (peak * eff) * 1e6;
  };

  // Fixed parts of the step: layout (routing check + count all-to-all + wave-boundary allgather), shared expert(s)
  // and the final reduce.
  p.layout_us = 3.0 * ex.Us(8.0 * l, true);
  const double n_shared = shape.shared_experts ? model.num_shared_experts : 0;
  p.shared_us = n_shared > 0 ? ovh + ffn_us(t_tok, t_tok, 1, inter * n_shared) : 0.0;
  if (dev.convert_gbps.count("from_bf16") > 0) {
    p.reduce_us = ovh + ConvertUs(dev, "from_bf16", pairs * h * 4.0);
  } else {
    p.reduce_us = ovh + (pairs * h * 2.0 + t_tok * h * 4.0) / (dev.memory_bw_gbps * 1e3);
  }
  if (p.shared_us > 0)
    p.notes.push_back(
        "shared expert(s): half on the compute stream before the first wave (overlapping the first dispatch), half "
        "after the last (overlapping the last combines)");

  if (shape.max_waves < 0 || (shape.split == WaveSplit::kExperts && shape.max_waves > l)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--waves=", shape.max_waves, " must be in [1, ", l, "] (experts per rank: waves split them)"));
  }
  const int wmax_cap = shape.split == WaveSplit::kExperts ? l : 64;
  const int wmax = std::max(1, std::min(wmax_cap, shape.max_waves > 0 ? shape.max_waves : std::min(l, 16)));
  if (shape.dedup)
    p.notes.push_back(absl::StrFormat(
        "dispatch deduplication: %.3f dispatch rows per pair at W = 1 (uniform routing within the group limit)",
        p.dispatch_rows_per_pair));
  if (p.hierarchical)
    p.notes.push_back(absl::StrFormat(
        "per-node dispatch: %.3f rows per pair to other nodes at W = 1 (once per node, forwarded inside it); a "
        "wave's exchange is scaled by the node-level rows (the inter-node link bounds it), plus the forwarding copy "
        "and hop at memory speed",
        p.internode_rows_per_pair));
  for (int w_count = 1; w_count <= wmax; ++w_count) {
    std::vector<double> d_us(w_count), c_us(w_count), u_us(w_count), r_us(w_count);
    // Rows a wave's dispatch packs and sends, per pair (one per (token, rank, wave) with deduplication).
    const bool by_expert = shape.split == WaveSplit::kExperts;
    const double drows = shape.dedup && by_expert ? DedupRowsPerPair(model, r, w_count) : 1.0;
    // Rows per pair the exchange carries where the inter-node link bounds it.
    const double xrows = p.hierarchical && by_expert ? DedupRowsPerPair(model, r, w_count, r / nodes) : drows;
    double eff_sum = 0;
    for (int w = 0; w < w_count; ++w) {
      int experts = l;
      double rows = pairs / w_count, rows_per_expert = p.rows_per_expert / w_count;
      if (shape.split == WaveSplit::kExperts) {
        experts = l / w_count + (w < l % w_count ? 1 : 0);
        rows = p.rows_per_expert * experts;
        rows_per_expert = p.rows_per_expert;
      }
      const double block = rows / r;  // rows to each peer (and to itself)
      const double pack = rows > 0 ? ovh + ConvertUs(dev, to_key, rows * drows * h * 4.0) : 0.0;
      d_us[w] = pack + ex.Us(block * xrows * p.dispatch_row_bytes, true);
      if (p.hierarchical) {
        // Forwarding: the rows of the other nodes' tokens for this node's ranks are copied into the send buffer and
        // cross shared memory once more (read + write, twice).
        const double fwd_bytes = rows * drows * p.dispatch_row_bytes * (nodes - 1.0) / nodes;
        d_us[w] += ovh + 4.0 * fwd_bytes / (dev.memory_bw_gbps * 1e3);
      }
      const double eff = internal::GemmEfficiency(dev, model, peak, wbytes, rows_per_expert, experts);
      eff_sum += eff;
      c_us[w] = ovh + ConvertUs(dev, from_key, rows * h * 4.0) +
                (rows > 0 ? rows * model.FlopsPerPair() / (peak * eff) * 1e6 : 0.0);
      u_us[w] = ovh + ConvertUs(dev, "to_bf16", rows * h * 4.0);
      r_us[w] = ex.Us(block * p.combine_row_bytes, false);
    }
    // The schedule of MoeLayer::Forward: comm = D0, then per w: D(w+1), C(w-1); then C(W-1). compute = the first
    // half of the shared expert, G(w), U(w), then the second half, reduce. D(w) waits G(w-2) (receive buffer reuse),
    // C(w) waits U(w), reduce waits C(W-1); return slots are per wave, so U(w) waits for no combine.
    std::vector<Op> ops;
    std::vector<int> d_id(w_count), g_id(w_count), u_id(w_count), c_id(w_count);
    auto add = [&ops](int stream, double work, std::vector<int> deps) {
      ops.push_back(Op{stream, work, std::move(deps)});
      return static_cast<int>(ops.size()) - 1;
    };
    // Ops are created in dependency order; within a stream, creation order is the stream order.
    if (p.shared_us > 0) add(1, p.shared_us / 2, {});
    d_id[0] = add(0, d_us[0], {});
    for (int w = 0; w < w_count; ++w) {
      g_id[w] = add(1, c_us[w], {d_id[w]});
      u_id[w] = add(1, u_us[w], {});
      if (w + 1 < w_count)
        d_id[w + 1] = add(0, d_us[w + 1], w >= 1 ? std::vector<int>{g_id[w - 1]} : std::vector<int>{});
      if (w >= 1) c_id[w - 1] = add(0, r_us[w - 1], {u_id[w - 1]});
    }
    c_id[w_count - 1] = add(0, r_us[w_count - 1], {u_id[w_count - 1]});
    if (p.shared_us > 0) add(1, p.shared_us / 2, {});
    add(1, p.reduce_us, {c_id[w_count - 1]});
    // Extreme (but individually valid) device or link figures can overflow a phase to inf or NaN; the replay would
    // never finish one.
    for (const Op& o : ops) {
      if (!std::isfinite(o.work_us) || o.work_us < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cluster ", cluster.name, ": a phase of the step (", o.stream == 0 ? "communication" : "compute",
            ") takes ", o.work_us, " us at W=", w_count,
            "; check device.compute_tflops, device.op_overhead_us, device.convert_gbps and the link bw_gbps / "
            "latency_us for out-of-range values"));
      }
    }
    const SimResult sim = Simulate(ops, comm_both, compute_both);

    WavePrediction wp;
    wp.waves = w_count;
    wp.step_us = p.layout_us + sim.end_us;
    double dsum = 0, csum = 0, rsum = 0;
    for (int w = 0; w < w_count; ++w) {
      dsum += d_us[w];
      csum += c_us[w] + u_us[w];
      rsum += r_us[w];
    }
    wp.dispatch_us = dsum / w_count;
    wp.compute_us = csum / w_count;
    wp.combine_us = rsum / w_count;
    wp.formula_us = wp.dispatch_us + (w_count - 1) * std::max(wp.compute_us, wp.dispatch_us + wp.combine_us) +
                    wp.compute_us + wp.combine_us;
    wp.gemm_efficiency = eff_sum / w_count;
    wp.exposed_comm_us = std::max(0.0, sim.end_us - sim.compute_work_us);
    if (w_count == 1) {
      p.dispatch_us = dsum;
      p.compute_us = csum;
      p.combine_us = rsum;
      p.t_seq_us = wp.step_us;
    }
    wp.speedup = wp.step_us > 0 ? p.t_seq_us / wp.step_us : 1.0;
    p.waves.push_back(wp);
  }
  p.best_waves = 1;
  for (const WavePrediction& wp : p.waves) {
    if (wp.step_us < p.waves[p.best_waves - 1].step_us * (1 - 1e-9)) p.best_waves = wp.waves;
  }
  p.best_speedup = p.waves[p.best_waves - 1].speedup;
  p.notes.push_back(absl::StrCat("uniform routing over ", model.num_experts, " experts, contiguous placement (", l,
                                 " per rank): 1/", r, " of the pairs stay local"));
  p.notes.push_back(dev.gemm_efficiency.empty()
                        ? absl::StrFormat("GEMM efficiency: roofline (max %.2f of peak, weights read once per wave "
                                          "at %.0f GB/s%s)",
                                          dev.max_gemm_efficiency, dev.memory_bw_gbps,
                                          dev.sm_count > 0 ? ", 128x128 tiles over the SMs" : "")
                        : "GEMM efficiency: the cluster's measured curve (rows per expert)");
  if (shape.split == WaveSplit::kExperts) {
    p.notes.push_back(
        "waves split each rank's experts (waveep): rows per expert do not shrink with W; each wave's "
        "grouped GEMM has fewer experts");
  }
  return p;
}

StatusOr<TuneResult> Tune(const ModelConfig& model, const Cluster& cluster, const StepShape& shape) {
  TuneResult res;
  const int n = cluster.num_devices();
  for (int g = 1; g <= n; ++g) {
    if (n % g != 0 || model.num_experts % g != 0) continue;
    StepShape s = shape;
    s.num_ranks = g;
    if (s.split == WaveSplit::kExperts) s.max_waves = std::min(s.max_waves, model.num_experts / g);
    WAVEEP_ASSIGN_OR_RETURN(Prediction p, PredictStep(model, cluster, s));
    TuneCandidate c;
    c.group_size = g;
    c.nodes_spanned = internal::NodesSpanned(cluster, g);
    c.best_waves = p.best_waves;
    c.step_us = p.waves[p.best_waves - 1].step_us;
    c.t_seq_us = p.t_seq_us;
    const double wb = internal::WeightBytesPerElement(p.gemm_dtype);
    c.weight_gib_per_device = static_cast<double>(model.num_experts / g) * 3.0 * model.hidden_size *
                              model.moe_intermediate_size * wb / (1024.0 * 1024.0 * 1024.0);
    c.fits = cluster.device.memory_gib <= 0 || c.weight_gib_per_device <= cluster.device.memory_gib;
    CheckOptions co;
    co.dispatch_dtype = shape.dispatch_dtype;
    co.tokens_per_rank = shape.tokens_per_rank;
    co.num_ranks = g;
    WAVEEP_ASSIGN_OR_RETURN(CheckReport rep, CheckBalance(model, cluster, co));
    if (rep.worst >= 0) {
      const LinkCheck& wl = rep.links[rep.worst];
      c.bottleneck =
          absl::StrFormat("%s %s (margin %.2fx)", LinkKindName(cluster.links[wl.link].kind), wl.label, wl.margin);
    }
    if (g == 1) {
      c.layout = "one device (no EP traffic)";
    } else if (c.nodes_spanned == 1) {
      c.layout = g == cluster.devices_per_node ? "one full node" : absl::StrCat(g, " devices of one node");
    } else {
      c.layout = absl::StrCat("across ", c.nodes_spanned, " nodes");
    }
    res.candidates.push_back(std::move(c));
  }
  for (size_t i = 0; i < res.candidates.size(); ++i) {
    const TuneCandidate& c = res.candidates[i];
    if (!c.fits) continue;
    if (res.best < 0 || c.step_us < res.candidates[res.best].step_us * (1 - 1e-9)) res.best = static_cast<int>(i);
  }
  return res;
}

}  // namespace waveep::topology
