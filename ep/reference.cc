// Copyright 2026 The waveep Authors.
//
// The dense reference used by --verify. Deliberately shares nothing with the fast path but the weight generator:
// no permutation, no communication, no BLAS, and its own FP8 rounding (nearest of the 256 codes, by search).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ep/ep.h"
#include "runtime/mpi_context.h"

namespace waveep::ep {
namespace {

// All finite non-negative e4m3fn values, ascending (codes 0x00..0x7E).
const std::vector<float>& E4m3Values() {
  static const std::vector<float> v = [] {
    std::vector<float> out;
    for (int code = 0; code <= 0x7E; ++code) {
      int e = (code >> 3) & 0xF, mant = code & 7;
      out.push_back(e == 0 ? std::ldexp(static_cast<float>(mant), -9)
                           : std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, e - 7));
    }
    return out;
  }();
  return v;
}

// Nearest e4m3 value by search; ties go to the even code (even mantissa), saturating at 448.
float RoundE4m3BySearch(float x) {
  const std::vector<float>& v = E4m3Values();
  float a = std::fabs(x);
  if (a >= v.back()) return std::copysign(v.back(), x);
  auto it = std::lower_bound(v.begin(), v.end(), a);
  size_t hi = static_cast<size_t>(it - v.begin());
  if (hi == 0 || v[hi] == a) return std::copysign(v[hi], x);
  size_t lo = hi - 1;
  double dl = a - v[lo], dh = v[hi] - a;
  size_t pick = dl < dh ? lo : (dh < dl ? hi : (lo % 2 == 0 ? lo : hi));
  return std::copysign(v[pick], x);
}

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

// y = W2 (silu(W1 x) * (W3 x)), plain loops, double accumulation.
void ExpertForward(const float* w13, const float* w2, int64_t h, int64_t inter, const float* x, std::vector<float>* y,
                   std::vector<float>* act) {
  act->assign(static_cast<size_t>(inter), 0.0f);
  for (int64_t r = 0; r < inter; ++r) {
    double g = 0, u = 0;
    const float* wg = w13 + r * h;
    const float* wu = w13 + (inter + r) * h;
    for (int64_t c = 0; c < h; ++c) {
      g += static_cast<double>(wg[c]) * x[c];
      u += static_cast<double>(wu[c]) * x[c];
    }
    (*act)[r] = Silu(static_cast<float>(g)) * static_cast<float>(u);
  }
  y->assign(static_cast<size_t>(h), 0.0f);
  for (int64_t r = 0; r < h; ++r) {
    double s = 0;
    const float* wd = w2 + r * inter;
    for (int64_t c = 0; c < inter; ++c) s += static_cast<double>(wd[c]) * (*act)[c];
    (*y)[r] = static_cast<float>(s);
  }
}

double Norm(const float* v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(v[i]) * v[i];
  return std::sqrt(s);
}

}  // namespace

