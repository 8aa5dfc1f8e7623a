// Copyright 2026 The waveep Authors.
//
// Placement, synthetic token batches and synthetic weights. Everything is a pure function of (seed, global id), so
// every rank — and the single-process dense reference — regenerates identical values without communication.
#include <algorithm>
#include <cmath>
#include <thread>

#include "absl/strings/ascii.h"
#include "ep/ep.h"

namespace waveep::ep {
namespace {

float RoundBf16(float x) { return kernels::Bf16ToFloat(kernels::FloatToBf16(x)); }

// K distinct experts uniformly from [lo, hi) for token `token`, written to idx.
void DistinctUniform(uint64_t seed, int64_t token, int lo, int hi, int k, int32_t* idx, int already) {
  uint64_t attempt = 0;
  for (int slot = already; slot < k; ++slot) {
    for (;;) {
      int e =
          lo + static_cast<int>(UniformInt(seed, RngStream::kRouting, (static_cast<uint64_t>(token) << 20) + attempt++,
                                           static_cast<uint64_t>(hi - lo)));
      if (std::find(idx, idx + slot, e) == idx + slot) {
        idx[slot] = e;
        break;
      }
    }
  }
}

// Fills [begin, end) of `out` with U(-1,1) * scale rounded to BF16, in parallel for large tensors.
void FillUniformBf16(uint64_t seed, RngStream stream, uint64_t base, int64_t n, float scale, float* out) {
  auto work = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = RoundBf16(UniformSym(seed, stream, base + i) * scale);
  };
  int threads = n > (1 << 22) ? static_cast<int>(std::min(8u, std::max(1u, std::thread::hardware_concurrency()))) : 1;
  if (threads == 1) {
    work(0, n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t chunk = (n + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    int64_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back(work, b, e);
  }
  for (auto& th : pool) th.join();
}

class SyntheticWeights final : public WeightSource {
 public:
  SyntheticWeights(const ModelConfig& m, uint64_t seed) : m_(m), seed_(seed) {}

  Status LoadExpert(int expert, float* w13, float* w2) const override {
    if (expert < 0 || expert >= m_.num_experts)
      return absl::InvalidArgumentError(absl::StrCat("expert ", expert, " out of range [0, ", m_.num_experts, ")"));
    Fill(static_cast<uint64_t>(expert), m_.moe_intermediate_size, w13, w2);
    return absl::OkStatus();
  }
  Status LoadShared(float* w13, float* w2) const override {
    if (m_.num_shared_experts == 0) return absl::FailedPreconditionError("model has no shared experts");
    // Shared experts use ids after the routed ones.
    Fill(static_cast<uint64_t>(m_.num_experts), m_.moe_intermediate_size * m_.num_shared_experts, w13, w2);
    return absl::OkStatus();
  }

 private:
  void Fill(uint64_t id, int64_t inter, float* w13, float* w2) const {
    const int64_t h = m_.hidden_size;
    const uint64_t stride = static_cast<uint64_t>(inter) * h;  // elements of one [I, H] matrix
    // Indices per (id, matrix) are disjoint because ids are multiplied by the largest matrix size (2^40 > any model).
    const uint64_t base = id << 40;
    FillUniformBf16(seed_, RngStream::kW1, base, static_cast<int64_t>(stride), 1.0f / std::sqrt(float(h)), w13);
    FillUniformBf16(seed_, RngStream::kW3, base, static_cast<int64_t>(stride), 1.0f / std::sqrt(float(h)),
                    w13 + stride);
    FillUniformBf16(seed_, RngStream::kW2, base, static_cast<int64_t>(stride), 1.0f / std::sqrt(float(inter)), w2);
  }
  ModelConfig m_;
  uint64_t seed_;
};

}  // namespace

StatusOr<Placement> Placement::Contiguous(int num_experts, int num_ranks) {
  if (num_ranks <= 0) return absl::InvalidArgumentError(absl::StrCat("number of ranks must be > 0, got ", num_ranks));
  if (num_experts <= 0 || num_experts % num_ranks != 0) {
    return absl::InvalidArgumentError(absl::StrCat("experts (n_routed_experts=", num_experts,
                                                   ") are not divisible by ranks (", num_ranks,
                                                   "): contiguous placement needs E % R == 0"));
  }
  Placement p;
  p.num_experts_ = num_experts;
  p.num_ranks_ = num_ranks;
  return p;
}

StatusOr<RoutingMode> ParseRoutingMode(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "gate") return RoutingMode::kGate;
  if (n == "uniform") return RoutingMode::kUniform;
  if (n == "skewed" || n == "skew") return RoutingMode::kSkewed;
  return absl::InvalidArgumentError(absl::StrCat("unknown routing '", name, "' (expected gate, uniform or skewed)"));
}

absl::string_view RoutingModeName(RoutingMode m) {
  switch (m) {
    case RoutingMode::kGate:
      return "gate";
    case RoutingMode::kUniform:
      return "uniform";
    case RoutingMode::kSkewed:
      return "skewed";
  }
  return "?";
}

StatusOr<TokenBatch> MakeSyntheticBatch(const ModelConfig& model, RoutingMode mode, uint64_t seed, int64_t first_token,
                                        int64_t num_tokens) {
  if (num_tokens < 0) return absl::InvalidArgumentError(absl::StrCat("tokens must be >= 0, got ", num_tokens));
  WAVEEP_RETURN_IF_ERROR(ValidateModelConfig(model));
  const int64_t h = model.hidden_size;
  const int k = model.top_k, e_count = model.num_experts;
  TokenBatch b;
  b.first_token = first_token;
  b.num_tokens = num_tokens;
  b.hidden = h;
  b.top_k = k;
  b.x.resize(static_cast<size_t>(num_tokens * h));
  b.topk_idx.assign(static_cast<size_t>(num_tokens * k), 0);
  b.topk_weights.assign(static_cast<size_t>(num_tokens * k), 0.0f);
  FillUniformBf16(seed, RngStream::kHidden, static_cast<uint64_t>(first_token * h), num_tokens * h, 1.0f, b.x.data());

  if (mode == RoutingMode::kGate) {
    std::vector<float> logits(static_cast<size_t>(num_tokens * e_count));
    for (int64_t i = 0; i < num_tokens * e_count; ++i)
      logits[i] = 2.0f * UniformSym(seed, RngStream::kLogits, static_cast<uint64_t>(first_token * e_count + i));
    std::vector<float> bias;
    if (model.scoring == Scoring::kSigmoid) {  // like DeepSeek's e_score_correction_bias: selection only
      bias.resize(e_count);
      for (int e = 0; e < e_count; ++e) bias[e] = 0.05f * UniformSym(seed, RngStream::kLogits, (1ull << 62) + e);
    }
    WAVEEP_RETURN_IF_ERROR(kernels::TopkGating(logits.data(), bias.empty() ? nullptr : bias.data(), num_tokens,
                                               kernels::GateParamsFrom(model), b.topk_idx.data(),
                                               b.topk_weights.data()));
    return b;
  }
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t g = first_token + t;
    int32_t* idx = &b.topk_idx[t * k];
    if (mode == RoutingMode::kUniform) {
      DistinctUniform(seed, g, 0, e_count, k, idx, 0);
    } else {  // skewed: even global tokens put slot 0 on expert 0; only the lower half of experts is ever used
      int hi = std::max(k + 1, e_count / 2);
      hi = std::min(hi, e_count);
      int already = 0;
      if (g % 2 == 0) idx[already++] = 0;
      DistinctUniform(seed, g, 0, hi, k, idx, already);
    }
    float sum = 0;
    for (int s = 0; s < k; ++s) {
      float w = 1.5f + UniformSym(seed, RngStream::kRouting, (1ull << 62) + static_cast<uint64_t>(g) * k + s);
      b.topk_weights[t * k + s] = w;
      sum += w;
    }
    for (int s = 0; s < k; ++s) b.topk_weights[t * k + s] /= sum;
  }
  return b;
}

