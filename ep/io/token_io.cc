// Copyright 2026 The waveep Authors.
//
// `--input` / `--output` token files: each rank reads its own rows of the input; outputs are gathered to rank 0 in
// global token order and written as one safetensors file.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "ep/io/io.h"
#include "runtime/mpi_context.h"

namespace waveep::ep {
namespace {

// Rows per point-to-point message when gathering: keeps every MPI count far below INT_MAX.
constexpr int64_t kMaxMessageBytes = int64_t{1} << 28;
constexpr int kTagOut = 0x5751, kTagIdx = 0x5752, kTagW = 0x5753;

Status SendChunked(const void* data, int64_t bytes, int dest, int tag, MPI_Comm comm) {
  const char* p = static_cast<const char*>(data);
  for (int64_t off = 0; off < bytes; off += kMaxMessageBytes) {
    const int n = static_cast<int>(std::min(kMaxMessageBytes, bytes - off));
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Send(p + off, n, MPI_BYTE, dest, tag, comm));
  }
  return absl::OkStatus();
}

Status RecvChunked(void* data, int64_t bytes, int src, int tag, MPI_Comm comm) {
  char* p = static_cast<char*>(data);
  for (int64_t off = 0; off < bytes; off += kMaxMessageBytes) {
    const int n = static_cast<int>(std::min(kMaxMessageBytes, bytes - off));
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Recv(p + off, n, MPI_BYTE, src, tag, comm, MPI_STATUS_IGNORE));
  }
  return absl::OkStatus();
}

}  // namespace

std::pair<int64_t, int64_t> TokenRangeOfRank(int64_t num_tokens, int rank, int num_ranks) {
  const int64_t base = num_tokens / num_ranks, extra = num_tokens % num_ranks;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

StatusOr<TokenInput> ReadTokenFile(const std::string& path, const ModelConfig& model, int rank, int num_ranks) {
  if (num_ranks <= 0 || rank < 0 || rank >= num_ranks)
    return absl::InvalidArgumentError(absl::StrCat("ReadTokenFile: rank ", rank, " of ", num_ranks));
  WAVEEP_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(path));
  const int64_t h = model.hidden_size;
  const int k = model.top_k;
  auto bad = [&path](absl::string_view tensor, auto&&... msg) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", tensor, "': ", msg...));
  };
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsTensor* hs, f->Get("hidden_states"));
  if (hs->shape.size() != 2 || hs->shape[1] != h) {
    return bad("hidden_states", "shape ", ShapeToString(hs->shape), " does not match [T, H=", h, "] of model ",
               model.name);
  }
  if (hs->dtype != DType::kF32 && hs->dtype != DType::kBF16 && hs->dtype != DType::kF16)
    return bad("hidden_states", "dtype ", hs->dtype_name, " is not F32, BF16 or F16");
  const int64_t t_total = hs->shape[0];
  const auto [begin, end] = TokenRangeOfRank(t_total, rank, num_ranks);
  TokenInput in;
  in.total_tokens = t_total;
  TokenBatch& b = in.batch;
  b.first_token = begin;
  b.num_tokens = end - begin;
  b.hidden = h;
  b.top_k = k;
  b.x.resize(static_cast<size_t>(b.num_tokens * h));
  WAVEEP_RETURN_IF_ERROR(f->ReadRowsF32("hidden_states", hs->shape, begin, end, b.x.data()));
  for (int64_t i = 0; i < b.num_tokens * h; ++i) {
    // Checked after rounding: F32 values beyond the BF16 range (|x| >= ~3.396e38) are finite but become inf.
    b.x[i] = kernels::Bf16ToFloat(kernels::FloatToBf16(b.x[i]));
    if (!std::isfinite(b.x[i]))
      return bad("hidden_states", "token ", begin + i / h, " has a non-finite value at column ", i % h);
  }
  b.topk_idx.assign(static_cast<size_t>(b.num_tokens * k), 0);
  b.topk_weights.assign(static_cast<size_t>(b.num_tokens * k), 0.0f);
  const bool has_idx = f->Find("topk_idx") != nullptr, has_w = f->Find("topk_weights") != nullptr;
  if (has_idx != has_w) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": has '", has_idx ? "topk_idx" : "topk_weights",
                                                   "' without '", has_idx ? "topk_weights" : "topk_idx",
                                                   "': give both (the routing) or neither (the router computes it)"));
  }
  if (has_idx) {
    const std::vector<int64_t> shape = {t_total, k};
    for (const char* name : {"topk_idx", "topk_weights"}) {
      const SafetensorsTensor* t = f->Find(name);
      if (t->shape != shape) {
        return bad(name, "shape ", ShapeToString(t->shape), " does not match [T=", t_total, ", K=", k,
                   "] (num_experts_per_tok of model ", model.name, ")");
      }
    }
    WAVEEP_RETURN_IF_ERROR(f->ReadRowsI32("topk_idx", shape, begin, end, b.topk_idx.data()));
    const SafetensorsTensor* wt = f->Find("topk_weights");
    if (wt->dtype != DType::kF32 && wt->dtype != DType::kBF16 && wt->dtype != DType::kF16)
      return bad("topk_weights", "dtype ", wt->dtype_name, " is not F32 (or BF16 / F16)");
    WAVEEP_RETURN_IF_ERROR(f->ReadRowsF32("topk_weights", shape, begin, end, b.topk_weights.data()));
    for (int64_t i = 0; i < b.num_tokens * k; ++i) {
      const int32_t e = b.topk_idx[i];
      if (e < 0 || e >= model.num_experts) {
        return bad("topk_idx", "token ", begin + i / k, " slot ", i % k, " routes to expert ", e, " outside [0, ",
                   model.num_experts, ")");
      }
      if (!std::isfinite(b.topk_weights[i]))
        return bad("topk_weights", "token ", begin + i / k, " slot ", i % k, " is ", b.topk_weights[i]);
    }
    in.has_routing = true;
  }
  return in;
}

