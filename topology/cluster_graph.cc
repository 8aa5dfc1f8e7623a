// Copyright 2026 The waveep Authors.
//
// The cluster as a graph: link kinds, the device's rate lookups, expansion of the switch and link templates into
// vertices and link instances, and validation (every field in range, every device reachable).
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {
namespace {

using internal::kMaxDevices;

struct KindName {
  LinkKind kind;
  const char* name;
};
constexpr KindName kKindNames[] = {
    {LinkKind::kNvlink, "nvlink"}, {LinkKind::kPcie, "pcie"}, {LinkKind::kRdma, "rdma"},        {LinkKind::kNet, "net"},
    {LinkKind::kXbus, "xbus"},     {LinkKind::kShm, "shm"},   {LinkKind::kLoopback, "loopback"}};

// ---- template expansion -------------------------------------------------------------------------------------------

// Substitutes "{d}", "{i}", "{d/2}", "{i%4}", "{d/2%2}" ... in `tmpl` with integer arithmetic.
StatusOr<std::string> Substitute(absl::string_view tmpl, int d, int i) {
  std::string out;
  size_t pos = 0;
  while (pos < tmpl.size()) {
    const size_t open = tmpl.find('{', pos);
    if (open == absl::string_view::npos) {
      absl::StrAppend(&out, tmpl.substr(pos));
      break;
    }
    absl::StrAppend(&out, tmpl.substr(pos, open - pos));
    const size_t close = tmpl.find('}', open);
    if (close == absl::string_view::npos)
      return absl::InvalidArgumentError(absl::StrCat("unclosed '{' in \"", tmpl, "\""));
    absl::string_view expr = tmpl.substr(open + 1, close - open - 1);
    if (expr.empty() || (expr[0] != 'd' && expr[0] != 'i'))
      return absl::InvalidArgumentError(absl::StrCat("\"{", expr, "}\" in \"", tmpl, "\" must start with d or i"));
    int64_t v = expr[0] == 'd' ? d : i;
    size_t k = 1;
    while (k < expr.size()) {
      const char op = expr[k++];
      size_t end = k;
      while (end < expr.size() && expr[end] >= '0' && expr[end] <= '9') ++end;
      int64_t n = 0;
      if (end == k || !absl::SimpleAtoi(expr.substr(k, end - k), &n) || n <= 0 || (op != '/' && op != '%'))
        return absl::InvalidArgumentError(
            absl::StrCat("\"{", expr, "}\" in \"", tmpl, "\": only /N and %N with N > 0 may follow d or i"));
      v = op == '/' ? v / n : v % n;
      k = end;
    }
    absl::StrAppend(&out, v);
    pos = close + 1;
  }
  return out;
}

// node < group < cluster: a link between two scopes repeats as often as the narrower one.
int ScopeRank(const SwitchSpec& s) { return s.scope == "node" ? 0 : s.scope == "group" ? 1 : 2; }

struct SwitchIndex {
  // instance name -> (switch spec index)
  std::map<std::string, int> spec_of;
  std::vector<std::string> names;  // all instance names, declaration order
};

SwitchIndex IndexSwitches(const Cluster& c) {
  SwitchIndex idx;
  for (size_t s = 0; s < c.switches.size(); ++s) {
    const SwitchSpec& sw = c.switches[s];
    if (sw.count > 0) {
      for (int i = 0; i < sw.count; ++i) {
        std::string n = absl::StrCat(sw.name, i);
        idx.spec_of.emplace(n, static_cast<int>(s));
        idx.names.push_back(n);
      }
    } else {
      idx.spec_of.emplace(sw.name, static_cast<int>(s));
      idx.names.push_back(sw.name);
    }
  }
  return idx;
}

std::string VertexName(const SwitchSpec& sw, const std::string& inst, int node) {
  if (sw.scope == "node") return absl::StrCat("n", node, ".", inst);
  if (sw.scope == "group") return absl::StrCat("g", node / sw.group_nodes, ".", inst);
  return inst;
}

Status ValidateTemplates(const Cluster& c) {
  const std::string o = c.origin.empty() ? c.name : c.origin;
  auto err = [&](absl::string_view field, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("cluster ", o, ": ", field, " ", why));
  };
  if (c.name.empty()) return err("name", "is missing or empty");
  if (c.num_nodes < 1) return err("nodes", absl::StrCat("must be >= 1, got ", c.num_nodes));
  if (c.devices_per_node < 1) return err("devices_per_node", absl::StrCat("must be >= 1, got ", c.devices_per_node));
  if (int64_t{c.num_nodes} * c.devices_per_node > kMaxDevices)
    return err("nodes", absl::StrCat("x devices_per_node = ", int64_t{c.num_nodes} * c.devices_per_node,
                                     " devices, more than the ", kMaxDevices, " supported"));
  const DeviceSpec& d = c.device;
  if (d.kind != "gpu" && d.kind != "cpu")
    return err("device.kind", absl::StrCat("must be gpu or cpu, got \"", d.kind, "\""));
  if (d.compute_tflops.empty())
    return err("device.compute_tflops", "is missing or empty: give the dense peak TFLOP/s for at least one dtype");
  for (const auto& [k, v] : d.compute_tflops) {
    if (!(v > 0)) return err(absl::StrCat("device.compute_tflops.", k), absl::StrCat("must be > 0, got ", v));
  }
  if (!d.gemm_dtype.empty() && d.compute_tflops.count(d.gemm_dtype) == 0)
    return err("device.gemm_dtype",
               absl::StrCat("is \"", d.gemm_dtype, "\" but device.compute_tflops has no rate for it"));
  if (!(d.memory_bw_gbps > 0)) return err("device.memory_bw_gbps", absl::StrCat("must be > 0, got ", d.memory_bw_gbps));
  if (d.memory_gib < 0) return err("device.memory_gib", "must be >= 0");
  if (!(d.max_gemm_efficiency > 0 && d.max_gemm_efficiency <= 1))
    return err("device.max_gemm_efficiency", absl::StrCat("must be in (0, 1], got ", d.max_gemm_efficiency));
  if (d.sm_count < 0) return err("device.sm_count", "must be >= 0");
  if (d.cores < 0) return err("device.cores", "must be >= 0");
  for (auto [name, v] : {std::pair<const char*, double>{"overlap_compute_speed", d.overlap_compute_speed},
                         std::pair<const char*, double>{"overlap_comm_speed", d.overlap_comm_speed}}) {
    if (!(v >= 0 && v <= 1))
      return err(absl::StrCat("device.", name), absl::StrCat("must be in (0, 1] (0 = not measured), got ", v));
  }
  if ((d.overlap_compute_speed > 0) != (d.overlap_comm_speed > 0)) {
    return err("device.overlap_compute_speed", "and device.overlap_comm_speed come together: set both or neither");
  }
  if (d.op_overhead_us < 0) return err("device.op_overhead_us", "must be >= 0");
  for (const auto& [k, v] : d.convert_gbps) {
    if (!(v > 0)) return err(absl::StrCat("device.convert_gbps.", k), absl::StrCat("must be > 0, got ", v));
  }
  const GemmEfficiencyCurve& cv = d.gemm_efficiency;
  if (cv.rows.size() != cv.efficiency.size())
    return err("device.gemm_efficiency",
               absl::StrCat("has ", cv.rows.size(), " rows but ", cv.efficiency.size(), " efficiency values"));
  for (size_t i = 0; i < cv.rows.size(); ++i) {
    if (!(cv.rows[i] > 0) || (i > 0 && !(cv.rows[i] > cv.rows[i - 1])))
      return err(absl::StrCat("device.gemm_efficiency.rows[", i, "]"), "must be > 0 and increasing");
    if (!(cv.efficiency[i] > 0 && cv.efficiency[i] <= 1))
      return err(absl::StrCat("device.gemm_efficiency.efficiency[", i, "]"),
                 absl::StrCat("must be in (0, 1], got ", cv.efficiency[i]));
  }

  std::set<std::string> seen;
  for (size_t s = 0; s < c.switches.size(); ++s) {
    const SwitchSpec& sw = c.switches[s];
    const std::string f = absl::StrCat("switches[", s, "]");
    if (sw.name.empty() || sw.name == "device" || absl::StrContains(sw.name, "{") || absl::StrContains(sw.name, "."))
      return err(absl::StrCat(f, ".name"), absl::StrCat("\"", sw.name, "\" is empty, reserved or has '{' or '.'"));
    if (sw.count < 0 || sw.count > kMaxDevices)
      return err(absl::StrCat(f, ".count"), absl::StrCat("must be in [0, ", kMaxDevices, "], got ", sw.count));
    if (sw.scope != "node" && sw.scope != "group" && sw.scope != "cluster")
      return err(absl::StrCat(f, ".scope"), absl::StrCat("must be node, group or cluster, got \"", sw.scope, "\""));
    if (sw.scope == "group" && (sw.group_nodes < 1 || c.num_nodes % sw.group_nodes != 0))
      return err(absl::StrCat(f, ".group_nodes"),
                 absl::StrCat("must be >= 1 and divide the ", c.num_nodes, " nodes, got ", sw.group_nodes));
    const std::vector<std::string> names =
        sw.count > 0 ? [&] {
          std::vector<std::string> v;
          for (int i = 0; i < sw.count; ++i) v.push_back(absl::StrCat(sw.name, i));
          return v;
        }()
                     : std::vector<std::string>{sw.name};
    for (const std::string& n : names) {
      if (!seen.insert(n).second) return err(absl::StrCat(f, ".name"), absl::StrCat("duplicates switch \"", n, "\""));
    }
  }
  std::set<std::string> link_names;
  for (size_t i = 0; i < c.link_specs.size(); ++i) {
    const LinkSpec& l = c.link_specs[i];
    const std::string f = absl::StrCat("links[", i, "] (\"", l.name, "\")");
    if (l.name.empty()) return err(absl::StrCat("links[", i, "].name"), "is missing or empty");
    if (l.kind == LinkKind::kLoopback)
      return err(absl::StrCat(f, ".kind"), "loopback links are implicit; describe them in the top-level \"loopback\"");
    if (!(l.bw_gbps > 0)) return err(absl::StrCat(f, ".bw_gbps"), absl::StrCat("must be > 0 GB/s, got ", l.bw_gbps));
    for (const auto& [node, bw] : l.node_bw_gbps) {
      const std::string key = absl::StrCat(f, ".node_bw_gbps.", node);
      if (node < 0 || node >= c.num_nodes)
        return err(key, absl::StrCat("names node ", node, " but the cluster has ", c.num_nodes, " node(s)"));
      if (!(bw > 0)) return err(key, absl::StrCat("must be > 0 GB/s, got ", bw));
    }
    if (l.latency_us < 0) return err(absl::StrCat(f, ".latency_us"), absl::StrCat("must be >= 0, got ", l.latency_us));
    if (!(l.oversubscription >= 1))
      return err(absl::StrCat(f, ".oversubscription"), absl::StrCat("must be >= 1, got ", l.oversubscription));
    if (l.count < 1 || l.count > kMaxDevices)
      return err(absl::StrCat(f, ".count"), absl::StrCat("must be in [1, ", kMaxDevices, "], got ", l.count));
    if (l.from == "device" && l.to == "device")
      return err(f,
                 "connects device to device: put a switch between them (\"from\": \"device\", \"to\": \"nvswitch\")");
    if (l.from.empty() || l.to.empty()) return err(f, "needs both \"from\" and \"to\"");
  }
  if (c.loopback.has_value()) {
    if (!(c.loopback->bw_gbps > 0))
      return err("loopback.bw_gbps", absl::StrCat("must be > 0 GB/s, got ", c.loopback->bw_gbps));
    if (c.loopback->latency_us < 0) return err("loopback.latency_us", "must be >= 0");
  }
  return absl::OkStatus();
}

}  // namespace

