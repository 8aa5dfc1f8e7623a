// Copyright 2026 The waveep Authors.
//
// The balance threshold (exact arithmetic against hand-computed values), the expert traffic each link carries for
// one-node and multi-node placements, and the per-link verdicts.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {
namespace {

using ::testing::HasSubstr;

ModelConfig Model(const char* name) {
  auto m = LoadModelConfig(name);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

Cluster Preset(const char* name, int nodes = 0) {
  auto c = LoadCluster(name);
  EXPECT_TRUE(c.ok()) << c.status();
  if (nodes > 0) {
    auto n = WithNodes(*c, nodes);
    EXPECT_TRUE(n.ok()) << n.status();
    return *n;
  }
  return *c;
}

TEST(Threshold, PublishedFigureForDeepSeekV4ProIsExactly6144) {
  auto t = DeriveThreshold(Model("deepseek-v4-pro"), DType::kFP8E4M3, 8, 0);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->flops_per_pair, 6.0 * 7168 * 3072);
  EXPECT_EQ(t->published_bytes_per_pair, 3.0 * 7168);
  EXPECT_EQ(t->published_flops_per_byte, 6144.0);  // exact, not approximately
  EXPECT_EQ(t->dtype_flops_per_byte, 6144.0);      // FP8 dispatch, no refinements: the same figure
}

TEST(Threshold, PublishedFigureForDeepSeekV4FlashIs4096) {
  auto t = DeriveThreshold(Model("deepseek-v4-flash"), DType::kFP8E4M3, 8, 0);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->published_flops_per_byte, 4096.0);
  // The published figure is 2I whatever the dispatch dtype asked for; the dtype figure changes.
  auto bf16 = DeriveThreshold(Model("deepseek-v4-flash"), DType::kBF16, 8, 0);
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ(bf16->published_flops_per_byte, 4096.0);
  EXPECT_EQ(bf16->dtype_flops_per_byte, 6.0 * 2048 / 4);  // 6HI / (2 + 2)H = 1.5 I = 3072
}

TEST(Threshold, RefinementsByHand) {
  // V4-Pro, FP8 dispatch, R = 8, T = 4096 tokens per rank, top-6, E = 384, block 128.
  auto t = DeriveThreshold(Model("deepseek-v4-pro"), DType::kFP8E4M3, 8, 4096);
  ASSERT_TRUE(t.ok());
  // Scales: 7168 / 128 = 56 blocks x 4 bytes = 224 bytes per dispatched row.
  EXPECT_EQ(t->scale_bytes_per_pair, 224.0);
  // Metadata: 8 bytes x 384 experts per rank per step over 4096 x 6 pairs = 0.125 bytes per pair.
  EXPECT_EQ(t->metadata_bytes_per_pair, 0.125);
  EXPECT_EQ(t->refined_bytes_per_pair, 21504.0 + 224.0 + 0.125);
  EXPECT_DOUBLE_EQ(t->refined_flops_per_byte, 132120576.0 / 21728.125);
  EXPECT_NEAR(t->refined_flops_per_byte, 6080.62, 0.01);
  EXPECT_EQ(t->local_fraction, 0.125);
  // Only 7/8 of the bytes cross a link: 6080.62 / 0.875 = 6949.3.
  EXPECT_DOUBLE_EQ(t->refined_remote_flops_per_byte, 132120576.0 / 21728.125 / 0.875);
  EXPECT_NEAR(t->refined_remote_flops_per_byte, 6949.3, 0.05);

  // BF16 dispatch: no scales; (2 + 2) x 7168 = 28672 bytes -> 4608 FLOPs/byte.
  auto b = DeriveThreshold(Model("deepseek-v4-pro"), DType::kBF16, 8, 0);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->scale_bytes_per_pair, 0.0);
  EXPECT_EQ(b->metadata_bytes_per_pair, 0.0);
  EXPECT_EQ(b->refined_flops_per_byte, 4608.0);
  EXPECT_EQ(b->refined_remote_flops_per_byte, 4608.0 / 0.875);
}

TEST(Threshold, BadInputs) {
  EXPECT_FALSE(DeriveThreshold(Model("tiny"), DType::kF32, 2, 0).ok());
  EXPECT_FALSE(DeriveThreshold(Model("tiny"), DType::kBF16, 0, 0).ok());
  EXPECT_FALSE(DeriveThreshold(Model("tiny"), DType::kBF16, 2, -1).ok());
}

