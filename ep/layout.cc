// Copyright 2026 The waveep Authors.
//
// Dispatch layout: per-step metadata exchange (counts, wave boundaries) and the deterministic buffer orders.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <optional>

#include "ep/ep.h"
#include "ep/ep_internal.h"

namespace waveep::ep {

StatusOr<std::vector<int>> PartitionWaves(const std::vector<int64_t>& rows, int num_waves) {
  const int l = static_cast<int>(rows.size());
  if (num_waves < 1 || num_waves > l) {
    return absl::InvalidArgumentError(absl::StrCat("waves must be in [1, local experts=", l, "], got ", num_waves));
  }
  std::vector<int64_t> prefix(l + 1, 0);
  for (int e = 0; e < l; ++e) prefix[e + 1] = prefix[e] + rows[e];
  const int64_t total = prefix[l];
  std::vector<int> b(num_waves + 1, 0);
  b[num_waves] = l;
  for (int w = 1; w < num_waves; ++w) {
    // Smallest boundary whose prefix reaches w/W of the rows (by expert count when there are no rows), kept strictly
    // increasing and leaving at least one expert for each remaining wave.
    int lo = b[w - 1] + 1, hi = l - (num_waves - w);
    int pick = lo;
    if (total > 0) {
      const double target = static_cast<double>(total) * w / num_waves;
      pick = hi;
      for (int i = lo; i <= hi; ++i) {
        // Choose the boundary i whose prefix is closest to the target.
        if (static_cast<double>(prefix[i]) >= target) {
          pick = (i > lo && target - prefix[i - 1] < prefix[i] - target) ? i - 1 : i;
          break;
        }
      }
    } else {
      pick = std::max(lo, std::min(hi, static_cast<int>(static_cast<int64_t>(l) * w / num_waves)));
    }
    b[w] = std::max(lo, std::min(hi, pick));
  }
  return b;
}

namespace internal {

Status ValidateNodeOfRank(const std::vector<int>& node_of_rank, int num_ranks) {
  if (static_cast<int>(node_of_rank.size()) != num_ranks) {
    return absl::InvalidArgumentError(absl::StrCat("node_of_rank has ", node_of_rank.size(),
                                                   " entries but the communicator has ", num_ranks, " ranks"));
  }
  for (int r = 0; r < num_ranks; ++r) {
    if (node_of_rank[r] < 0 || node_of_rank[r] >= num_ranks) {
      return absl::InvalidArgumentError(
          absl::StrCat("node_of_rank[", r, "] = ", node_of_rank[r], " is outside [0, ", num_ranks, ")"));
    }
  }
  return absl::OkStatus();
}

int CountNodes(const std::vector<int>& node_of_rank) {
  std::vector<int> ids = node_of_rank;
  std::sort(ids.begin(), ids.end());
  return static_cast<int>(std::unique(ids.begin(), ids.end()) - ids.begin());
}

Status AgreeStatus(comm::Communicator& comm, const Status& local) {
  return AgreeOnStatus(comm.rank(), comm.size(), local,
                       [&](const void* send, size_t bytes, void* recv) { return comm.Allgather(send, bytes, recv); });
}

}  // namespace internal

namespace {

// Step 6 of BuildDispatchLayout without deduplication: dispatch rows are the pairs.
void PairDispatchRows(const TokenBatch& batch, DispatchLayout* lay) {
  lay->dedup = false;
  lay->dsend_row_begin = lay->send_row_begin;
  lay->dsend_rows = lay->send_rows;
  lay->drecv_row_begin = lay->recv_row_begin;
  lay->drecv_rows = lay->recv_rows;
  lay->dsend_token.resize(lay->perm.pair_of_row.size());
  for (size_t r = 0; r < lay->dsend_token.size(); ++r) lay->dsend_token[r] = lay->perm.pair_of_row[r] / batch.top_k;
  lay->ret_rows = lay->a_rows;
  lay->send_buffer_rows = lay->perm.num_rows();
}

// Hosts for hierarchical dispatch: the ranks of each node in rank order, each rank's index among them, and the
// proxy of origin s on node b (the rank of b with s's local index modulo b's ranks: rail-aligned when every node
// has the same ranks).
struct NodeMap {
  std::vector<int> node;                  // [R]
  std::vector<std::vector<int>> members;  // [node id] -> ranks, ascending
  std::vector<int> local_index;           // [R]
  int max_members = 0;
  int Proxy(int s, int b) const {
    const std::vector<int>& m = members[b];
    return m[local_index[s] % static_cast<int>(m.size())];
  }
  bool Remote(int a, int b) const { return node[a] != node[b]; }
};

StatusOr<NodeMap> MakeNodeMap(const std::vector<int>& node_of_rank, int r_count) {
  WAVEEP_RETURN_IF_ERROR(internal::ValidateNodeOfRank(node_of_rank, r_count));
  NodeMap nm;
  nm.node = node_of_rank;
  nm.local_index.assign(r_count, 0);
  for (int r = 0; r < r_count; ++r) {
    const int b = node_of_rank[r];
    if (static_cast<int>(nm.members.size()) <= b) nm.members.resize(b + 1);
    nm.local_index[r] = static_cast<int>(nm.members[b].size());
    nm.members[b].push_back(r);
    nm.max_members = std::max(nm.max_members, static_cast<int>(nm.members[b].size()));
  }
  return nm;
}

// The hierarchical part of step 6 (see DispatchLayout): lays out the send buffer as exchange-1 blocks (one per
// remote node, to my proxy there: the distinct tokens any rank of that node needs in the wave) and exchange-2 blocks
// (to each rank of my node: my own rows for it, then the rows I forward for it from each remote origin whose proxy I
// am, origins ascending), and tells each proxy, per wave and per rank of its node, which of the exchange-1 rows make
// up that rank's block (its count and index exchange: two more collectives in the layout). The x1_* and fwd_*
// fields come zeroed / empty (BuildDispatchLayout).
// `btok[w * R + p]`: my dispatch rows for rank p in wave w (the per-rank deduplicated tokens, in order).
Status HierarchicalSendRows(comm::Communicator& comm, const NodeMap& nm, const std::vector<std::vector<int64_t>>& btok,
                            DispatchLayout* lay) {
  const int r_count = lay->num_ranks, w_count = lay->num_waves, me = lay->rank, mynode = nm.node[me];
  const int nmax = nm.max_members;
  const int64_t per_peer = static_cast<int64_t>(w_count) * (1 + nmax);
  lay->hierarchical = true;

  // Exchange-1 blocks: U(node b, wave w) = distinct tokens over the ranks q of b (ascending) of btok[w][q]; for each
  // row of each btok[w][q], its index in U.
  std::vector<std::vector<int64_t>> ublock(static_cast<size_t>(w_count) * r_count);  // [w * R + proxy]
  std::vector<int64_t> counts(static_cast<size_t>(r_count) * per_peer, 0);
  std::vector<std::vector<int32_t>> maps(r_count);  // [proxy]: w-major, q-major indices into U
  std::vector<int64_t> seen_at;                     // token -> index in the current U, or -1
  for (int b = 0; b < static_cast<int>(nm.members.size()); ++b) {
    if (b == mynode || nm.members[b].empty()) continue;
    const int x = nm.Proxy(me, b);
    for (int w = 0; w < w_count; ++w) {
      std::vector<int64_t>& u = ublock[static_cast<size_t>(w) * r_count + x];
      int64_t* c = counts.data() + static_cast<size_t>(x) * per_peer + static_cast<size_t>(w) * (1 + nmax);
      for (size_t i = 0; i < nm.members[b].size(); ++i) {
        const std::vector<int64_t>& rows = btok[static_cast<size_t>(w) * r_count + nm.members[b][i]];
        c[1 + i] = static_cast<int64_t>(rows.size());
        for (int64_t t : rows) {
          if (static_cast<int64_t>(seen_at.size()) <= t) seen_at.resize(t + 1, -1);
          if (seen_at[t] < 0) {
            seen_at[t] = static_cast<int64_t>(u.size());
            u.push_back(t);
          }
          maps[x].push_back(static_cast<int32_t>(seen_at[t]));
        }
      }
      c[0] = static_cast<int64_t>(u.size());
      for (int64_t t : u) seen_at[t] = -1;
    }
  }

  // Every proxy learns, from each origin it serves, the U sizes and the per-rank block sizes, then the indices.
  std::vector<int64_t> rcounts(counts.size(), 0);
  WAVEEP_RETURN_IF_ERROR(comm.AlltoallCounts(counts.data(), per_peer, rcounts.data()));
  auto rc = [&](int s, int w, int i) {  // i = 0: |U|; i = 1 + k: rows for the k-th rank of my node
    return rcounts[static_cast<size_t>(s) * per_peer + static_cast<size_t>(w) * (1 + nmax) + i];
  };
  std::vector<int64_t> map_begin(r_count + 1, 0);  // origin s's indices in `rmap`
  for (int s = 0; s < r_count; ++s) {
    int64_t n = 0;
    for (int w = 0; w < w_count; ++w) {
      for (int i = 0; i <= nmax; ++i) {
        if (rc(s, w, i) < 0) {
          return absl::InternalError(
              absl::StrCat("hierarchical dispatch count ", rc(s, w, i), " from rank ", s, " in wave ", w));
        }
        if (i > 0) n += rc(s, w, i);
      }
    }
    map_begin[s + 1] = map_begin[s] + n;
  }
  std::vector<int32_t> rmap(static_cast<size_t>(map_begin[r_count]));
  std::vector<int32_t> flat;
  comm::AlltoallvArgs a;
  for (int p = 0; p < r_count; ++p) {
    a.send_offsets.push_back(flat.size() * 4);
    a.send_bytes.push_back(maps[p].size() * 4);
    flat.insert(flat.end(), maps[p].begin(), maps[p].end());
    a.recv_offsets.push_back(static_cast<size_t>(map_begin[p]) * 4);
    a.recv_bytes.push_back(static_cast<size_t>(map_begin[p + 1] - map_begin[p]) * 4);
  }
  a.send = flat.data();
  a.recv = rmap.data();
  a.label = "alltoallv hierarchical dispatch forward indices";
  WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(a));