// ---- small public helpers -----------------------------------------------------------------------------------------

absl::string_view LinkKindName(LinkKind k) {
  for (const KindName& kn : kKindNames) {
    if (kn.kind == k) return kn.name;
  }
  return "?";
}

StatusOr<LinkKind> ParseLinkKind(absl::string_view name) {
  if (name == "nic") return LinkKind::kRdma;
  std::vector<std::string> names;
  for (const KindName& kn : kKindNames) {
    if (name == kn.name) return kn.kind;
    names.emplace_back(kn.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown link kind \"", name, "\" (known: ", absl::StrJoin(names, ", "), ", nic)"));
}

double GemmEfficiencyCurve::At(double m) const {
  WAVEEP_CHECK(!rows.empty()) << "GemmEfficiencyCurve::At on an empty curve";
  const double x = std::max(m, 1.0);
  if (x <= rows.front()) return efficiency.front();
  if (x >= rows.back()) return efficiency.back();
  size_t i = 1;
  while (rows[i] < x) ++i;
  const double l0 = std::log2(rows[i - 1]), l1 = std::log2(rows[i]);
  const double t = (std::log2(x) - l0) / (l1 - l0);
  return efficiency[i - 1] + t * (efficiency[i] - efficiency[i - 1]);
}

StatusOr<double> DeviceSpec::PeakTflops(absl::string_view dtype_name) const {
  auto it = compute_tflops.find(std::string(dtype_name));
  if (it != compute_tflops.end()) return it->second;
  std::vector<std::string> have;
  for (const auto& [k, v] : compute_tflops) have.push_back(absl::StrCat(k, "=", v));
  return absl::InvalidArgumentError(absl::StrCat("device \"", model, "\" has no compute rate for ", dtype_name,
                                                 " (device.compute_tflops has ", absl::StrJoin(have, ", "),
                                                 "); add it or pick another --dtype"));
}

