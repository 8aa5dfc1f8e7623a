// Copyright 2026 The waveep Authors.
//
// Dispatch layout: per-step metadata exchange (counts, wave boundaries) and the deterministic buffer orders.
#include <algorithm>
#include <cstring>
#include <numeric>

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
}

// Step 6 with deduplication. Sender: in each (wave, peer) block of perm rows, the first row of a token becomes a
// dispatch row and every row of that token points at it (its index within the block). Those indices travel to the
// owners (4 bytes per pair); a receiver finds in them how many rows each source sends in each wave and which
// received row feeds each of its GEMM rows.
Status DedupDispatchRows(comm::Communicator& comm, const Placement& placement, const TokenBatch& batch,
                         DispatchLayout* lay) {
  const int r_count = lay->num_ranks, w_count = lay->num_waves, l = lay->local_experts, me = lay->rank;
  const int k = batch.top_k;
  const int64_t pairs = lay->perm.num_rows();
  lay->dedup = true;
  lay->ret_rows = lay->a_rows;

  // Sender.
  std::vector<int32_t> index_of_row(static_cast<size_t>(pairs));
  std::vector<int64_t> block_of_token(static_cast<size_t>(batch.num_tokens), -1), slot(batch.num_tokens, 0);
  lay->dsend_row_begin.assign(static_cast<size_t>(w_count) * r_count, 0);
  lay->dsend_rows.assign(static_cast<size_t>(w_count) * r_count, 0);
  lay->dsend_token.clear();
  lay->dsend_token.reserve(static_cast<size_t>(pairs));
  for (int p = 0; p < r_count; ++p) {
    for (int w = 0; w < w_count; ++w) {
      const int64_t block = static_cast<int64_t>(p) * w_count + w;
      const int64_t b = lay->send_row_begin[w * r_count + p], n = lay->send_rows[w * r_count + p];
      const int64_t first = static_cast<int64_t>(lay->dsend_token.size());
      for (int64_t r = b; r < b + n; ++r) {
        const int64_t t = lay->perm.pair_of_row[r] / k;
        if (block_of_token[t] != block) {
          block_of_token[t] = block;
          slot[t] = static_cast<int64_t>(lay->dsend_token.size()) - first;
          lay->dsend_token.push_back(t);
        }
        index_of_row[r] = static_cast<int32_t>(slot[t]);
      }
      lay->dsend_row_begin[w * r_count + p] = first;
      lay->dsend_rows[w * r_count + p] = static_cast<int64_t>(lay->dsend_token.size()) - first;
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

  // Receiver.
  lay->drecv_row_begin.assign(static_cast<size_t>(w_count) * r_count, 0);
  lay->drecv_rows.assign(static_cast<size_t>(w_count) * r_count, 0);
  for (int w = 0; w < w_count; ++w) {
    const int eb = lay->wave_begin[me * (w_count + 1) + w], ee = lay->wave_begin[me * (w_count + 1) + w + 1];
    int64_t off = 0;
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
      lay->drecv_row_begin[w * r_count + s] = off;
      lay->drecv_rows[w * r_count + s] = rows;
      off += rows;
    }
    // GEMM rows in the same order as ret_rows (local expert, then source, then token), read from the shared rows.
    std::vector<int64_t>& gemm_rows = lay->a_rows[w];
    gemm_rows.clear();
    for (int e = eb; e < ee; ++e) {
      for (int s = 0; s < r_count; ++s) {
        const int64_t b = pair_begin(s, e), n = lay->recv_counts[static_cast<size_t>(s) * l + e];
        for (int64_t i = b; i < b + n; ++i) gemm_rows.push_back(lay->drecv_row_begin[w * r_count + s] + index[i]);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<DispatchLayout> BuildDispatchLayout(comm::Communicator& comm, const Placement& placement,
                                             const TokenBatch& batch, int num_waves, bool dedup) {
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

  // 6. Dispatch rows: one per pair, or one per (token, destination rank) in each wave.
  if (dedup) {
    WAVEEP_RETURN_IF_ERROR(DedupDispatchRows(comm, placement, batch, &lay));
  } else {
    PairDispatchRows(batch, &lay);
  }
  return lay;
}

}  // namespace waveep::ep