std::unique_ptr<WeightSource> MakeSyntheticWeights(const ModelConfig& model, uint64_t seed) {
  return std::make_unique<SyntheticWeights>(model, seed);
}

// ---- router ----------------------------------------------------------------------------------------------------

Status RouteWithGate(const ModelConfig& model, const float* gate_weight, const float* bias, TokenBatch* batch) {
  const int64_t h = model.hidden_size, t_count = batch->num_tokens;
  const int e_count = model.num_experts, k = model.top_k;
  if (batch->hidden != h)
    return absl::InvalidArgumentError(absl::StrCat("router: batch has H=", batch->hidden, ", model has H=", h));
  std::vector<float> logits(static_cast<size_t>(t_count * e_count));
  for (int64_t t = 0; t < t_count; ++t) {
    const float* x = batch->x.data() + t * h;
    for (int e = 0; e < e_count; ++e) {
      const float* wg = gate_weight + static_cast<int64_t>(e) * h;
      // Four independent double accumulators in a fixed order: vectorizes, and is the same on every rank.
      double acc[4] = {0, 0, 0, 0};
      int64_t c = 0;
      for (; c + 4 <= h; c += 4) {
        for (int l = 0; l < 4; ++l) acc[l] += static_cast<double>(x[c + l]) * wg[c + l];
      }
      for (; c < h; ++c) acc[0] += static_cast<double>(x[c]) * wg[c];
      logits[t * e_count + e] = static_cast<float>((acc[0] + acc[1]) + (acc[2] + acc[3]));
    }
  }
  std::vector<int32_t> idx(static_cast<size_t>(t_count * k));
  std::vector<float> wts(static_cast<size_t>(t_count * k));
  WAVEEP_RETURN_IF_ERROR(
      kernels::TopkGating(logits.data(), bias, t_count, kernels::GateParamsFrom(model), idx.data(), wts.data()));
  batch->top_k = k;
  batch->topk_idx = std::move(idx);
  batch->topk_weights = std::move(wts);
  return absl::OkStatus();
}

}  // namespace waveep::ep
