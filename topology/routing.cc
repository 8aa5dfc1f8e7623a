// Copyright 2026 The waveep Authors.
//
// Routing on the cluster graph (cheapest paths between devices) and the expert traffic each link carries under
// uniform routing.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <queue>
#include <set>
#include <tuple>
#include <utility>

#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {

namespace internal {

// Dijkstra on (cost, hops): cost 1/bandwidth prefers fat links (NVLink over the NIC inside a node, the direct
// PCIe switch over the socket link), hops break ties, and link order breaks the rest, so routes are deterministic.
RouteTree ShortestPaths(const Cluster& c, int src) {
  const int nv = static_cast<int>(c.vertices.size());
  // Adjacency: (link, neighbour) in link order so ties resolve to the lowest link index.
  std::vector<std::vector<std::pair<int, int>>> adj(nv);
  for (size_t li = 0; li < c.links.size(); ++li) {
    const Link& l = c.links[li];
    if (l.a == l.b) continue;
    adj[l.a].push_back({static_cast<int>(li), l.b});
    adj[l.b].push_back({static_cast<int>(li), l.a});
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  RouteTree t;
  t.via_link.assign(nv, -1);
  t.cost.assign(nv, kInf);
  std::vector<int> hops(nv, std::numeric_limits<int>::max());
  using Item = std::tuple<double, int, int>;  // cost, hops, vertex
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> pq;
  t.cost[src] = 0;
  hops[src] = 0;
  pq.push({0.0, 0, src});
  while (!pq.empty()) {
    auto [cost, h, v] = pq.top();
    pq.pop();
    if (cost > t.cost[v] || (cost == t.cost[v] && h > hops[v])) continue;
    // Devices are endpoints, never transit: only the source expands out of a device.
    if (v != src && c.vertices[v].device >= 0) continue;
    for (const auto& [li, u] : adj[v]) {
      const double nc = cost + 1.0 / c.links[li].effective_bw_gbps();
      const int nh = h + 1;
      if (nc < t.cost[u] - 1e-12 || (std::abs(nc - t.cost[u]) <= 1e-12 && nh < hops[u])) {
        t.cost[u] = nc;
        hops[u] = nh;
        t.via_link[u] = li;
        pq.push({nc, nh, u});
      }
    }
  }
  return t;
}

Route RouteFromTree(const Cluster& c, const RouteTree& tree, int src, int dst) {
  Route r;
  if (src == dst) {
    for (size_t li = 0; li < c.links.size(); ++li) {
      if (c.links[li].kind == LinkKind::kLoopback && c.links[li].a == src) {
        r.links.push_back(static_cast<int>(li));
        r.forward.push_back(true);
        r.latency_us = c.links[li].latency_us;
        break;
      }
    }
    return r;
  }
  int v = dst;
  while (v != src) {
    const int li = tree.via_link[v];
    if (li < 0) return Route{};
    const Link& l = c.links[li];
    const bool fwd = l.b == v;  // reached v by going a -> b
    r.links.push_back(li);
    r.forward.push_back(fwd);
    r.latency_us += l.latency_us;
    v = fwd ? l.a : l.b;
  }
  std::reverse(r.links.begin(), r.links.end());
  std::reverse(r.forward.begin(), r.forward.end());
  return r;
}

int RanksOnFirstNode(const Cluster& c, int num_ranks) { return std::min(num_ranks, c.devices_per_node); }

int NodesSpanned(const Cluster& c, int num_ranks) { return (num_ranks + c.devices_per_node - 1) / c.devices_per_node; }

int PerNodeDispatchNodes(const Cluster& c, int num_ranks, bool dedup, bool dedup_hosts) {
  const int nodes = NodesSpanned(c, num_ranks);
  return dedup && dedup_hosts && nodes > 1 && num_ranks % c.devices_per_node == 0 ? nodes : 0;
}

}  // namespace internal

StatusOr<Route> FindRoute(const Cluster& cluster, int src, int dst) {
  const int n = cluster.num_devices();
  if (src < 0 || src >= n || dst < 0 || dst >= n)
    return absl::OutOfRangeError(absl::StrCat("FindRoute: devices ", src, " -> ", dst, " outside [0, ", n, ")"));
  Route r = internal::RouteFromTree(cluster, internal::ShortestPaths(cluster, src), src, dst);
  if (r.links.empty())
    return absl::NotFoundError(
        absl::StrCat("no path from ", cluster.vertices[src].name, " to ", cluster.vertices[dst].name));
  return r;
}

StatusOr<std::vector<LinkTraffic>> ExpertTraffic(const Cluster& cluster, int num_ranks,
                                                 const DispatchRouting& routing) {
  if (num_ranks < 1 || num_ranks > cluster.num_devices()) {
    return absl::InvalidArgumentError(absl::StrCat("EP group of ", num_ranks, " ranks does not fit cluster '",
                                                   cluster.name, "' with ", cluster.num_devices(),
                                                   " devices (use --nodes to add nodes)"));
  }
  const int dpn = cluster.devices_per_node;
  const bool per_node = routing.per_node_nodes > 0;
  if (per_node && (num_ranks % dpn != 0 || routing.per_node_nodes != num_ranks / dpn)) {
    return absl::InvalidArgumentError(absl::StrCat("per-node dispatch over ", routing.per_node_nodes,
                                                   " nodes needs full nodes of ", dpn, " devices; the group has ",
                                                   num_ranks, " ranks"));
  }
  std::vector<LinkTraffic> out(cluster.links.size());
  // Ranks whose dispatch rows cross each link, per direction.
  std::vector<std::set<int>> fwd_sources(cluster.links.size()), rev_sources(cluster.links.size());
  // Uniform routing with contiguous placement: 1/R of a rank's pairs go to each rank. One tree per source rank
  // (R Dijkstras, not R^2) keeps a 128-device tune fast.
  const double frac = 1.0 / num_ranks;
  std::vector<internal::RouteTree> trees;
  trees.reserve(num_ranks);
  for (int s = 0; s < num_ranks; ++s) trees.push_back(internal::ShortestPaths(cluster, s));
  for (int s = 0; s < num_ranks; ++s) {
    for (int d = 0; d < num_ranks; ++d) {
      const Route disp = internal::RouteFromTree(cluster, trees[s], s, d);
      const Route comb = internal::RouteFromTree(cluster, trees[d], d, s);
      if (disp.links.empty() || comb.links.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("cluster '", cluster.name, "': no path between ",
                                                       cluster.vertices[s].name, " and ", cluster.vertices[d].name));
      }
      const bool remote = s / dpn != d / dpn;
      for (size_t k = 0; k < disp.links.size(); ++k) {
        LinkTraffic& t = out[disp.links[k]];
        (disp.forward[k] ? t.dispatch_fwd : t.dispatch_rev) += frac;
        ++t.num_flows;
        if (remote) ++t.internode_flows;
        (disp.forward[k] ? fwd_sources : rev_sources)[disp.links[k]].insert(s);
      }
      for (size_t k = 0; k < comb.links.size(); ++k) {
        LinkTraffic& t = out[comb.links[k]];
        (comb.forward[k] ? t.combine_fwd : t.combine_rev) += frac;
      }
      // The rows as routed: direct, or through the proxy x on d's node: once per node (d = x: the direct route) and
      // forwarded (d != x: x's route to d).
      auto add_rows = [&](const Route& leg, double rows) {
        for (size_t k = 0; k < leg.links.size(); ++k) {
          LinkTraffic& t = out[leg.links[k]];
          (leg.forward[k] ? t.dispatch_rows_fwd : t.dispatch_rows_rev) += rows;
        }
      };
      if (!per_node || !remote) {
        add_rows(disp, frac * routing.rows_per_pair);
        continue;
      }
      const int x = (d / dpn) * dpn + s % dpn;
      if (d == x) {
        add_rows(disp, frac * dpn * routing.node_rows_per_pair);
      } else {
        add_rows(internal::RouteFromTree(cluster, trees[x], x, d), frac * routing.rows_per_pair);
      }
    }
  }
  // The devices "behind" a link are the smaller of its two source sets: a GPU's own port has 1 (the other side is
  // every peer), a NIC shared by 4 GPUs has 4.
  for (size_t li = 0; li < out.size(); ++li) {
    const size_t f = fwd_sources[li].size(), r = rev_sources[li].size();
    out[li].num_devices = static_cast<int>(f == 0 ? r : r == 0 ? f : std::min(f, r));
  }
  return out;
}

double LinkTraffic::Share(double dispatch_bytes, double combine_bytes, bool duplex) const {
  const double fwd = dispatch_fwd * dispatch_bytes + combine_fwd * combine_bytes;
  const double rev = dispatch_rev * dispatch_bytes + combine_rev * combine_bytes;
  const double per_pair = dispatch_bytes + combine_bytes;
  return (duplex ? std::max(fwd, rev) : fwd + rev) / per_pair;
}

double LinkTraffic::RoutedBytesPerPair(double dispatch_row_bytes, double combine_bytes, bool duplex) const {
  const double fwd = dispatch_rows_fwd * dispatch_row_bytes + combine_fwd * combine_bytes;
  const double rev = dispatch_rows_rev * dispatch_row_bytes + combine_rev * combine_bytes;
  return duplex ? std::max(fwd, rev) : fwd + rev;
}

}  // namespace waveep::topology
