// Copyright 2026 The waveep Authors.
//
// The performance model's limits: W = 1 is the sequential step, the speedup never exceeds 2 when communication
// equals compute (and approaches 2W/(W+1) without overheads), times move the right way with bandwidth and tokens,
// and the tuner only recommends groups that fit.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "topology/topology.h"

namespace waveep::topology {
namespace {

using ::testing::HasSubstr;

ModelConfig Model(const char* name) {
  auto m = LoadModelConfig(name);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

Cluster Preset(const char* name, int nodes = 1) {
  auto c = LoadCluster(name);
  EXPECT_TRUE(c.ok()) << c.status();
  auto n = WithNodes(*c, nodes);
  EXPECT_TRUE(n.ok()) << n.status();
  return *n;
}

// 64 experts of H=1024, I=512, top-4: 32 per rank on 2 ranks, enough waves to watch the limit.
ModelConfig SyntheticModel() {
  ModelConfig m;
  m.name = "synthetic";
  m.hidden_size = 1024;
  m.moe_intermediate_size = 512;
  m.num_experts = 64;
  m.num_shared_experts = 0;
  m.top_k = 4;
  return m;
}

// Two devices behind one switch, no latencies or overheads, flat GEMM efficiency: the wave pipeline
// (docs/architecture.md) in its pure form. `port_gbps` sets the communication time.
Cluster IdealPair(double port_gbps) {
  Cluster c;
  c.name = "ideal-pair";
  c.num_nodes = 1;
  c.devices_per_node = 2;
  c.device.model = "ideal";
  c.device.compute_tflops["bf16"] = 100;
  c.device.memory_bw_gbps = 1e9;  // reduce is free
  c.device.gemm_efficiency.rows = {1, 1e6};
  c.device.gemm_efficiency.efficiency = {1, 1};
  c.switches.push_back(SwitchSpec{"sw", 0, "node", 0});
  LinkSpec l;
  l.name = "port";
  l.kind = LinkKind::kNvlink;
  l.to = "sw";
  l.bw_gbps = port_gbps;
  c.link_specs.push_back(l);
  LinkSpec lb;
  lb.name = "loopback";
  lb.kind = LinkKind::kLoopback;
  lb.duplex = false;
  lb.bw_gbps = 1e9;  // the self block is free
  c.loopback = lb;
  Status s = ExpandCluster(&c);
  EXPECT_TRUE(s.ok()) << s;
  return c;
}

StepShape Shape(int64_t tokens, int max_waves = 16) {
  StepShape s;
  s.tokens_per_rank = tokens;
  s.dispatch_dtype = DType::kBF16;
  s.max_waves = max_waves;
  s.shared_experts = false;
  return s;
}

// Brute force of DedupRowsPerPair: every draw of topk_group groups, every K-subset of the drawn experts, equally
// likely; the distinct (rank or node, wave) slices a subset reaches, over K. Small shapes only.
double BruteForceRowsPerPair(int e_count, int k, int n_group, int topk_group, int ranks, int waves,
                             int ranks_per_node = 1) {
  const int g_size = e_count / n_group, l = e_count / ranks;
  auto slice_of = [&](int e) {
    const int r = e / l, x = e % l;
    int b = 0;
    for (int w = 0; w < waves; ++w) {
      const int n = l / waves + (w < l % waves ? 1 : 0);
      if (x < b + n) return (r / ranks_per_node) * waves + w;
      b += n;
    }
    return -1;
  };
  double sum = 0, count = 0;
  for (int gmask = 0; gmask < (1 << n_group); ++gmask) {
    if (__builtin_popcount(gmask) != topk_group) continue;
    std::vector<int> pool;
    for (int e = 0; e < e_count; ++e)
      if (gmask & (1 << (e / g_size))) pool.push_back(e);
    const int p = static_cast<int>(pool.size());
    for (int emask = 0; emask < (1 << p); ++emask) {
      if (__builtin_popcount(emask) != k) continue;
      std::vector<int> reached;
      for (int i = 0; i < p; ++i)
        if (emask & (1 << i)) reached.push_back(slice_of(pool[i]));
      std::sort(reached.begin(), reached.end());
      sum += static_cast<double>(std::unique(reached.begin(), reached.end()) - reached.begin()) / k;
      count += 1;
    }
  }
  return sum / count;
}

TEST(Model, DedupRowsPerPairMatchesBruteForce) {
  struct Case {
    int e, k, n_group, topk_group, ranks, waves;
  };
  for (const Case& c :
       {Case{8, 3, 1, 1, 4, 1}, Case{8, 3, 1, 1, 2, 2}, Case{12, 4, 1, 1, 3, 2}, Case{8, 3, 4, 2, 4, 1},
        Case{8, 3, 4, 2, 2, 1}, Case{16, 4, 4, 2, 8, 1}, Case{16, 4, 4, 2, 4, 2}, Case{8, 2, 1, 1, 8, 1}}) {
    ModelConfig m = SyntheticModel();
    m.num_experts = c.e;
    m.top_k = c.k;
    m.n_group = c.n_group;
    m.topk_group = c.topk_group;
    const double want = BruteForceRowsPerPair(c.e, c.k, c.n_group, c.topk_group, c.ranks, c.waves);
    EXPECT_NEAR(DedupRowsPerPair(m, c.ranks, c.waves), want, 1e-12)
        << "E=" << c.e << " K=" << c.k << " groups " << c.n_group << "/" << c.topk_group << " R=" << c.ranks
        << " W=" << c.waves;
  }
  // One expert per slice: nothing to share. tiny on 4 ranks: a rank is a group, 2 of its 4 groups are drawn.
  ModelConfig m = SyntheticModel();
  m.num_experts = 8;
  m.top_k = 2;
  EXPECT_DOUBLE_EQ(DedupRowsPerPair(m, 8, 1), 1.0);
  EXPECT_NEAR(DedupRowsPerPair(Model("tiny"), 4, 1), 2.0 * (1.0 - 1.0 / 70.0) / 4.0, 1e-12);
}

// Per node: a node's wave is the union of its ranks' waves (not contiguous experts when W > 1); at W = 1 it is the
// per-rank figure over nodes; it never exceeds the per-rank figure (a node's slice holds its ranks' slices).
TEST(Model, DedupRowsPerNodeMatchesBruteForce) {
  struct Case {
    int e, k, n_group, topk_group, ranks, waves, per_node;
  };
  for (const Case& c :
       {Case{8, 3, 1, 1, 4, 2, 2}, Case{16, 4, 4, 2, 4, 2, 2}, Case{16, 4, 4, 2, 4, 4, 2}, Case{16, 4, 4, 2, 8, 2, 2},
        Case{16, 4, 4, 2, 8, 2, 4}, Case{12, 4, 1, 1, 6, 2, 3}, Case{16, 4, 4, 2, 4, 1, 2}}) {
    ModelConfig m = SyntheticModel();
    m.num_experts = c.e;
    m.top_k = c.k;
    m.n_group = c.n_group;
    m.topk_group = c.topk_group;
    const std::string what = absl::StrCat("E=", c.e, " K=", c.k, " groups ", c.n_group, "/", c.topk_group,
                                          " R=", c.ranks, " W=", c.waves, " per node ", c.per_node);
    const double got = DedupRowsPerPair(m, c.ranks, c.waves, c.per_node);
    EXPECT_NEAR(got, BruteForceRowsPerPair(c.e, c.k, c.n_group, c.topk_group, c.ranks, c.waves, c.per_node), 1e-12)
        << what;
    EXPECT_LE(got, DedupRowsPerPair(m, c.ranks, c.waves) + 1e-12) << what;
    EXPECT_NEAR(DedupRowsPerPair(m, c.ranks, 1, c.per_node), DedupRowsPerPair(m, c.ranks / c.per_node, 1), 1e-12)
        << what;
  }
  // Not full nodes: no per-node figure.
  EXPECT_DOUBLE_EQ(DedupRowsPerPair(Model("tiny"), 4, 1, 3), 1.0);
}

TEST(Model, DedupShrinksTheDispatchOnly) {
  const Cluster c = IdealPair(10);
  StepShape off = Shape(512, 4), on = Shape(512, 4);
  on.dedup = true;
  auto p_off = PredictStep(SyntheticModel(), c, off);
  auto p_on = PredictStep(SyntheticModel(), c, on);
  ASSERT_TRUE(p_off.ok() && p_on.ok());
  const double f = DedupRowsPerPair(SyntheticModel(), 2, 1);
  EXPECT_LT(f, 1.0);
  EXPECT_DOUBLE_EQ(p_on->dispatch_rows_per_pair, f);
  EXPECT_NEAR(p_on->dispatch_bytes_per_rank, f * p_off->dispatch_bytes_per_rank, 1e-6 * p_off->dispatch_bytes_per_rank);
  EXPECT_DOUBLE_EQ(p_on->combine_bytes_per_rank, p_off->combine_bytes_per_rank);
  for (size_t w = 0; w < p_on->waves.size(); ++w) EXPECT_LE(p_on->waves[w].step_us, p_off->waves[w].step_us) << w;
  EXPECT_LT(p_on->waves[0].step_us, p_off->waves[0].step_us);
}

// Per node over 2 full nodes of a NIC-bound cluster: fewer rows to the other node, a shorter dispatch at every W.
TEST(Model, PerNodeDedupShrinksTheInterNodeDispatch) {
  const ModelConfig m = Model("deepseek-v4-pro");
  const Cluster two = Preset("h800-8x-ib400", 2);
  StepShape rank = Shape(4096, 4), node = Shape(4096, 4);
  rank.dispatch_dtype = node.dispatch_dtype = DType::kFP8E4M3;
  rank.dedup = node.dedup = true;
  node.dedup_hosts = true;
  auto p_rank = PredictStep(m, two, rank);
  auto p_node = PredictStep(m, two, node);
  ASSERT_TRUE(p_rank.ok() && p_node.ok()) << p_rank.status() << p_node.status();
  EXPECT_FALSE(p_rank->hierarchical);
  EXPECT_TRUE(p_node->hierarchical);
  EXPECT_DOUBLE_EQ(p_node->internode_rows_per_pair, DedupRowsPerPair(m, 2, 1));
  EXPECT_LT(p_node->internode_rows_per_pair, p_node->dispatch_rows_per_pair);
  for (size_t w = 0; w < p_node->waves.size(); ++w)
    EXPECT_LT(p_node->waves[w].dispatch_us, p_rank->waves[w].dispatch_us) << "W=" << w + 1;
  // One node: the flag changes nothing.
  auto one_rank = PredictStep(m, Preset("h800-8x-ib400"), rank);
  auto one_node = PredictStep(m, Preset("h800-8x-ib400"), node);
  ASSERT_TRUE(one_rank.ok() && one_node.ok());
  EXPECT_FALSE(one_node->hierarchical);
  EXPECT_DOUBLE_EQ(one_node->t_seq_us, one_rank->t_seq_us);
}

TEST(Model, OneWaveIsTheSequentialStep) {
  for (const char* cluster : {"h800-8x-ib400", "pcie-8x-l40s", "cpu-2core-localhost"}) {
    SCOPED_TRACE(cluster);
    auto c = LoadCluster(cluster);
    ASSERT_TRUE(c.ok());
    const ModelConfig m = Model(c->device.kind == "cpu" ? "tiny" : "deepseek-v4-pro");
    StepShape s = Shape(512, 4);
    s.shared_experts = true;
    auto p = PredictStep(m, *c, s);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_EQ(p->waves.size(), 4u);
    EXPECT_EQ(p->waves[0].waves, 1);
    EXPECT_EQ(p->waves[0].step_us, p->t_seq_us);
    EXPECT_DOUBLE_EQ(p->waves[0].speedup, 1.0);
    // The pipeline's formula at W = 1 is D + C + R (docs/topology.md §4).
    EXPECT_DOUBLE_EQ(p->waves[0].formula_us, p->dispatch_us + p->compute_us + p->combine_us);
    // Nothing is faster than its slowest stream's work.
    for (const WavePrediction& w : p->waves) {
      EXPECT_GE(w.step_us + 1e-6, p->layout_us + w.waves * w.compute_us) << "W=" << w.waves;
      EXPECT_GT(w.step_us, 0);
    }
  }
}

TEST(Model, SpeedupAtMostTwoWhenCommEqualsCompute) {
  const ModelConfig m = SyntheticModel();
  // Calibrate the port so that D + R == C exactly (communication time scales as 1 / bandwidth here).
  auto first = PredictStep(m, IdealPair(100), Shape(1024));
  ASSERT_TRUE(first.ok()) << first.status();
  const double comm = first->dispatch_us + first->combine_us;
  const double bw = 100 * comm / first->compute_us;
  auto p = PredictStep(m, IdealPair(bw), Shape(1024));
  ASSERT_TRUE(p.ok());
  ASSERT_NEAR(p->dispatch_us + p->combine_us, p->compute_us, 1e-6 * p->compute_us);
  ASSERT_EQ(p->waves.size(), 16u);
  for (const WavePrediction& w : p->waves) {
    SCOPED_TRACE(w.waves);
    EXPECT_LE(w.speedup, 2.0 + 1e-9);
    // Pure pipeline: T = d + (W-1) max(c, d+r) + c + r = C + C/W, speedup 2W / (W + 1).
    EXPECT_NEAR(w.formula_us, p->compute_us * (1.0 + 1.0 / w.waves), 1e-6 * p->compute_us);
    // Waves of equal size (W divides the 32 local experts) meet the pure pipeline's speedup.
    if (32 % w.waves == 0) {
      EXPECT_NEAR(w.speedup, 2.0 * w.waves / (w.waves + 1.0), 1e-3);
    }
  }
  EXPECT_EQ(p->best_waves, 16);
  EXPECT_GT(p->best_speedup, 1.85);
  EXPECT_LT(p->best_speedup, 2.0);
}

TEST(Model, MeasuredInterferenceSlowsOnlyWhatOverlaps) {
  // comm == compute on the ideal pair; then the probe's interference figures: W = 1 (nothing overlaps without a
  // shared expert) is unchanged, every W > 1 is slower, and the replay never beats the slowed streams' work.
  const ModelConfig m = SyntheticModel();
  auto first = PredictStep(m, IdealPair(100), Shape(1024, 8));
  ASSERT_TRUE(first.ok()) << first.status();
  const double bw = 100 * (first->dispatch_us + first->combine_us) / first->compute_us;
  Cluster clean = IdealPair(bw), loaded = IdealPair(bw);
  loaded.device.overlap_compute_speed = 0.5;
  loaded.device.overlap_comm_speed = 0.8;
  auto a = PredictStep(m, clean, Shape(1024, 8));
  auto b = PredictStep(m, loaded, Shape(1024, 8));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NEAR(b->waves[0].step_us, a->waves[0].step_us, 1e-9 * a->waves[0].step_us);
  for (size_t i = 1; i < a->waves.size(); ++i) {
    SCOPED_TRACE(a->waves[i].waves);
    EXPECT_GT(b->waves[i].step_us, a->waves[i].step_us * 1.05);
  }
  EXPECT_LT(b->best_speedup, a->best_speedup);
  bool noted = false;
  for (const std::string& n : b->notes) noted = noted || n.find("interference (measured") != std::string::npos;
  EXPECT_TRUE(noted);
}

TEST(Model, MonotoneInBandwidthAndTokens) {
  const ModelConfig m = SyntheticModel();
  auto slow = PredictStep(m, IdealPair(10), Shape(1024, 4));
  auto fast = PredictStep(m, IdealPair(1000), Shape(1024, 4));
  auto big = PredictStep(m, IdealPair(10), Shape(4096, 4));
  ASSERT_TRUE(slow.ok() && fast.ok() && big.ok());
  EXPECT_GT(slow->t_seq_us, fast->t_seq_us);
  EXPECT_GT(big->t_seq_us, slow->t_seq_us);
  for (int w = 0; w < 4; ++w) EXPECT_GE(slow->waves[w].step_us, fast->waves[w].step_us);
  // Communication-dominated: waves hide at most the compute, so the speedup stays below 1 + C / (D + R).
  const double bound = 1.0 + slow->compute_us / (slow->dispatch_us + slow->combine_us);
  for (const WavePrediction& w : slow->waves) EXPECT_LE(w.speedup, bound + 1e-9);
}

TEST(Model, TokenSplitShrinksRowsPerExpert) {
  auto c = LoadCluster("h800-8x-ib400");
  ASSERT_TRUE(c.ok());
  StepShape s = Shape(512, 8);
  s.dispatch_dtype = DType::kFP8E4M3;
  auto experts = PredictStep(Model("deepseek-v4-pro"), *c, s);
  s.split = WaveSplit::kTokens;
  auto tokens = PredictStep(Model("deepseek-v4-pro"), *c, s);
  ASSERT_TRUE(experts.ok() && tokens.ok());
  // Splitting tokens re-reads every expert's weights every wave: the GEMMs get less efficient as W grows.
  EXPECT_LT(tokens->waves[7].gemm_efficiency, tokens->waves[0].gemm_efficiency / 4);
  EXPECT_GT(experts->waves[7].gemm_efficiency, tokens->waves[7].gemm_efficiency);
}

TEST(Model, UsesTheMeasuredAlltoallWhenRanksMatch) {
  auto c = LoadCluster("cpu-2core-localhost");
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->probed());
  StepShape s = Shape(128, 2);
  auto p = PredictStep(Model("tiny"), *c, s);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(p->comm_source, HasSubstr("measured all-to-all"));
  s.use_measured_alltoall = false;
  auto links = PredictStep(Model("tiny"), *c, s);
  ASSERT_TRUE(links.ok());
  EXPECT_THAT(links->comm_source, HasSubstr("link model"));
  // One rank: no measured curve for R = 1, the loopback carries everything.
  s.use_measured_alltoall = true;
  s.num_ranks = 1;
  auto one = PredictStep(Model("tiny"), *c, s);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(one->comm_source, HasSubstr("link model"));
}

// Figures that pass validation one by one but overflow a phase of the step: an error, not a replay that never ends.
TEST(Model, NonFinitePhaseIsAnError) {
  auto c = LoadCluster("h800-8x-ib400");
  ASSERT_TRUE(c.ok());
  for (auto& [dtype, tflops] : c->device.compute_tflops) tflops = 1e300;
  auto p = PredictStep(Model("tiny"), *c, Shape(128, /*max_waves=*/2));
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("device.compute_tflops"));
}

TEST(Model, RejectsWhatWaveepRejects) {
  auto c = LoadCluster("h800-8x-ib400");
  ASSERT_TRUE(c.ok());
  StepShape s = Shape(128);
  s.num_ranks = 3;
  EXPECT_THAT(std::string(PredictStep(Model("tiny"), *c, s).status().message()),
              HasSubstr("not divisible by ranks (3)"));
  s.num_ranks = 0;
  s.tokens_per_rank = -1;
  EXPECT_FALSE(PredictStep(Model("tiny"), *c, s).ok());
  s.tokens_per_rank = 128;
  s.max_waves = 3;  // tiny on 8 ranks has 2 experts per rank
  EXPECT_THAT(std::string(PredictStep(Model("tiny"), *c, s).status().message()), HasSubstr("must be in [1, 2]"));
  s.max_waves = 2;
  s.tokens_per_rank = 0;  // zero tokens is a valid (empty) step
  auto empty = PredictStep(Model("tiny"), *c, s);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_GE(empty->t_seq_us, 0);
  s.dispatch_dtype = DType::kF32;
  EXPECT_FALSE(PredictStep(Model("tiny"), *c, s).ok());
}

TEST(Tune, PicksAFittingGroupAndWaves) {
  auto c = LoadCluster("h800-8x-ib400");
  ASSERT_TRUE(c.ok());
  auto two = WithNodes(*c, 2);
  ASSERT_TRUE(two.ok());
  StepShape s = Shape(4096);
  s.dispatch_dtype = DType::kFP8E4M3;
  auto r = Tune(Model("deepseek-v4-pro"), *two, s);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_GE(r->best, 0);
  std::vector<int> sizes;
  for (const TuneCandidate& k : r->candidates) sizes.push_back(k.group_size);
  EXPECT_EQ(sizes, (std::vector<int>{1, 2, 4, 8, 16}));
  const TuneCandidate& best = r->candidates[r->best];
  EXPECT_TRUE(best.fits);
  for (const TuneCandidate& k : r->candidates) {
    if (k.fits) {
      EXPECT_LE(best.step_us, k.step_us);
    }
    EXPECT_GE(k.best_waves, 1);
    EXPECT_LE(k.step_us, k.t_seq_us + 1e-9);
  }
  EXPECT_EQ(r->candidates.back().nodes_spanned, 2);
  // With 2 GiB per device only the widest group (24 experts x 66 MB of FP8 weights = 1.48 GiB) fits.
  Cluster small = *two;
  small.device.memory_gib = 2;
  auto rs = Tune(Model("deepseek-v4-pro"), small, s);
  ASSERT_TRUE(rs.ok());
  for (const TuneCandidate& k : rs->candidates) EXPECT_EQ(k.fits, k.weight_gib_per_device <= 2);
  ASSERT_GE(rs->best, 0);
  EXPECT_EQ(rs->candidates[rs->best].group_size, 16);
}

}  // namespace
}  // namespace waveep::topology
