// Copyright 2026 The waveep Authors.
//
// Cluster descriptions: every preset loads, the schema rejects bad files with the field named, templates expand
// into the expected graph, and JSON round-trips.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {
namespace {

using ::testing::HasSubstr;

// A small valid cluster; tests break one field at a time.
constexpr const char* kGood = R"({
  "name": "test-2x4",
  "nodes": 2,
  "devices_per_node": 4,
  "device": {"model": "test gpu", "compute_tflops": {"fp8": 100, "bf16": 50}, "memory_bw_gbps": 1000},
  "switches": [{"name": "sw", "scope": "node"}, {"name": "fabric", "scope": "cluster"}],
  "links": [
    {"name": "port", "kind": "nvlink", "from": "device", "to": "sw", "bw_gbps": 100, "latency_us": 1},
    {"name": "nic", "kind": "nic", "from": "device", "to": "fabric", "bw_gbps": 10, "latency_us": 2}
  ]
})";

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  const size_t pos = s.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) s.replace(pos, from.size(), to);
  return s;
}

Status ParseError(const std::string& text) { return ParseCluster(text, "bad.json").status(); }

TEST(Cluster, EveryPresetLoadsAndIsConnected) {
  const std::vector<std::string> presets = ListClusterPresets();
  for (const char* want :
       {"h800-8x-ib400", "h100-dgx-8x", "h20-8x", "b200-8x", "gb200-nvl72", "pcie-8x-l40s", "cpu-2core-localhost"}) {
    EXPECT_THAT(presets, ::testing::Contains(std::string(want)));
  }
  for (const std::string& name : presets) {
    SCOPED_TRACE(name);
    auto c = LoadCluster(name);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_FALSE(c->sources.empty()) << "presets cite their sources";
    EXPECT_GE(c->num_devices(), 1);
    EXPECT_TRUE(ValidateCluster(*c).ok());
    // Every pair of devices has a route.
    for (int d = 0; d < c->num_devices(); d += std::max(1, c->num_devices() / 8)) {
      auto r = FindRoute(*c, 0, d);
      EXPECT_TRUE(r.ok()) << r.status();
    }
  }
}