// Traffic as a fraction of one rank's pairs.
TEST(Traffic, OneNodeNvlinkPorts) {
  const Cluster c = Preset("h800-8x-ib400");
  auto t = ExpertTraffic(c, 8);
  ASSERT_TRUE(t.ok()) << t.status();
  for (size_t li = 0; li < c.links.size(); ++li) {
    const Link& l = c.links[li];
    SCOPED_TRACE(LinkLabel(c, l));
    if (l.name == "nvlink") {
      // Out: my dispatch to 7 peers; in: 7 peers' dispatch to me. Combine the other way round.
      EXPECT_DOUBLE_EQ((*t)[li].dispatch_fwd, 7.0 / 8);
      EXPECT_DOUBLE_EQ((*t)[li].dispatch_rev, 7.0 / 8);
      EXPECT_DOUBLE_EQ((*t)[li].combine_fwd, 7.0 / 8);
      EXPECT_DOUBLE_EQ((*t)[li].combine_rev, 7.0 / 8);
      EXPECT_DOUBLE_EQ((*t)[li].Share(1, 2, true), 7.0 / 8);
      EXPECT_EQ((*t)[li].num_devices, 1);
    } else if (l.kind == LinkKind::kLoopback) {
      EXPECT_DOUBLE_EQ((*t)[li].dispatch_fwd, 1.0 / 8);
      // Half duplex: dispatch and combine both count.
      EXPECT_DOUBLE_EQ((*t)[li].Share(1, 2, false), 1.0 / 8);
    } else {
      EXPECT_EQ((*t)[li].num_flows, 0) << "the NICs carry nothing inside one node";
    }
  }
}

TEST(Traffic, TwoNodesSplitBetweenNvlinkAndNics) {
  const Cluster c = Preset("h800-8x-ib400", 2);
  auto t = ExpertTraffic(c, 16);
  ASSERT_TRUE(t.ok());
  double nvlink = 0, nic = 0, loop = 0;
  for (size_t li = 0; li < c.links.size(); ++li) {
    if (c.links[li].a != 3 && c.links[li].b != 3) continue;  // device n0.d3's links
    const double s = (*t)[li].Share(7168 + 224, 2 * 7168, c.links[li].duplex);
    if (c.links[li].name == "nvlink") nvlink = s;
    if (c.links[li].name == "ib-nic") nic = s;
    if (c.links[li].kind == LinkKind::kLoopback) loop = s;
  }
  EXPECT_DOUBLE_EQ(nvlink, 7.0 / 16);  // the other 7 GPUs of its node
  EXPECT_DOUBLE_EQ(nic, 8.0 / 16);     // the 8 GPUs of the other node
  EXPECT_DOUBLE_EQ(loop, 1.0 / 16);
}

TEST(Traffic, SharedLinksInAPcieBox) {
  const Cluster c = Preset("pcie-8x-l40s", 2);
  auto t = ExpertTraffic(c, 16);
  ASSERT_TRUE(t.ok());
  for (size_t li = 0; li < c.links.size(); ++li) {
    const Link& l = c.links[li];
    if (c.vertices[l.a].node != 0 && l.name != "ethernet") continue;
    const LinkTraffic& x = (*t)[li];
    SCOPED_TRACE(LinkLabel(c, l));
    if (l.name == "pcie-gpu") {
      EXPECT_DOUBLE_EQ(x.dispatch_fwd, 15.0 / 16);
      EXPECT_EQ(x.num_devices, 1);
    } else if (l.name == "pcie-uplink") {
      // Two GPUs behind the switch, each sending 14 of its 16 sixteenths elsewhere.
      EXPECT_DOUBLE_EQ(x.dispatch_fwd, 2 * 14.0 / 16);
      EXPECT_EQ(x.num_devices, 2);
    } else if (l.name == "socket-link") {
      EXPECT_DOUBLE_EQ(x.dispatch_fwd, 4 * 4.0 / 16);  // 4 GPUs x the other socket's 4 of 16
      EXPECT_EQ(x.num_devices, 4);
    } else if (l.name == "pcie-nic" || l.name == "ethernet") {
      EXPECT_DOUBLE_EQ(x.dispatch_fwd, 4 * 8.0 / 16);  // 4 GPUs per NIC x the other node's 8 of 16
      EXPECT_EQ(x.num_devices, 4);
    }
  }
}