  // The origins I forward for: on other nodes, with me as their proxy on my node. Their exchange-1 rows land in the
  // forward buffer, wave-major, origin-ascending.
  std::vector<int> served;
  for (int s = 0; s < r_count; ++s)
    if (nm.Remote(s, me) && nm.Proxy(s, mynode) == me) served.push_back(s);
  int64_t fwd_rows = 0;
  for (int w = 0; w < w_count; ++w) {
    for (int s : served) {
      lay->x1_recv_row_begin[w * r_count + s] = fwd_rows;
      lay->x1_recv_rows[w * r_count + s] = rc(s, w, 0);
      fwd_rows += rc(s, w, 0);
    }
  }
  lay->forward_buffer_rows = fwd_rows;

  // The send buffer, wave-major: per peer, an exchange-2 block (same node) or an exchange-1 block (my proxy there).
  // A served origin's indices (w-major, then the ranks of my node in order) are consumed in that order: `next`.
  const size_t wr = static_cast<size_t>(w_count) * r_count;
  const int my_ranks = static_cast<int>(nm.members[mynode].size());
  std::vector<int64_t> next(map_begin.begin(), map_begin.end() - 1);
  lay->dsend_row_begin.assign(wr, 0);
  lay->dsend_rows.assign(wr, 0);
  lay->dsend_token.clear();
  for (int w = 0; w < w_count; ++w) {
    for (int s : served) {  // rows for ranks my node does not have: none, or the origin's node map differs
      for (int i = my_ranks; i < nmax; ++i) {
        if (rc(s, w, 1 + i) != 0) {
          return absl::InternalError(absl::StrCat("rank ", s, " sends rows in wave ", w, " for rank ", i,
                                                  " of a node of ", my_ranks, " (node maps differ?)"));
        }
      }
    }
    for (int p = 0; p < r_count; ++p) {
      const int64_t first = static_cast<int64_t>(lay->dsend_token.size());
      if (!nm.Remote(p, me)) {
        const std::vector<int64_t>& own = btok[static_cast<size_t>(w) * r_count + p];
        lay->dsend_token.insert(lay->dsend_token.end(), own.begin(), own.end());
        for (int s : served) {
          const int64_t n = rc(s, w, 1 + nm.local_index[p]), u = rc(s, w, 0);
          for (int64_t j = 0; j < n; ++j) {
            const int32_t idx = rmap[next[s]++];  // checked before it is used as a row number
            if (idx < 0 || idx >= u) {
              return absl::InternalError(
                  absl::StrCat("forward index ", idx, " from rank ", s, " in wave ", w, " is outside [0, ", u, ")"));
            }
            lay->fwd_to[w].push_back(static_cast<int64_t>(lay->dsend_token.size()));
            lay->fwd_from[w].push_back(lay->x1_recv_row_begin[w * r_count + s] + idx);
            lay->dsend_token.push_back(-1);
          }
        }
        lay->dsend_row_begin[w * r_count + p] = first;
        lay->dsend_rows[w * r_count + p] = static_cast<int64_t>(lay->dsend_token.size()) - first;
      } else if (nm.Proxy(me, nm.node[p]) == p) {
        const std::vector<int64_t>& u = ublock[static_cast<size_t>(w) * r_count + p];
        lay->dsend_token.insert(lay->dsend_token.end(), u.begin(), u.end());
        lay->x1_send_row_begin[w * r_count + p] = first;
        lay->x1_send_rows[w * r_count + p] = static_cast<int64_t>(u.size());
      }
    }
  }
  lay->send_buffer_rows = static_cast<int64_t>(lay->dsend_token.size());
  return absl::OkStatus();
}

// Step 6 with deduplication. Sender: in each (wave, peer) block of perm rows, the first row of a token becomes a
// dispatch row and every row of that token points at it (its index within the block). Those indices travel to the
// owners (4 bytes per pair); a receiver finds in them how many rows each origin sends in each wave and which
// received row feeds each of its GEMM rows. With `nm` (hierarchical), the rows for ranks of other nodes travel
// through the proxies (HierarchicalSendRows) and each receive buffer is ordered by the rank that delivers them.
Status DedupDispatchRows(comm::Communicator& comm, const Placement& placement, const TokenBatch& batch,
                         const NodeMap* nm, DispatchLayout* lay) {
  const int r_count = lay->num_ranks, w_count = lay->num_waves, l = lay->local_experts, me = lay->rank;
  const int k = batch.top_k;
  const int64_t pairs = lay->perm.num_rows();
  lay->dedup = true;
  lay->ret_rows = lay->a_rows;

  // Sender: btok[w * R + p] = my dispatch rows for p in wave w.
  std::vector<int32_t> index_of_row(static_cast<size_t>(pairs));
  std::vector<std::vector<int64_t>> btok(static_cast<size_t>(w_count) * r_count);
  std::vector<int64_t> block_of_token(static_cast<size_t>(batch.num_tokens), -1), slot(batch.num_tokens, 0);
  for (int p = 0; p < r_count; ++p) {
    for (int w = 0; w < w_count; ++w) {
      const int64_t block = static_cast<int64_t>(p) * w_count + w;
      const int64_t b = lay->send_row_begin[w * r_count + p], n = lay->send_rows[w * r_count + p];
      std::vector<int64_t>& rows = btok[static_cast<size_t>(w) * r_count + p];
      for (int64_t r = b; r < b + n; ++r) {
        const int64_t t = lay->perm.pair_of_row[r] / k;
        if (block_of_token[t] != block) {
          block_of_token[t] = block;
          slot[t] = static_cast<int64_t>(rows.size());
          rows.push_back(t);
        }
        index_of_row[r] = static_cast<int32_t>(slot[t]);
      }
    }
  }

  // The indices, each peer's pairs in perm order (all its waves), to their owners.
  // pair_off[s * (L + 1) + e]: first of source s's pairs for my local expert e in `index` (e = L: its end).
  std::vector<int64_t> pair_off(static_cast<size_t>(r_count) * (l + 1), 0);
  int64_t next = 0;
  for (int s = 0; s < r_count; ++s) {
    for (int e = 0; e <= l; ++e) {
      pair_off[static_cast<size_t>(s) * (l + 1) + e] = next;
      if (e < l) next += lay->recv_counts[static_cast<size_t>(s) * l + e];
    }
  }
  auto pair_begin = [&](int s, int e) { return pair_off[static_cast<size_t>(s) * (l + 1) + e]; };
  std::vector<int32_t> index(static_cast<size_t>(pair_begin(r_count - 1, l)));
  comm::AlltoallvArgs a;
  a.send = index_of_row.data();
  a.recv = index.data();
  a.label = "alltoallv dispatch row indices";
  for (int p = 0; p < r_count; ++p) {
    const int64_t b = lay->perm.expert_offsets[placement.FirstExpert(p)];
    const int64_t e = lay->perm.expert_offsets[placement.FirstExpert(p) + l];
    a.send_offsets.push_back(static_cast<size_t>(b) * 4);
    a.send_bytes.push_back(static_cast<size_t>(e - b) * 4);
    a.recv_offsets.push_back(static_cast<size_t>(pair_begin(p, 0)) * 4);
    a.recv_bytes.push_back(static_cast<size_t>(pair_begin(p, l) - pair_begin(p, 0)) * 4);
  }
  WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(a));