std::string LinkLabel(const Cluster& cluster, const Link& link) {
  if (link.a == link.b) return absl::StrCat(cluster.vertices[link.a].name, " (self)");
  return absl::StrCat(cluster.vertices[link.a].name, " -> ", cluster.vertices[link.b].name);
}

// ---- expansion ----------------------------------------------------------------------------------------------------

Status ValidateCluster(const Cluster& cluster) {
  WAVEEP_RETURN_IF_ERROR(ValidateTemplates(cluster));
  if (cluster.vertices.empty()) return absl::OkStatus();  // not expanded: templates only
  // Every device reaches every other: one tree from device 0, and (directed graph is symmetric) that suffices.
  internal::RouteTree tree = internal::ShortestPaths(cluster, 0);
  for (int d = 1; d < cluster.num_devices(); ++d) {
    if (tree.via_link[d] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster ", cluster.origin.empty() ? cluster.name : cluster.origin, ": device ",
                       cluster.vertices[d].name, " cannot be reached from ", cluster.vertices[0].name,
                       ": no path of links between them (add a link from \"device\" to a switch both reach)"));
    }
  }
  return absl::OkStatus();
}

Status ExpandCluster(Cluster* c) {
  c->vertices.clear();
  c->links.clear();
  WAVEEP_RETURN_IF_ERROR(ValidateTemplates(*c));
  const std::string o = c->origin.empty() ? c->name : c->origin;
  const int nodes = c->num_nodes, dpn = c->devices_per_node;
  for (int n = 0; n < nodes; ++n) {
    for (int d = 0; d < dpn; ++d) c->vertices.push_back(Vertex{absl::StrCat("n", n, ".d", d), n * dpn + d, n});
  }
  const SwitchIndex idx = IndexSwitches(*c);
  std::map<std::string, int> vertex_of;  // vertex name -> index
  auto vertex = [&](const std::string& inst, int node) -> int {
    const SwitchSpec& sw = c->switches[idx.spec_of.at(inst)];
    const std::string name = VertexName(sw, inst, node);
    auto it = vertex_of.find(name);
    if (it != vertex_of.end()) return it->second;
    const int v = static_cast<int>(c->vertices.size());
    c->vertices.push_back(Vertex{name, -1, sw.scope == "node" ? node : -1});
    vertex_of.emplace(name, v);
    return v;
  };
  // Devices come first so that vertex index == global device index (routing and traffic rely on it).
  // Create switch vertices in a stable order (declaration order, then node) so names and indices are predictable.
  for (const std::string& inst : idx.names) {
    const SwitchSpec& sw = c->switches[idx.spec_of.at(inst)];
    const int step = sw.scope == "node" ? 1 : sw.scope == "group" ? sw.group_nodes : nodes;
    for (int n = 0; n < nodes; n += step) vertex(inst, n);
  }

  for (size_t li = 0; li < c->link_specs.size(); ++li) {
    const LinkSpec& l = c->link_specs[li];
    const std::string f = absl::StrCat("links[", li, "] (\"", l.name, "\")");
    auto resolve = [&](const std::string& tmpl, const char* end, int d, int i) -> StatusOr<std::string> {
      auto name = Substitute(tmpl, d, i);
      if (!name.ok())
        return absl::InvalidArgumentError(
            absl::StrCat("cluster ", o, ": ", f, ".", end, ": ", name.status().message()));
      if (idx.spec_of.count(*name) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("cluster ", o, ": ", f, ".", end, " = \"", tmpl, "\"",
                         *name == tmpl ? "" : absl::StrCat(" -> \"", *name, "\""), ": no switch named \"", *name,
                         "\" (switches: ", absl::StrJoin(idx.names, ", "), "; or \"device\")"));
      }
      return name;
    };
    auto add = [&](int a, int b, int node) {
      c->links.push_back(Link{l.name, l.kind, a, b, node >= 0 ? l.BwOnNode(node) : l.bw_gbps, l.latency_us, l.duplex,
                              l.oversubscription});
    };
    const bool dev_from = l.from == "device", dev_to = l.to == "device";
    if (dev_from || dev_to) {
      const std::string& other = dev_from ? l.to : l.from;
      for (int n = 0; n < nodes; ++n) {
        for (int d = 0; d < dpn; ++d) {
          WAVEEP_ASSIGN_OR_RETURN(std::string inst, resolve(other, dev_from ? "to" : "from", d, d));
          const int sv = vertex(inst, n), dv = n * dpn + d;
          dev_from ? add(dv, sv, n) : add(sv, dv, n);
        }
      }
      continue;
    }
    // Switch to switch: the narrowest scope of the two ends decides how often the link repeats.
    WAVEEP_ASSIGN_OR_RETURN(std::string from0, resolve(l.from, "from", 0, 0));
    WAVEEP_ASSIGN_OR_RETURN(std::string to0, resolve(l.to, "to", 0, 0));
    const SwitchSpec& sa = c->switches[idx.spec_of.at(from0)];
    const SwitchSpec& sb = c->switches[idx.spec_of.at(to0)];
    const SwitchSpec& narrow = ScopeRank(sa) <= ScopeRank(sb) ? sa : sb;
    if (sa.scope == "group" && sb.scope == "group" && sa.group_nodes != sb.group_nodes) {
      return absl::InvalidArgumentError(absl::StrCat("cluster ", o, ": ", f, " joins switches of groups of ",
                                                     sa.group_nodes, " and ", sb.group_nodes, " nodes"));
    }
    const int step = narrow.scope == "node" ? 1 : narrow.scope == "group" ? narrow.group_nodes : nodes;
    if (!l.node_bw_gbps.empty() && narrow.scope != "node") {
      return absl::InvalidArgumentError(absl::StrCat(
          "cluster ", o, ": ", f, ".node_bw_gbps: the link joins ", narrow.scope,
          "-scoped switches, so it has no per-node instances (per-node rates need a \"device\" end or a node-scoped "
          "switch)"));
    }
    for (int n = 0; n < nodes; n += step) {
      for (int i = 0; i < l.count; ++i) {
        WAVEEP_ASSIGN_OR_RETURN(std::string fa, resolve(l.from, "from", i, i));
        WAVEEP_ASSIGN_OR_RETURN(std::string fb, resolve(l.to, "to", i, i));
        if (fa == fb) {
          return absl::InvalidArgumentError(
              absl::StrCat("cluster ", o, ": ", f, " connects \"", fa, "\" to itself (instance ", i, ")"));
        }
        add(vertex(fa, n), vertex(fb, n), narrow.scope == "node" ? n : -1);
      }
    }
  }
  // Loopback: a rank's block to itself is one memcpy in device memory (read + write).
  LinkSpec lb;
  if (c->loopback.has_value()) {
    lb = *c->loopback;
  } else {
    lb.bw_gbps = c->device.memory_bw_gbps / 2;
    lb.latency_us = 0;
  }
  for (int dv = 0; dv < nodes * dpn; ++dv) {
    c->links.push_back(Link{"loopback", LinkKind::kLoopback, dv, dv, lb.bw_gbps, lb.latency_us, false, 1});
  }
  return ValidateCluster(*c);
}

}  // namespace waveep::topology