StatusOr<VerifyResult> VerifyAgainstReference(const LayerConfig& cfg, const WeightSource& weights,
                                              const TokenBatch& batch, const float* out) {
  const ModelConfig& m = cfg.model;
  const int64_t h = m.hidden_size, inter = m.moe_intermediate_size, t_count = batch.num_tokens;
  const int k = m.top_k;
  // Inputs as the experts see them: BF16 is exact for x (x is BF16-representable); FP8 rounds through e4m3 with
  // per-block scales amax / 448.
  std::vector<float> xin = batch.x;
  if (cfg.dispatch_dtype == DType::kFP8E4M3) {
    const int block = m.fp8_block_size;
    for (int64_t t = 0; t < t_count; ++t) {
      for (int64_t b = 0; b < h; b += block) {
        float* xb = xin.data() + t * h + b;
        float amax = 0;
        for (int i = 0; i < block; ++i) amax = std::max(amax, std::fabs(xb[i]));
        float scale = amax > 0 ? amax / 448.0f : 1.0f;
        for (int i = 0; i < block; ++i) xb[i] = RoundE4m3BySearch(xb[i] / scale) * scale;
      }
    }
  }
  // Per (token, slot) expert outputs; experts are regenerated one at a time to bound memory.
  std::vector<float> ys(static_cast<size_t>(t_count * k * h), 0.0f);
  std::vector<float> w13(static_cast<size_t>(2 * inter * h)), w2(static_cast<size_t>(h * inter));
  std::vector<float> y, act;
  std::vector<char> used(m.num_experts, 0);
  for (int64_t i = 0; i < t_count * k; ++i) {
    int e = batch.topk_idx[i];
    if (e < 0 || e >= m.num_experts)
      return absl::InvalidArgumentError(absl::StrCat("reference: token ", batch.first_token + i / k, " slot ", i % k,
                                                     " routes to expert ", e, " outside [0, ", m.num_experts, ")"));
    used[e] = 1;
  }
  for (int e = 0; e < m.num_experts; ++e) {
    if (!used[e]) continue;
    WAVEEP_RETURN_IF_ERROR(weights.LoadExpert(e, w13.data(), w2.data()));
    for (int64_t t = 0; t < t_count; ++t) {
      for (int s = 0; s < k; ++s) {
        if (batch.topk_idx[t * k + s] != e) continue;
        ExpertForward(w13.data(), w2.data(), h, inter, xin.data() + t * h, &y, &act);
        std::copy(y.begin(), y.end(), ys.begin() + (t * k + s) * h);
      }
    }
  }
  std::vector<float> shared(static_cast<size_t>(t_count * h), 0.0f);
  if (cfg.shared_experts && m.num_shared_experts > 0) {
    const int64_t si = inter * m.num_shared_experts;
    std::vector<float> s13(static_cast<size_t>(2 * si * h)), s2(static_cast<size_t>(h * si));
    WAVEEP_RETURN_IF_ERROR(weights.LoadShared(s13.data(), s2.data()));
    for (int64_t t = 0; t < t_count; ++t) {  // the shared expert sees the unquantized input
      ExpertForward(s13.data(), s2.data(), h, si, batch.x.data() + t * h, &y, &act);
      std::copy(y.begin(), y.end(), shared.begin() + t * h);
    }
  }
  VerifyResult r;
  r.tolerance = std::ldexp(1.0, -8);
  std::vector<double> ref(static_cast<size_t>(h));
  for (int64_t t = 0; t < t_count; ++t) {
    double scale = Norm(shared.data() + t * h, h);
    for (int64_t c = 0; c < h; ++c) ref[c] = shared[t * h + c];
    for (int s = 0; s < k; ++s) {
      const float w = batch.topk_weights[t * k + s];
      const float* yk = ys.data() + (t * k + s) * h;
      scale += std::fabs(w) * Norm(yk, h);
      for (int64_t c = 0; c < h; ++c) ref[c] += static_cast<double>(w) * yk[c];
    }
    double err = 0, rn = 0;
    for (int64_t c = 0; c < h; ++c) {
      double d = out[t * h + c] - ref[c];
      if (!std::isfinite(out[t * h + c])) d = std::numeric_limits<double>::infinity();
      err += d * d;
      rn += ref[c] * ref[c];
    }
    err = std::sqrt(err);
    rn = std::sqrt(rn);
    const double rel = rn > 0 ? err / rn : err;
    const double norm_err = scale > 0 ? err / scale : err;
    r.max_rel_l2 = std::max(r.max_rel_l2, rel);
    if (norm_err > r.max_normalized || r.worst_token < 0) {
      r.max_normalized = std::max(r.max_normalized, norm_err);
      r.worst_token = batch.first_token + t;
    }
  }
  r.passed = r.max_normalized <= r.tolerance;
  return r;
}

StatusOr<uint64_t> GlobalChecksum(const ProcessContext& ctx, const float* out, int64_t num_floats) {
  // FNV-1a is sequential, so the running state travels rank 0 -> 1 -> ... -> R-1; then R-1 broadcasts.
  unsigned long long h = 0xcbf29ce484222325ull;
  if (ctx.world_rank > 0)
    WAVEEP_MPI_RETURN_IF_ERROR(
        MPI_Recv(&h, 1, MPI_UNSIGNED_LONG_LONG, ctx.world_rank - 1, 77, WorldComm(ctx), MPI_STATUS_IGNORE));
  h = Fnv1a64(out, static_cast<size_t>(num_floats) * sizeof(float), h);
  if (ctx.world_rank + 1 < ctx.world_size)
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Send(&h, 1, MPI_UNSIGNED_LONG_LONG, ctx.world_rank + 1, 77, WorldComm(ctx)));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Bcast(&h, 1, MPI_UNSIGNED_LONG_LONG, ctx.world_size - 1, WorldComm(ctx)));
  return static_cast<uint64_t>(h);
}

}  // namespace waveep::ep