  // The send buffer: per (wave, peer) blocks, or the hierarchical exchange-1 / exchange-2 blocks.
  const size_t wr = static_cast<size_t>(w_count) * r_count;
  if (nm != nullptr) {
    WAVEEP_RETURN_IF_ERROR(HierarchicalSendRows(comm, *nm, btok, lay));
  } else {
    lay->dsend_row_begin.assign(wr, 0);
    lay->dsend_rows.assign(wr, 0);
    lay->dsend_token.clear();
    for (int p = 0; p < r_count; ++p) {
      for (int w = 0; w < w_count; ++w) {
        const std::vector<int64_t>& rows = btok[static_cast<size_t>(w) * r_count + p];
        lay->dsend_row_begin[w * r_count + p] = static_cast<int64_t>(lay->dsend_token.size());
        lay->dsend_rows[w * r_count + p] = static_cast<int64_t>(rows.size());
        lay->dsend_token.insert(lay->dsend_token.end(), rows.begin(), rows.end());
      }
    }
    lay->send_buffer_rows = static_cast<int64_t>(lay->dsend_token.size());
  }

  // Receiver. Rows of origin s in wave w: from its indices. Their place in wave w's receive buffer: origin-major
  // (rank order); hierarchical: by delivering rank (the ranks of my node, ascending), and within one, its own rows
  // then those of the origins it forwards, ascending.
  lay->drecv_row_begin.assign(wr, 0);
  lay->drecv_rows.assign(wr, 0);
  std::vector<int64_t> origin_begin(r_count, 0), origin_rows(r_count, 0);
  for (int w = 0; w < w_count; ++w) {
    const int eb = lay->wave_begin[me * (w_count + 1) + w], ee = lay->wave_begin[me * (w_count + 1) + w + 1];
    for (int s = 0; s < r_count; ++s) {
      const int64_t b = pair_begin(s, eb), e = pair_begin(s, ee);
      int64_t rows = 0;
      for (int64_t i = b; i < e; ++i) {
        if (index[i] < 0 || index[i] >= e - b) {
          return absl::InternalError(absl::StrCat("dispatch row index ", index[i], " from rank ", s, " in wave ", w,
                                                  " is outside [0, ", e - b, ")"));
        }
        rows = std::max<int64_t>(rows, index[i] + 1);
      }
      origin_rows[s] = rows;
    }
    int64_t off = 0;
    auto place = [&](int deliverer, int s) {
      origin_begin[s] = off;
      off += origin_rows[s];
      lay->drecv_rows[w * r_count + deliverer] += origin_rows[s];
    };
    for (int x = 0; x < r_count; ++x) {
      lay->drecv_row_begin[w * r_count + x] = off;
      if (nm == nullptr) {
        place(x, x);
        continue;
      }
      if (nm->Remote(x, me)) continue;
      place(x, x);
      for (int s = 0; s < r_count; ++s)
        if (nm->Remote(s, me) && nm->Proxy(s, nm->node[me]) == x) place(x, s);
    }
    // GEMM rows in the same order as ret_rows (local expert, then source, then token), read from the shared rows.
    std::vector<int64_t>& gemm_rows = lay->a_rows[w];
    gemm_rows.clear();
    for (int e = eb; e < ee; ++e) {
      for (int s = 0; s < r_count; ++s) {
        const int64_t b = pair_begin(s, e), n = lay->recv_counts[static_cast<size_t>(s) * l + e];
        for (int64_t i = b; i < b + n; ++i) gemm_rows.push_back(origin_begin[s] + index[i]);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<DispatchLayout> BuildDispatchLayout(comm::Communicator& comm, const Placement& placement,
                                             const TokenBatch& batch, int num_waves, bool dedup,
                                             const std::vector<int>* node_of_rank) {
  DispatchLayout lay;
  const int r_count = comm.size();
  const int l = placement.experts_per_rank();
  const int w_count = num_waves;
  lay.num_ranks = r_count;
  lay.rank = comm.rank();
  lay.local_experts = l;
  lay.num_waves = w_count;
  if (placement.num_ranks() != r_count) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement is for ", placement.num_ranks(), " ranks but the communicator has ", r_count));
  }

  // 1. Validate this rank's routing; every rank learns about any failure before anyone communicates rows.
  Status local = absl::OkStatus();
  if (static_cast<int64_t>(batch.topk_idx.size()) != batch.num_tokens * batch.top_k ||
      static_cast<int64_t>(batch.topk_weights.size()) != batch.num_tokens * batch.top_k ||
      static_cast<int64_t>(batch.x.size()) != batch.num_tokens * batch.hidden) {
    local = absl::InvalidArgumentError(absl::StrCat("token batch sizes are inconsistent: T=", batch.num_tokens,
                                                    " K=", batch.top_k, " H=", batch.hidden));
  } else {
    local = kernels::BuildExpertPermutation(batch.topk_idx.data(), batch.num_tokens, batch.top_k,
                                            placement.num_experts(), &lay.perm);
    if (!local.ok()) local = Annotate(local, absl::StrCat("routing of global tokens ", batch.first_token, ".."));
  }
  if (w_count < 1 || w_count > l) {
    local = absl::InvalidArgumentError(absl::StrCat("--waves=", w_count, " must be in [1, ", l, "] (local experts)"));
  }
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(comm, local));

  // 2. Counts per (destination rank, its local expert) == per global expert under contiguous placement.
  std::vector<int64_t> send_counts(static_cast<size_t>(r_count) * l);
  for (int e = 0; e < placement.num_experts(); ++e)
    send_counts[e] = lay.perm.expert_offsets[e + 1] - lay.perm.expert_offsets[e];
  lay.recv_counts.assign(send_counts.size(), 0);
  WAVEEP_RETURN_IF_ERROR(comm.AlltoallCounts(send_counts.data(), l, lay.recv_counts.data()));

  // 3. My waves, balanced by the rows I will compute; everyone learns everyone's boundaries.
  std::vector<int64_t> rows(l, 0);
  for (int s = 0; s < r_count; ++s)
    for (int e = 0; e < l; ++e) rows[e] += lay.recv_counts[static_cast<size_t>(s) * l + e];
  WAVEEP_ASSIGN_OR_RETURN(std::vector<int> mine, PartitionWaves(rows, w_count));
  std::vector<int32_t> mine32(mine.begin(), mine.end()), all32(static_cast<size_t>(r_count) * (w_count + 1));
  WAVEEP_RETURN_IF_ERROR(comm.Allgather(mine32.data(), mine32.size() * sizeof(int32_t), all32.data()));
  lay.wave_begin.assign(all32.begin(), all32.end());

  // 4. Sender side: wave w to peer p = p's experts [begin, end) of that wave, contiguous in perm order.
  lay.send_row_begin.assign(static_cast<size_t>(w_count) * r_count, 0);
  lay.send_rows.assign(static_cast<size_t>(w_count) * r_count, 0);
  for (int w = 0; w < w_count; ++w) {
    for (int p = 0; p < r_count; ++p) {
      const int gb = placement.FirstExpert(p) + lay.wave_begin[p * (w_count + 1) + w];
      const int ge = placement.FirstExpert(p) + lay.wave_begin[p * (w_count + 1) + w + 1];
      lay.send_row_begin[w * r_count + p] = lay.perm.expert_offsets[gb];
      lay.send_rows[w * r_count + p] = lay.perm.expert_offsets[ge] - lay.perm.expert_offsets[gb];
    }
  }

  // 5. Receiver side: wave w's buffer is source-major; within a source block rows are expert-major (the sender's
  //    perm order). The GEMM wants expert-major, then source, then token: a_rows maps one to the other.
  lay.recv_row_begin.assign(static_cast<size_t>(w_count) * r_count, 0);
  lay.recv_rows.assign(static_cast<size_t>(w_count) * r_count, 0);
  lay.wave_recv_total.assign(w_count, 0);
  lay.a_rows.resize(w_count);
  lay.a_expert_offsets.resize(w_count);
  const int me = comm.rank();
  for (int w = 0; w < w_count; ++w) {
    const int eb = lay.wave_begin[me * (w_count + 1) + w], ee = lay.wave_begin[me * (w_count + 1) + w + 1];
    int64_t off = 0;
    for (int s = 0; s < r_count; ++s) {
      int64_t n = 0;
      for (int e = eb; e < ee; ++e) n += lay.recv_counts[static_cast<size_t>(s) * l + e];
      lay.recv_row_begin[w * r_count + s] = off;
      lay.recv_rows[w * r_count + s] = n;
      off += n;
    }
    lay.wave_recv_total[w] = off;
    lay.total_recv_rows += off;
    std::vector<int64_t>& a = lay.a_rows[w];
    std::vector<int64_t>& aoff = lay.a_expert_offsets[w];
    a.reserve(off);
    aoff.assign(1, 0);
    // Cursor per source: next row of that source's block (blocks are expert-major, so walking experts in order
    // consumes each block front to back).
    std::vector<int64_t> cursor(r_count);
    for (int s = 0; s < r_count; ++s) cursor[s] = lay.recv_row_begin[w * r_count + s];
    for (int e = eb; e < ee; ++e) {
      for (int s = 0; s < r_count; ++s) {
        const int64_t n = lay.recv_counts[static_cast<size_t>(s) * l + e];
        for (int64_t i = 0; i < n; ++i) a.push_back(cursor[s]++);
      }
      aoff.push_back(static_cast<int64_t>(a.size()));
    }
  }

  // 6. Dispatch rows: one per pair, or one per (token, destination rank) in each wave, travelling through one proxy
  //    per destination node when the ranks span several nodes and `node_of_rank` is given.
  lay.x1_send_row_begin.assign(static_cast<size_t>(w_count) * r_count, 0);
  lay.x1_send_rows = lay.x1_send_row_begin;
  lay.x1_recv_row_begin = lay.x1_send_row_begin;
  lay.x1_recv_rows = lay.x1_send_row_begin;
  lay.fwd_from.assign(w_count, {});
  lay.fwd_to.assign(w_count, {});
  if (dedup) {
    std::optional<NodeMap> nm;
    if (node_of_rank != nullptr) {
      WAVEEP_ASSIGN_OR_RETURN(nm, MakeNodeMap(*node_of_rank, r_count));
      if (internal::CountNodes(*node_of_rank) < 2) nm.reset();
    }
    WAVEEP_RETURN_IF_ERROR(DedupDispatchRows(comm, placement, batch, nm ? &*nm : nullptr, &lay));
  } else {
    PairDispatchRows(batch, &lay);
  }
  return lay;
}

}  // namespace waveep::ep