Status WriteTokenOutputs(const ProcessContext& ctx, const std::string& path, const TokenBatch& batch, const float* out,
                         const std::map<std::string, std::string>& metadata) {
  const int r_count = ctx.world_size, me = ctx.world_rank;
  // Everyone sends (first_token, num_tokens, hidden, top_k); rank 0 checks the ranges are consecutive and the shapes
  // agree, then broadcasts go / no-go so no rank waits on a transfer that will not come.
  long long meta[4] = {batch.first_token, batch.num_tokens, batch.hidden, batch.top_k};
  std::vector<long long> all(static_cast<size_t>(4 * r_count));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Gather(meta, 4, MPI_LONG_LONG, all.data(), 4, MPI_LONG_LONG, 0, WorldComm(ctx)));
  Status layout = absl::OkStatus();
  int64_t total = 0;
  if (me == 0) {
    for (int r = 0; r < r_count && layout.ok(); ++r) {
      const long long* m = all.data() + 4 * r;
      if (m[0] != total || m[2] != meta[2] || m[3] != meta[3]) {
        layout = absl::InvalidArgumentError(absl::StrCat("writing ", path, ": rank ", r, " holds tokens [", m[0], ", ",
                                                         m[0] + m[1], ") with H=", m[2], " K=", m[3],
                                                         "; expected tokens from ", total, " with H=", meta[2],
                                                         " K=", meta[3], " (consecutive ranges in rank order)"));
      }
      total += m[1];
    }
  }
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, layout));
  const int64_t h = batch.hidden, k = batch.top_k;
  Status written = absl::OkStatus();
  if (me != 0) {
    WAVEEP_RETURN_IF_ERROR(SendChunked(out, batch.num_tokens * h * 4, 0, kTagOut, WorldComm(ctx)));
    WAVEEP_RETURN_IF_ERROR(SendChunked(batch.topk_idx.data(), batch.num_tokens * k * 4, 0, kTagIdx, WorldComm(ctx)));
    WAVEEP_RETURN_IF_ERROR(SendChunked(batch.topk_weights.data(), batch.num_tokens * k * 4, 0, kTagW, WorldComm(ctx)));
  } else {
    std::vector<float> o(static_cast<size_t>(total * h)), w(static_cast<size_t>(total * k));
    std::vector<int32_t> idx(static_cast<size_t>(total * k));
    std::memcpy(o.data(), out, static_cast<size_t>(batch.num_tokens * h) * 4);
    std::memcpy(idx.data(), batch.topk_idx.data(), static_cast<size_t>(batch.num_tokens * k) * 4);
    std::memcpy(w.data(), batch.topk_weights.data(), static_cast<size_t>(batch.num_tokens * k) * 4);
    for (int r = 1; r < r_count; ++r) {
      const int64_t first = all[4 * r], n = all[4 * r + 1];
      WAVEEP_RETURN_IF_ERROR(RecvChunked(o.data() + first * h, n * h * 4, r, kTagOut, WorldComm(ctx)));
      WAVEEP_RETURN_IF_ERROR(RecvChunked(idx.data() + first * k, n * k * 4, r, kTagIdx, WorldComm(ctx)));
      WAVEEP_RETURN_IF_ERROR(RecvChunked(w.data() + first * k, n * k * 4, r, kTagW, WorldComm(ctx)));
    }
    written = WriteSafetensors(path,
                               {{"output", DType::kF32, {total, h}, o.data()},
                                {"topk_idx", DType::kI32, {total, k}, idx.data()},
                                {"topk_weights", DType::kF32, {total, k}, w.data()}},
                               metadata);
  }
  return AgreeOnStatus(ctx, written);
}

}  // namespace waveep::ep
