// Copyright 2026 The waveep Authors.
//
// The MoE layer's operations on the CPU: host tasks on the scheduler's worker-thread streams, FP32 BLAS GEMMs.
#include <algorithm>
#include <cstring>

#include "ep/ep_internal.h"

namespace waveep::ep::internal {
namespace {

class CpuLayerOps final : public LayerOps {
 public:
  CpuLayerOps(const ModelConfig& m, DType dtype, bool shared)
      : LayerOps(m, dtype, Device::Cpu(), MemoryKind::kHost), shared_(shared) {}

  Status LoadWeights(std::vector<float> w13, std::vector<float> w2, std::vector<float> shared_w13,
                     std::vector<float> shared_w2) override {
    w13_ = std::move(w13);
    w2_ = std::move(w2);
    shared_w13_ = std::move(shared_w13);
    shared_w2_ = std::move(shared_w2);
    const int64_t l = static_cast<int64_t>(w13_.size()) / (2 * inter_ * h_);
    b13_.clear();
    b2_.clear();
    for (int64_t e = 0; e < l; ++e) {
      b13_.push_back(w13_.data() + static_cast<size_t>(e) * 2 * inter_ * h_);
      b2_.push_back(w2_.data() + static_cast<size_t>(e) * h_ * inter_);
    }
    return absl::OkStatus();
  }