// One host with a slower NIC: node_bw_gbps replaces the rate of that node's instances only, round-trips, follows
// --nodes, and is refused where a link has no per-node instances or names a node that does not exist.
TEST(Cluster, PerNodeBandwidthOverridesOneNodesLinks) {
  const std::string text = Replace(kGood, R"("bw_gbps": 10, "latency_us": 2})",
                                   R"("bw_gbps": 10, "latency_us": 2, "node_bw_gbps": {"1": 2.5}})");
  auto c = ParseCluster(text, "slow.json");
  ASSERT_TRUE(c.ok()) << c.status();
  int seen = 0;
  for (const Link& l : c->links) {
    if (l.name != "nic") continue;
    ++seen;
    const int node = c->vertices[l.a].node;
    EXPECT_EQ(l.bw_gbps, node == 1 ? 2.5 : 10.0) << LinkLabel(*c, l);
  }
  EXPECT_EQ(seen, 8);
  auto back = ParseCluster(ClusterToJson(*c), "roundtrip.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->link_specs[1].node_bw_gbps, c->link_specs[1].node_bw_gbps);
  auto one = WithNodes(*c, 1);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_TRUE(one->link_specs[1].node_bw_gbps.empty());

  EXPECT_THAT(std::string(ParseError(Replace(text, R"({"1": 2.5})", R"({"2": 2.5})")).message()),
              HasSubstr("links[1] (\"nic\").node_bw_gbps.2 names node 2 but the cluster has 2 node(s)"));
  EXPECT_THAT(std::string(ParseError(Replace(text, R"({"1": 2.5})", R"({"1": -1})")).message()),
              HasSubstr("node_bw_gbps.1 must be > 0 GB/s"));
  EXPECT_THAT(std::string(ParseError(Replace(text, R"({"1": 2.5})", R"({"x": 1})")).message()),
              HasSubstr("node_bw_gbps.x"));
  EXPECT_THAT(std::string(ParseError(Replace(text, R"({"1": 2.5})", R"([1, 2])")).message()),
              HasSubstr("node_bw_gbps must be an object"));
  // A switch-to-switch link between cluster-scoped switches has no per-node instances.
  const std::string cluster_link =
      Replace(Replace(text, R"({"name": "fabric", "scope": "cluster"})",
                      R"({"name": "fabric", "scope": "cluster"}, {"name": "spine", "scope": "cluster"})"),
              R"("from": "device", "to": "fabric", "bw_gbps": 10, "latency_us": 2, "node_bw_gbps": {"1": 2.5}})",
              R"("from": "device", "to": "fabric", "bw_gbps": 10, "latency_us": 2},
    {"name": "up", "kind": "net", "from": "fabric", "to": "spine", "bw_gbps": 10, "node_bw_gbps": {"1": 2.5}})");
  EXPECT_THAT(std::string(ParseError(cluster_link).message()), HasSubstr("has no per-node instances"));
}

TEST(Cluster, ExpandsTemplatesIntoAGraph) {
  auto c = ParseCluster(kGood, "good.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_devices(), 8);
  // 8 devices + 2 node switches + 1 fabric.
  EXPECT_EQ(c->vertices.size(), 11u);
  EXPECT_EQ(c->vertices[5].name, "n1.d1");
  // 8 ports + 8 NICs + 8 loopbacks (implicit: memory_bw / 2).
  ASSERT_EQ(c->links.size(), 24u);
  EXPECT_EQ(c->links[8].kind, LinkKind::kRdma);  // "nic" is an alias
  EXPECT_EQ(c->links.back().kind, LinkKind::kLoopback);
  EXPECT_DOUBLE_EQ(c->links.back().bw_gbps, 500);
  EXPECT_EQ(LinkLabel(*c, c->links[0]), "n0.d0 -> n0.sw");

  // Same node: through the node switch (cheaper than the fabric). Other node: the fabric.
  auto same = FindRoute(*c, 0, 3);
  ASSERT_TRUE(same.ok());
  ASSERT_EQ(same->links.size(), 2u);
  EXPECT_EQ(c->links[same->links[0]].name, "port");
  EXPECT_TRUE(same->forward[0]);
  EXPECT_FALSE(same->forward[1]);
  EXPECT_DOUBLE_EQ(same->latency_us, 2);
  auto other = FindRoute(*c, 0, 5);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(c->links[other->links[0]].name, "nic");
  auto self = FindRoute(*c, 2, 2);
  ASSERT_TRUE(self.ok());
  EXPECT_EQ(c->links[self->links[0]].kind, LinkKind::kLoopback);
  EXPECT_EQ(FindRoute(*c, 0, 99).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(Cluster, IndexedSwitchTemplates) {
  auto c = LoadCluster("pcie-8x-l40s");
  ASSERT_TRUE(c.ok()) << c.status();
  // Devices 2k and 2k+1 hang off plx{k}: 0 and 1 talk through plx0 only.
  auto r = FindRoute(*c, 0, 1);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->links.size(), 2u);
  EXPECT_EQ(c->vertices[c->links[r->links[0]].b].name, "n0.plx0");
  // 0 -> 7 crosses the socket link.
  auto far = FindRoute(*c, 0, 7);
  ASSERT_TRUE(far.ok());
  bool xbus = false;
  for (int li : far->links) xbus = xbus || c->links[li].kind == LinkKind::kXbus;
  EXPECT_TRUE(xbus);
}

TEST(Cluster, JsonRoundTrips) {
  for (const char* name : {"h800-8x-ib400", "pcie-8x-l40s", "gb200-nvl72"}) {
    auto c = LoadCluster(name);
    ASSERT_TRUE(c.ok()) << c.status();
    auto back = ParseCluster(ClusterToJson(*c), "round-trip");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(ClusterToJson(*back), ClusterToJson(*c));
    ASSERT_EQ(back->links.size(), c->links.size());
    for (size_t i = 0; i < c->links.size(); ++i) {
      EXPECT_EQ(back->links[i].a, c->links[i].a);
      EXPECT_EQ(back->links[i].b, c->links[i].b);
      EXPECT_DOUBLE_EQ(back->links[i].bw_gbps, c->links[i].bw_gbps);
    }
  }
}

TEST(Cluster, MeasuredInterferenceRoundTrips) {
  auto c = LoadCluster("cpu-2core-localhost");
  ASSERT_TRUE(c.ok()) << c.status();
  c->device.overlap_compute_speed = 0.62;
  c->device.overlap_comm_speed = 0.8;
  auto back = ParseCluster(ClusterToJson(*c), "round-trip");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_DOUBLE_EQ(back->device.overlap_compute_speed, 0.62);
  EXPECT_DOUBLE_EQ(back->device.overlap_comm_speed, 0.8);
}

TEST(Cluster, WithNodesReplicates) {
  auto c = LoadCluster("h800-8x-ib400");
  ASSERT_TRUE(c.ok());
  auto four = WithNodes(*c, 4);
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ(four->num_devices(), 32);
  EXPECT_EQ(WithNodes(*c, 0).status().code(), absl::StatusCode::kInvalidArgument);
  // NVL72: the NVLink switch is per 18 nodes, so 36 nodes are two domains and 20 nodes do not divide.
  auto nvl = LoadCluster("gb200-nvl72");
  ASSERT_TRUE(nvl.ok());
  auto two_racks = WithNodes(*nvl, 36);
  ASSERT_TRUE(two_racks.ok()) << two_racks.status();
  auto cross = FindRoute(*two_racks, 0, 72);
  ASSERT_TRUE(cross.ok());
  EXPECT_EQ(two_racks->links[cross->links[0]].kind, LinkKind::kRdma);
  EXPECT_THAT(WithNodes(*nvl, 20).status().message(), HasSubstr("group_nodes"));
}

struct BadCase {
  const char* what;
  std::string text;
  const char* message;
};

TEST(Cluster, BadFilesNameTheField) {
  const std::string g = kGood;
  const std::vector<BadCase> cases = {
      {"malformed", "{\"name\": ", "parse error"},
      // Integers are read by runtime's JsonInteger: never wrapped (2^64 - 1 is not -1) or narrowed (2^32 + 2 is not 2).
      {"unsigned that would wrap", Replace(g, "\"nodes\": 2", "\"nodes\": 18446744073709551615"),
       "nodes is out of range: 18446744073709551615"},
      {"int that would narrow", Replace(g, "\"nodes\": 2", "\"nodes\": 4294967298"),
       "nodes is out of range: 4294967298"},
      {"non-integer", Replace(g, "\"nodes\": 2", "\"nodes\": 2.5"), "nodes must be an integer, got 2.5"},
      {"unknown endpoint", Replace(g, "\"to\": \"fabric\"", "\"to\": \"fabrik\""),
       "links[1] (\"nic\").to = \"fabrik\": no switch named \"fabrik\" (switches: sw, fabric"},
      {"negative bandwidth", Replace(g, "\"bw_gbps\": 10,", "\"bw_gbps\": -10,"),
       "links[1] (\"nic\").bw_gbps must be > 0 GB/s, got -10"},
      {"zero bandwidth", Replace(g, "\"bw_gbps\": 100,", "\"bw_gbps\": 0,"),
       "links[0] (\"port\").bw_gbps must be > 0 GB/s"},
      {"negative latency", Replace(g, "\"latency_us\": 2", "\"latency_us\": -2"), "latency_us must be >= 0"},
      {"missing compute rate", Replace(g, "\"compute_tflops\": {\"fp8\": 100, \"bf16\": 50}, ", ""),
       "device.compute_tflops is missing"},
      {"zero compute rate", Replace(g, "\"fp8\": 100", "\"fp8\": 0"), "device.compute_tflops.fp8 must be > 0"},
      {"unknown dtype", Replace(g, "\"fp8\": 100", "\"fp4\": 100"), "compute_tflops.fp4"},
      {"missing memory bw", Replace(g, ", \"memory_bw_gbps\": 1000", ""), "device.memory_bw_gbps is missing"},
      {"unknown field", Replace(g, "\"latency_us\": 1}", "\"latency_us\": 1, \"bw_gpbs\": 3}"),
       "links[0].bw_gpbs is not a known field"},
      {"unknown kind", Replace(g, "\"kind\": \"nvlink\"", "\"kind\": \"carrier-pigeon\""),
       "links[0].kind unknown link kind \"carrier-pigeon\""},
      {"missing name", Replace(g, "\"name\": \"test-2x4\",", ""), "name is missing"},
      {"loopback with a link's fields",
       Replace(g, "\"nodes\": 2", "\"nodes\": 2, \"loopback\": {\"bw_gbps\": 5, \"duplex\": true}"),
       "loopback.duplex is not a known field"},
      {"too many devices", Replace(g, "\"nodes\": 2", "\"nodes\": 100000"), "devices, more than the 65536 supported"},
      {"bad scope", Replace(g, "\"scope\": \"cluster\"", "\"scope\": \"rack\""),
       "switches[1].scope must be node, group or cluster"},
      {"device to device", Replace(g, "\"to\": \"sw\"", "\"to\": \"device\""), "connects device to device"},
      {"bad template", Replace(g, "\"to\": \"sw\"", "\"to\": \"sw{x}\""), "must start with d or i"},
      {"unreachable", Replace(g, "\"from\": \"device\", \"to\": \"fabric\"", "\"from\": \"sw\", \"to\": \"sw2\""),
       "no switch named \"sw2\""},
      {"no links", Replace(Replace(g, "\"links\": [", "\"links_\": ["), "\"nodes\": 2", "\"nodes\": 2"),
       "links is missing"},
      {"probe without probed", Replace(g, "\"nodes\": 2,", "\"nodes\": 2, \"probe\": {},"),
       "probe is only allowed with \"probed\": true"},
      {"overlap speed above 1",
       Replace(g, ", \"memory_bw_gbps\": 1000",
               ", \"memory_bw_gbps\": 1000, \"overlap_compute_speed\": 1.5, \"overlap_comm_speed\": 0.9"),
       "device.overlap_compute_speed must be in (0, 1]"},
      {"overlap speed alone",
       Replace(g, ", \"memory_bw_gbps\": 1000", ", \"memory_bw_gbps\": 1000, \"overlap_comm_speed\": 0.9"),
       "set both or neither"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    const Status s = ParseError(c.text);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
    EXPECT_THAT(std::string(s.message()), HasSubstr("bad.json"));
  }
}

TEST(Cluster, DisconnectedDevicesAreRejected) {
  // Two nodes whose only link is inside each node.
  const std::string text = Replace(
      kGood,
      ",\n    {\"name\": \"nic\", \"kind\": \"nic\", \"from\": \"device\", \"to\": \"fabric\", \"bw_gbps\": 10, "
      "\"latency_us\": 2}",
      "");
  const Status s = ParseError(text);
  EXPECT_THAT(std::string(s.message()), HasSubstr("device n1.d0 cannot be reached from n0.d0"));
}

TEST(Cluster, UnknownPresetListsTheKnownOnes) {
  const Status s = LoadCluster("no-such-cluster").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("h800-8x-ib400"));
}

TEST(Cluster, LinkKinds) {
  for (LinkKind k : {LinkKind::kNvlink, LinkKind::kPcie, LinkKind::kRdma, LinkKind::kNet, LinkKind::kXbus,
                     LinkKind::kShm, LinkKind::kLoopback}) {
    auto back = ParseLinkKind(LinkKindName(k));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, k);
  }
  EXPECT_EQ(*ParseLinkKind("nic"), LinkKind::kRdma);
  EXPECT_FALSE(ParseLinkKind("smoke-signals").ok());
}

TEST(Cluster, EfficiencyCurveInterpolatesInLog2) {
  GemmEfficiencyCurve c;
  c.rows = {1, 4, 16};
  c.efficiency = {0.1, 0.3, 0.9};
  EXPECT_DOUBLE_EQ(c.At(0), 0.1);
  EXPECT_DOUBLE_EQ(c.At(1), 0.1);
  EXPECT_DOUBLE_EQ(c.At(2), 0.2);  // halfway in log2 between 1 and 4
  EXPECT_DOUBLE_EQ(c.At(8), 0.6);
  EXPECT_DOUBLE_EQ(c.At(1000), 0.9);
}

TEST(Cluster, AlltoallCurveInterpolates) {
  AlltoallCurve c;
  c.ranks = 2;
  c.points = {{1024, 10, 0, 0, 0, 0, 0, 0}, {2048, 20, 0, 0, 30, 0, 0, 0}, {4096, 40, 0, 0, 50, 0, 0, 0}};
  // The async column is preferred where measured.
  EXPECT_DOUBLE_EQ(c.ExchangeUs(512), 10);
  EXPECT_DOUBLE_EQ(c.ExchangeUs(3072), 40);
  EXPECT_DOUBLE_EQ(c.ExchangeUs(8192), 90);  // extrapolated with the last slope (20 us per 2048 B)
}

TEST(Cluster, AlltoallPointComparesWithMpiAllowingForNoise) {
  AlltoallPoint q;
  q.bytes = 1024;
  q.comm_avg_us = 10;
  EXPECT_EQ(q.CompareWithMpi(), AlltoallPoint::VersusMpi::kNotCompared);  // MPI not measured
  q.mpi_avg_us = 10;
  EXPECT_EQ(q.CompareWithMpi(), AlltoallPoint::VersusMpi::kFaster);  // equal counts as at least as fast
  q.mpi_avg_us = 9.5;                                                // 5.3% slower ...
  EXPECT_EQ(q.CompareWithMpi(), AlltoallPoint::VersusMpi::kSlower);  // ... with no noise measured
  q.mpi_spread = 0.06;
  EXPECT_EQ(q.CompareWithMpi(), AlltoallPoint::VersusMpi::kWithinNoise);  // MPI's own rounds vary by 6%
  q.mpi_spread = 0;
  q.comm_spread = 0.06;
  EXPECT_EQ(q.CompareWithMpi(), AlltoallPoint::VersusMpi::kWithinNoise);  // the larger spread counts
  q.comm_spread = 0.05;
  EXPECT_EQ(q.CompareWithMpi(), AlltoallPoint::VersusMpi::kSlower);

  // The spreads survive the cluster file.
  auto loaded = LoadCluster("pcie-8x-l40s");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  Cluster c = *loaded;
  ProbeInfo info;
  info.ranks = 2;
  AlltoallCurve curve;
  curve.ranks = 2;
  curve.backend = "mpi";
  curve.points = {q};
  info.alltoall = curve;
  c.probe = info;
  auto back = ParseCluster(ClusterToJson(c), "spread.json");
  ASSERT_TRUE(back.ok()) << back.status();
  const AlltoallPoint& r = back->probe->alltoall->points.at(0);
  EXPECT_DOUBLE_EQ(r.comm_spread, 0.05);
  EXPECT_DOUBLE_EQ(r.mpi_spread, 0);
  EXPECT_EQ(r.CompareWithMpi(), AlltoallPoint::VersusMpi::kSlower);
}

}  // namespace
}  // namespace waveep::topology