TEST(Traffic, GroupSmallerThanTheCluster) {
  const Cluster c = Preset("h800-8x-ib400", 2);
  auto t = ExpertTraffic(c, 4);  // devices 0..3 only
  ASSERT_TRUE(t.ok());
  for (size_t li = 0; li < c.links.size(); ++li) {
    if (c.links[li].name == "ib-nic") {
      EXPECT_EQ((*t)[li].num_flows, 0);
    }
  }
  EXPECT_FALSE(ExpertTraffic(c, 17).ok());
  EXPECT_FALSE(ExpertTraffic(c, 0).ok());
}

TEST(Check, H800V4ProIsNvlinkBound) {
  CheckOptions o;
  o.dispatch_dtype = DType::kFP8E4M3;
  o.tokens_per_rank = 4096;
  const Cluster c = Preset("h800-8x-ib400");
  const ModelConfig m = Model("deepseek-v4-pro");
  auto rep = CheckBalance(m, c, o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(rep->threshold.published_flops_per_byte, 6144.0);
  EXPECT_EQ(rep->num_ranks, 8);
  EXPECT_EQ(rep->rows_per_expert, 512.0);
  EXPECT_EQ(rep->gemm_dtype, "fp8");
  EXPECT_DOUBLE_EQ(rep->pair_flops_per_byte, 6.0 * 7168 * 3072 / (7168 + 224 + 2 * 7168));
  ASSERT_GE(rep->worst, 0);
  const LinkCheck& w = rep->links[rep->worst];
  EXPECT_EQ(c.links[w.link].kind, LinkKind::kNvlink);
  // required = share x F_eff / (6HI / pair bytes), by hand.
  const double f = rep->effective_tflops * 1e12;
  EXPECT_DOUBLE_EQ(w.required_gbps, 0.875 * f / rep->pair_flops_per_byte / 1e9);
  EXPECT_DOUBLE_EQ(w.margin, 160.0 / w.required_gbps);
  EXPECT_TRUE(w.comm_bound);
  EXPECT_DOUBLE_EQ(w.exposed_fraction, 1.0 - w.margin);
  EXPECT_TRUE(rep->any_comm_bound);
  // The device's C/B against the link, vs the pair threshold: the same verdict seen from the other side.
  EXPECT_GT(w.flops_per_byte, rep->pair_flops_per_byte);
}

TEST(Check, H20HasHeadroomAndTwoNodesMoveTheBottleneckToTheNic) {
  CheckOptions o;
  o.dispatch_dtype = DType::kFP8E4M3;
  o.tokens_per_rank = 4096;
  const ModelConfig m = Model("deepseek-v4-pro");
  auto h20 = CheckBalance(m, Preset("h20-8x"), o);
  ASSERT_TRUE(h20.ok());
  EXPECT_FALSE(h20->any_comm_bound);
  for (const LinkCheck& l : h20->links) EXPECT_GE(l.margin, 1.0);

  const Cluster two = Preset("h800-8x-ib400", 2);
  auto rep = CheckBalance(m, two, o);
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(two.links[rep->links[rep->worst].link].kind, LinkKind::kRdma);
}

// V4-Pro's FP8 dispatch at 4096 tokens per rank, the dedup tests' step.
CheckOptions V4ProFp8Step(bool dedup, bool dedup_hosts) {
  CheckOptions o;
  o.dispatch_dtype = DType::kFP8E4M3;
  o.tokens_per_rank = 4096;
  o.dedup = dedup;
  o.dedup_hosts = dedup_hosts;
  return o;
}

// Dispatch deduplication: the dispatch row crosses DedupRowsPerPair(R, 1) times per pair, the combine row once. Every
// link's bytes per step follow from its share; without dedup they equal the plain check's.
TEST(Check, DedupShrinksDispatchBytesOnEveryLink) {
  const ModelConfig m = Model("deepseek-v4-pro");
  const Cluster two = Preset("h800-8x-ib400", 2);
  auto plain = CheckBalance(m, two, V4ProFp8Step(false, false));
  auto dedup = CheckBalance(m, two, V4ProFp8Step(true, false));
  ASSERT_TRUE(plain.ok() && dedup.ok());
  EXPECT_EQ(plain->dispatch_rows_per_pair, 1.0);
  const double rows = DedupRowsPerPair(m, 16, 1);
  EXPECT_LT(rows, 0.9);  // top-6 over 16 ranks: a token reaches ~5.2 distinct ranks
  EXPECT_DOUBLE_EQ(dedup->dispatch_rows_per_pair, rows);
  const double db = static_cast<double>(m.DispatchRowBytes(DType::kFP8E4M3)), cb = 2.0 * m.hidden_size;
  EXPECT_DOUBLE_EQ(plain->pair_bytes, db + cb);
  EXPECT_DOUBLE_EQ(dedup->pair_bytes, db * rows + cb);
  EXPECT_DOUBLE_EQ(dedup->pair_flops_per_byte, dedup->threshold.flops_per_pair / dedup->pair_bytes);
  ASSERT_EQ(plain->links.size(), dedup->links.size());
  const double pairs = 4096.0 * m.top_k;
  for (size_t i = 0; i < plain->links.size(); ++i) {
    const LinkCheck& a = plain->links[i];
    const LinkCheck& b = dedup->links[i];
    EXPECT_DOUBLE_EQ(a.bytes_per_step, a.share * plain->pair_bytes * pairs) << a.label;
    EXPECT_DOUBLE_EQ(a.bytes_per_step_without_dedup, a.bytes_per_step) << a.label;
    EXPECT_DOUBLE_EQ(b.bytes_per_step, b.share * dedup->pair_bytes * pairs) << b.label;
    EXPECT_DOUBLE_EQ(b.bytes_per_step_without_dedup, a.bytes_per_step) << b.label;
    EXPECT_LT(b.bytes_per_step, a.bytes_per_step) << b.label;
    EXPECT_GT(b.margin, a.margin) << b.label;
  }
}

// Per node (dedup_hosts): links that only inter-node traffic crosses carry DedupRowsPerPair over the nodes (a token
// crosses to each other node once, to its proxy there); a GPU's NVLink port also carries the rows it forwards as a
// proxy and those forwarded to it; within one node nothing changes.
TEST(Check, PerNodeDedupShrinksInterNodeLinksAndLoadsTheProxies) {
  const ModelConfig m = Model("deepseek-v4-pro");
  const Cluster two = Preset("h800-8x-ib400", 2);
  auto rank = CheckBalance(m, two, V4ProFp8Step(true, false));
  auto node = CheckBalance(m, two, V4ProFp8Step(true, true));
  ASSERT_TRUE(rank.ok() && node.ok());
  EXPECT_EQ(node->nodes, 2);
  const double rows_rank = DedupRowsPerPair(m, 16, 1), rows_node = DedupRowsPerPair(m, 2, 1);
  EXPECT_LT(rows_node, rows_rank);  // 2 nodes: a top-6 token reaches ~1.9 nodes of 6 pairs
  EXPECT_DOUBLE_EQ(rank->internode_dispatch_rows_per_pair, rows_rank);
  EXPECT_DOUBLE_EQ(node->internode_dispatch_rows_per_pair, rows_node);
  EXPECT_DOUBLE_EQ(node->dispatch_rows_per_pair, rows_rank);
  ASSERT_EQ(rank->links.size(), node->links.size());
  const double db = static_cast<double>(m.DispatchRowBytes(DType::kFP8E4M3)), cb = 2.0 * m.hidden_size;
  EXPECT_DOUBLE_EQ(node->internode_pair_bytes, db * rows_node + cb);
  EXPECT_DOUBLE_EQ(rank->internode_pair_bytes, rank->pair_bytes);
  const double pairs = 4096.0 * m.top_k;
  int internode = 0, intranode = 0;
  for (size_t i = 0; i < node->links.size(); ++i) {
    const LinkCheck& a = rank->links[i];
    const LinkCheck& b = node->links[i];
    const LinkKind kind = two.links[b.link].kind;
    EXPECT_EQ(b.internode, kind == LinkKind::kRdma) << b.label;
    if (b.internode) {
      ++internode;
      EXPECT_NEAR(b.dispatch_rows_per_pair, rows_node, 1e-12) << b.label;
      EXPECT_NEAR(b.pair_flops_per_byte, node->internode_pair_flops_per_byte, 1e-9) << b.label;
      // A GPU's IB port: its rows to the other node's proxy, and the rows of the one origin it is proxy for (8 of
      // 16 pairs each), the combine rows of the other node's 8 ranks.
      EXPECT_NEAR(b.bytes_per_step, (8.0 / 16 * rows_node * db + 8.0 / 16 * cb) * pairs, 1e-9 * b.bytes_per_step)
          << b.label;
      EXPECT_LT(b.bytes_per_step, a.bytes_per_step) << b.label;
      EXPECT_GT(b.margin, a.margin) << b.label;
    } else if (kind == LinkKind::kNvlink) {
      ++intranode;
      // Out: its rows for its 7 node mates, and the rows it forwards to them for the one remote origin it serves
      // (7 of that origin's 16 sixteenths); in: the same from its mates and their proxies. Combine: its 7 mates.
      EXPECT_NEAR(b.bytes_per_step, (14.0 / 16 * rows_rank * db + 7.0 / 16 * cb) * pairs, 1e-9 * b.bytes_per_step)
          << b.label;
      EXPECT_NEAR(a.bytes_per_step, (7.0 / 16 * rows_rank * db + 7.0 / 16 * cb) * pairs, 1e-9 * a.bytes_per_step)
          << a.label;
      EXPECT_NEAR(b.dispatch_rows_per_pair, 2 * rows_rank, 1e-12) << b.label;
      EXPECT_LT(b.margin, a.margin) << b.label;
    } else {
      EXPECT_NEAR(b.bytes_per_step, a.bytes_per_step, 1e-9 * a.bytes_per_step) << b.label;
    }
  }
  EXPECT_GT(internode, 0);
  EXPECT_GT(intranode, 0);
  // One node: nothing to deduplicate per node.
  auto one = CheckBalance(m, Preset("h800-8x-ib400"), V4ProFp8Step(true, true));
  ASSERT_TRUE(one.ok());
  EXPECT_DOUBLE_EQ(one->internode_dispatch_rows_per_pair, one->dispatch_rows_per_pair);
}

TEST(Check, SmallGroupAndErrors) {
  CheckOptions o;
  o.dispatch_dtype = DType::kBF16;
  o.tokens_per_rank = 128;
  o.num_ranks = 3;
  const ModelConfig tiny = Model("tiny");
  const Cluster c = Preset("h800-8x-ib400");
  EXPECT_THAT(std::string(CheckBalance(tiny, c, o).status().message()), HasSubstr("not divisible by ranks (3)"));
  o.num_ranks = 16;
  EXPECT_THAT(std::string(CheckBalance(tiny, c, o).status().message()), HasSubstr("exceeds the 8 devices"));
  o.num_ranks = -2;  // was silently "every device"
  EXPECT_THAT(std::string(CheckBalance(tiny, c, o).status().message()), HasSubstr("--ranks=-2 must be >= 0"));
  o.num_ranks = 1;
  auto one = CheckBalance(tiny, c, o);
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->links.size(), 1u);  // only the loopback of device 0 carries traffic
  EXPECT_EQ(c.links[one->links[0].link].kind, LinkKind::kLoopback);
  // A CPU cluster has only an f32 rate: GEMMs run in f32 whatever the dispatch dtype.
  auto cpu = LoadCluster("cpu-2core-localhost");
  ASSERT_TRUE(cpu.ok());
  o.num_ranks = 0;
  o.dispatch_dtype = DType::kFP8E4M3;
  auto rep = CheckBalance(tiny, *cpu, o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(rep->gemm_dtype, "f32");
  // A GPU cluster without a bf16 rate cannot check bf16.
  Cluster fp8_only = c;
  fp8_only.device.compute_tflops.erase("bf16");
  o.dispatch_dtype = DType::kBF16;
  EXPECT_THAT(std::string(CheckBalance(tiny, fp8_only, o).status().message()), HasSubstr("no compute rate for bf16"));
}

}  // namespace
}  // namespace waveep::topology