  Status Prepare(const TokenBatch& batch, const DispatchLayout& lay, float* out, Stream& /*stream*/) override {
    WAVEEP_RETURN_IF_ERROR(BeginStep(batch, lay, out));
    const int64_t max_wave = max_wave_;
    WAVEEP_RETURN_IF_ERROR(Ensure(tokens_, batch.num_tokens * drow_));
    WAVEEP_RETURN_IF_ERROR(Ensure(a_, max_wave * h_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(gate_up_, max_wave * 2 * inter_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(act_, max_wave * inter_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(y_, max_wave * h_ * 4));
    if (shared_) {
      WAVEEP_RETURN_IF_ERROR(Ensure(s_in_, kSharedBlockRows * h_ * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_gate_up_, kSharedBlockRows * 2 * si_ * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_act_, kSharedBlockRows * si_ * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_blk_, kSharedBlockRows * h_ * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_out_, batch.num_tokens * h_ * 4));
    }
    return absl::OkStatus();
  }

  bool SupportsDedup() const override { return true; }
  Status Pack(int w, Stream& s) override {
    return s.Enqueue([this, w] { return PackNow(w); });
  }
  Status Forward(int w, Stream& s) override {
    return s.Enqueue([this, w] { return ForwardNow(w); });
  }
  Status Gemm(int w, Stream& s) override {
    return s.Enqueue([this, w] { return GemmNow(w); });
  }
  Status Unpack(int w, Stream& s) override {
    return s.Enqueue([this, w] { return UnpackNow(w); });
  }
  Status Shared(int part, Stream& s) override {
    return s.Enqueue([this, part] { return SharedNow(part); });
  }
  Status Finish(Stream& s) override {
    return s.Enqueue([this] { return FinishNow(); });
  }

 private:
  // Each token is encoded to the transit dtype once per step (at the start of pack(0)) and then copied to its K rows.
  Status EncodeTokens() {
    const TokenBatch& b = *batch_;
    uint8_t* tok = tokens_.as<uint8_t>();
    if (!fp8_) {
      kernels::ConvertF32ToBf16(b.x.data(), reinterpret_cast<uint16_t*>(tok), b.num_tokens * h_);
      return absl::OkStatus();
    }
    const int block = m_.fp8_block_size;
    std::vector<float> scales(h_ / block);
    for (int64_t t = 0; t < b.num_tokens; ++t) {
      uint8_t* dst = tok + t * drow_;
      WAVEEP_RETURN_IF_ERROR(kernels::QuantizeFp8Blockwise(b.x.data() + t * h_, 1, h_, block, dst, scales.data()));
      std::memcpy(dst + h_, scales.data(), scales.size() * sizeof(float));
    }
    return absl::OkStatus();
  }

  // pack(w): my dispatch rows for every peer's wave w (one per pair, or one per token and peer with dedup; with a
  // hierarchical layout also the exchange-1 rows for my proxies, and not the rows Forward fills).
  Status PackNow(int w) {
    if (w == 0) WAVEEP_RETURN_IF_ERROR(EncodeTokens());
    const DispatchLayout& lay = *lay_;
    const int r_count = lay.num_ranks;
    const uint8_t* tok = tokens_.as<uint8_t>();
    uint8_t* send = send_.as<uint8_t>();
    auto pack = [&](int64_t b, int64_t n) {
      for (int64_t r = b; r < b + n; ++r) {
        const int64_t t = lay.dsend_token[r];
        if (t >= 0) std::memcpy(send + r * drow_, tok + t * drow_, static_cast<size_t>(drow_));
      }
    };
    for (int p = 0; p < r_count; ++p) {
      pack(lay.dsend_row_begin[w * r_count + p], lay.dsend_rows[w * r_count + p]);
      pack(lay.x1_send_row_begin[w * r_count + p], lay.x1_send_rows[w * r_count + p]);
    }
    return absl::OkStatus();
  }

  // forward(w): rows that arrived for the ranks of my node (exchange 1) into their exchange-2 send rows.
  Status ForwardNow(int w) {
    const std::vector<int64_t>& from = lay_->fwd_from[w];
    const std::vector<int64_t>& to = lay_->fwd_to[w];
    const uint8_t* fwd = fwd_.as<uint8_t>();
    uint8_t* send = send_.as<uint8_t>();
    for (size_t i = 0; i < from.size(); ++i)
      std::memcpy(send + to[i] * drow_, fwd + from[i] * drow_, static_cast<size_t>(drow_));
    return absl::OkStatus();
  }

  // gemm(w): gather wave w's rows into expert-major FP32, then gate/up GEMM, SwiGLU, down GEMM per expert.
  Status GemmNow(int w) {
    const DispatchLayout& lay = *lay_;
    const std::vector<int64_t>& rows = lay.a_rows[w];
    const int64_t mrows = static_cast<int64_t>(rows.size());
    const int block = m_.fp8_block_size;
    float* a = a_.as<float>();
    const uint8_t* recv = recv_[w % 2].as<uint8_t>();
    for (int64_t i = 0; i < mrows; ++i) {
      const uint8_t* src = recv + rows[i] * drow_;
      if (fp8_) {
        WAVEEP_RETURN_IF_ERROR(
            kernels::DequantizeFp8Blockwise(src, reinterpret_cast<const float*>(src + h_), 1, h_, block, a + i * h_));
      } else {
        kernels::ConvertBf16ToF32(reinterpret_cast<const uint16_t*>(src), a + i * h_, h_);
      }
    }
    const int w_count = lay.num_waves;
    const int eb = lay.wave_begin[lay.rank * (w_count + 1) + w], ee = lay.wave_begin[lay.rank * (w_count + 1) + w + 1];
    const int64_t* off = lay.a_expert_offsets[w].data();
    WAVEEP_RETURN_IF_ERROR(
        kernels::GroupedGemmNT(a, off, ee - eb, h_, b13_.data() + eb, 2 * inter_, gate_up_.as<float>()));
    kernels::SwiGLU(gate_up_.as<float>(), mrows, inter_, act_.as<float>());
    return kernels::GroupedGemmNT(act_.as<float>(), off, ee - eb, inter_, b2_.data() + eb, h_, y_.as<float>());
  }

  // unpack(w): results back into the return slot's layout (one row per pair, source-major blocks in each source's
  // order), as BF16.
  Status UnpackNow(int w) {
    const std::vector<int64_t>& rows = lay_->ret_rows[w];
    uint8_t* dst = static_cast<uint8_t*>(ret_send(w));
    const float* y = y_.as<float>();
    for (size_t i = 0; i < rows.size(); ++i)
      kernels::ConvertF32ToBf16(y + i * h_, reinterpret_cast<uint16_t*>(dst + rows[i] * crow_), h_);
    return absl::OkStatus();
  }

  // NOTES: BLAS row results depend on M and on the row's position in the GEMM (kernel choice, tile lanes), and the
  // shared expert's rows are this rank's tokens, which change with np. So the shared expert runs on blocks of
  // kSharedBlockRows rows aligned to *global* token ids (block b = tokens [b*B, (b+1)*B), absent rows zero): every
  // token sits at the same position of a same-size GEMM for any np, and its result is bitwise identical. Part 0
  // ends (part 1 starts) at a block boundary, so splitting changes no block.
  Status SharedNow(int part) {
    const TokenBatch& batch = *batch_;
    const int64_t blk = kSharedBlockRows;
    const int64_t off[2] = {0, blk};
    const float* b13 = shared_w13_.data();
    const float* b2 = shared_w2_.data();
    float* xin = s_in_.as<float>();
    const int64_t base = batch.first_token, split = base + SharedSplitToken(batch);
    const int64_t first = part == 0 ? base : split;  // this part's global token ids: [first, last)
    const int64_t last = part == 0 ? split : base + batch.num_tokens;
    if (first >= last) return absl::OkStatus();
    for (int64_t bs = first / blk * blk; bs < last; bs += blk) {
      const int64_t lo = std::max(bs, first), hi = std::min(bs + blk, last);  // my tokens in this block
      std::memset(xin, 0, static_cast<size_t>(blk * h_) * sizeof(float));
      std::memcpy(xin + (lo - bs) * h_, batch.x.data() + (lo - base) * h_, static_cast<size_t>((hi - lo) * h_) * 4);
      WAVEEP_RETURN_IF_ERROR(kernels::GroupedGemmNT(xin, off, 1, h_, &b13, 2 * si_, s_gate_up_.as<float>()));
      kernels::SwiGLU(s_gate_up_.as<float>(), blk, si_, s_act_.as<float>());
      WAVEEP_RETURN_IF_ERROR(kernels::GroupedGemmNT(s_act_.as<float>(), off, 1, si_, &b2, h_, s_blk_.as<float>()));
      std::memcpy(s_out_.as<float>() + (lo - base) * h_, s_blk_.as<float>() + (lo - bs) * h_,
                  static_cast<size_t>((hi - lo) * h_) * 4);
    }
    return absl::OkStatus();
  }

  Status FinishNow() {
    const TokenBatch& batch = *batch_;
    kernels::CombineReduceBf16(ret_recv_.as<uint16_t>(), lay_->perm.row_of_pair.data(), batch.topk_weights.data(),
                               batch.num_tokens, batch.top_k, h_, out_);
    if (shared_) {
      const float* s = s_out_.as<float>();
      for (int64_t i = 0; i < batch.num_tokens * h_; ++i) out_[i] += s[i];
    }
    return absl::OkStatus();
  }

  const bool shared_;
  std::vector<float> w13_, w2_, shared_w13_, shared_w2_;
  std::vector<const float*> b13_, b2_;  // per local expert, into w13_ / w2_ (set once by LoadWeights)
  // Local tokens encoded once per step; FP32 scratch for one wave and for the shared expert.
  Buffer tokens_;
  Buffer a_, gate_up_, act_, y_, s_in_, s_gate_up_, s_act_, s_blk_, s_out_;
};

}  // namespace

std::unique_ptr<LayerOps> NewCpuLayerOps(const ModelConfig& model, DType dispatch_dtype, bool shared) {
  return std::make_unique<CpuLayerOps>(model, dispatch_dtype, shared);
}

}  // namespace waveep::ep::internal
