// Copyright 2026 The waveep Authors.
//
// The MoE layer's operations on a CUDA device: kernels and copies on the scheduler's CUDA streams (kernels/ owns
// every CUDA call; this file has no CUDA headers and builds everywhere, returning Unavailable without CUDA).
//
// Per wave, on the compute stream: gather the wave's rows expert-major (BF16; FP8 rows are split into payload and
// scales, dequantized to FP32 and rounded to BF16), gate/up grouped GEMM (BF16 x BF16 -> FP32), SwiGLU (FP32),
// round to BF16, down grouped GEMM (-> FP32), round to BF16 and scatter into the return rows. The shared expert runs
// on fixed-size blocks aligned to global token ids (see Shared); the combine-reduce is the bitwise slot-order kernel.
//
// NOTES: numerics. Against the CPU layer (FP32 activations between the GEMMs, FP32 BLAS): the weights and the BF16
// dispatch rows are exact in BF16 on both; the device rounds the SwiGLU output to BF16 before the down GEMM (and FP8
// rows to BF16 after dequantization), relative error <= 2^-9 per element, and accumulates in another order (~1e-6).
// The dense reference check (ep.h, VerifyAgainstReference) allows 2^-8 of the normalized error, whose main term is
// already the BF16 combine rows (2^-9): the added roundings are independent and enter the norm as sqrt-sums, so the
// same tolerance holds (not yet measured: CudaLayerTest checks it on a GPU). Bitwise invariance over W: every
// expert's rows are the same rows in the same order for any W, and the GEMM backend is pinned to one cuBLASLt call
// per expert, whose algorithm (or the simt kernel, for a shape cuBLASLt has none for) depends only on (M, N, K) and
// an alignment bound that ignores where the expert's rows start (GroupAlignment) — not on which wave it is in.
#include <algorithm>
#include <vector>

#include "ep/ep_internal.h"

namespace waveep::ep::internal {
namespace {

// One backend for every shape, so a wave's size never changes which code computes a row (see NOTES).
constexpr kernels::GemmBackend kLayerGemm = kernels::GemmBackend::kCublasLt;
// Rows of one shared-expert GEMM (see Shared): a multiple of kSharedBlockRows, large enough for the tensor cores.
constexpr int64_t kSharedGemmRows = 2 * kSharedBlockRows;

class CudaLayerOps final : public LayerOps {
 public:
  CudaLayerOps(const ModelConfig& m, DType dtype, bool shared, Device device)
      : LayerOps(m, dtype, device, MemoryKind::kDevice), shared_(shared), block_(m.fp8_block_size) {}

  Status LoadWeights(std::vector<float> w13, std::vector<float> w2, std::vector<float> shared_w13,
                     std::vector<float> shared_w2) override {
    const int64_t l = static_cast<int64_t>(w13.size()) / (2 * inter_ * h_);
    WAVEEP_ASSIGN_OR_RETURN(w13_, Upload(w13));
    WAVEEP_ASSIGN_OR_RETURN(w2_, Upload(w2));
    b13_.clear();  // a second load replaces the weights: no pointers into the buffers just freed
    b2_.clear();
    for (int64_t e = 0; e < l; ++e) {
      b13_.push_back(w13_.as<uint16_t>() + e * 2 * inter_ * h_);
      b2_.push_back(w2_.as<uint16_t>() + e * h_ * inter_);
    }
    if (shared_) {
      WAVEEP_ASSIGN_OR_RETURN(sw13_, Upload(shared_w13));
      WAVEEP_ASSIGN_OR_RETURN(sw2_, Upload(shared_w2));
    }
    return absl::OkStatus();
  }

  Status Prepare(const TokenBatch& batch, const DispatchLayout& lay, float* out, Stream& s) override {
    WAVEEP_RETURN_IF_ERROR(BeginStep(batch, lay, out));
    // Unpack scatters by the GEMM rows (a_rows_), which are the return rows only without deduplication, which these
    // ops do not take (SupportsDedup). Say so rather than scatter to the wrong rows if that ever changes.
    if (lay.ret_rows != lay.a_rows)
      return absl::InternalError(
          "CUDA layer ops: the layout's return rows differ from its GEMM rows (deduplicated "
          "layout?); the CUDA ops support neither");
    const int64_t t = batch.num_tokens, k = batch.top_k, pairs = lay.perm.num_rows(), max_wave = max_wave_;
    // Buffers (grow-only).
    WAVEEP_RETURN_IF_ERROR(Ensure(x_, t * h_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(tok_, t * drow_));
    if (fp8_) {
      WAVEEP_RETURN_IF_ERROR(Ensure(q_, t * h_));
      WAVEEP_RETURN_IF_ERROR(Ensure(sc_, t * (h_ / block_) * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(aq_, max_wave * h_));
      WAVEEP_RETURN_IF_ERROR(Ensure(as_, max_wave * (h_ / block_) * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(a_rows8_, max_wave * drow_));
      WAVEEP_RETURN_IF_ERROR(Ensure(a_f32_, max_wave * h_ * 4));
    }
    WAVEEP_RETURN_IF_ERROR(Ensure(a_, max_wave * h_ * 2));
    WAVEEP_RETURN_IF_ERROR(Ensure(gate_up_, max_wave * 2 * inter_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(act_, max_wave * inter_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(act_bf_, max_wave * inter_ * 2));
    WAVEEP_RETURN_IF_ERROR(Ensure(y_, max_wave * h_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(y_bf_, max_wave * h_ * 2));
    WAVEEP_RETURN_IF_ERROR(Ensure(out_dev_, t * h_ * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(out_host_, t * h_ * 4, MemoryKind::kPinnedHost));
    if (shared_) {
      const int64_t rows = std::max(SharedBlocks(batch, 0), SharedBlocks(batch, 1)) * kSharedGemmRows;
      WAVEEP_RETURN_IF_ERROR(Ensure(xs_, rows * h_ * 2));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_gate_up_, rows * 2 * si_ * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_act_, rows * si_ * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_act_bf_, rows * si_ * 2));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_y_, rows * h_ * 4));
      WAVEEP_RETURN_IF_ERROR(Ensure(s_out_, t * h_ * 4));
    }
    // Index arrays: every wave's GEMM rows in one array (wave w's start at wave_row_begin(w)).
    a_rows_all_.clear();
    a_rows_all_.reserve(static_cast<size_t>(lay.total_recv_rows));
    for (const std::vector<int64_t>& rows : lay.a_rows) a_rows_all_.insert(a_rows_all_.end(), rows.begin(), rows.end());
    WAVEEP_RETURN_IF_ERROR(Ensure(pair_of_row_, pairs * 8));
    WAVEEP_RETURN_IF_ERROR(Ensure(row_of_pair_, t * k * 8));
    WAVEEP_RETURN_IF_ERROR(Ensure(topk_w_, t * k * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(a_rows_, static_cast<int64_t>(a_rows_all_.size()) * 8));
    // Stage the step's inputs (host -> device) on the comm stream, ahead of pack(0).
    WAVEEP_RETURN_IF_ERROR(kernels::CudaCopyAsync(x_.data(), batch.x.data(), t * h_ * 4, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaCopyAsync(pair_of_row_.data(), lay.perm.pair_of_row.data(), pairs * 8, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaCopyAsync(row_of_pair_.data(), lay.perm.row_of_pair.data(), t * k * 8, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaCopyAsync(topk_w_.data(), batch.topk_weights.data(), t * k * 4, s));
    WAVEEP_RETURN_IF_ERROR(
        kernels::CudaCopyAsync(a_rows_.data(), a_rows_all_.data(), static_cast<int64_t>(a_rows_all_.size()) * 8, s));
    return absl::OkStatus();
  }

  // pack(0) encodes every token once and gathers all send rows (one launch each: cheap next to the exchange, and it
  // leaves later waves' packs empty); pack(w > 0) has nothing left to do.
  Status Pack(int w, Stream& s) override {
    const int64_t t = batch_->num_tokens, pairs = lay_->perm.num_rows();
    if (w != 0 || t == 0) return absl::OkStatus();
    if (!fp8_) {
      WAVEEP_RETURN_IF_ERROR(kernels::CudaConvertF32ToBf16(x_.as<float>(), tok_.as<uint16_t>(), t * h_, s));
    } else {
      const int64_t sbytes = 4 * (h_ / block_);
      WAVEEP_RETURN_IF_ERROR(
          kernels::CudaQuantizeFp8Blockwise(x_.as<float>(), t, h_, block_, q_.as<uint8_t>(), sc_.as<float>(), s));
      WAVEEP_RETURN_IF_ERROR(kernels::CudaCopyRowsAsync(q_.data(), h_, tok_.data(), drow_, h_, t, s));
      WAVEEP_RETURN_IF_ERROR(
          kernels::CudaCopyRowsAsync(sc_.data(), sbytes, tok_.as<uint8_t>() + h_, drow_, sbytes, t, s));
    }
    return kernels::CudaGatherRows(tok_.data(), drow_, pair_of_row_.as<int64_t>(), pairs, send_.data(), s,
                                   batch_->top_k);
  }

  Status Gemm(int w, Stream& s) override {
    const DispatchLayout& lay = *lay_;
    const int64_t m = static_cast<int64_t>(lay.a_rows[w].size());
    if (m == 0) return absl::OkStatus();
    const int64_t* rows = a_rows_.as<int64_t>() + wave_row_begin(w);
    const void* recv = recv_[w % 2].data();
    if (!fp8_) {
      WAVEEP_RETURN_IF_ERROR(kernels::CudaGatherRows(recv, drow_, rows, m, a_.data(), s));
    } else {
      const int64_t sbytes = 4 * (h_ / block_);
      WAVEEP_RETURN_IF_ERROR(kernels::CudaGatherRows(recv, drow_, rows, m, a_rows8_.data(), s));
      // The wave's own FP8 payload / scale buffers (max_wave rows; q_ / sc_ hold the local tokens for pack).
      WAVEEP_RETURN_IF_ERROR(kernels::CudaCopyRowsAsync(a_rows8_.data(), drow_, aq_.data(), h_, h_, m, s));
      WAVEEP_RETURN_IF_ERROR(
          kernels::CudaCopyRowsAsync(a_rows8_.as<uint8_t>() + h_, drow_, as_.data(), sbytes, sbytes, m, s));
      WAVEEP_RETURN_IF_ERROR(kernels::CudaDequantizeFp8Blockwise(aq_.as<uint8_t>(), as_.as<float>(), m, h_, block_,
                                                                 a_f32_.as<float>(), s));
      WAVEEP_RETURN_IF_ERROR(kernels::CudaConvertF32ToBf16(a_f32_.as<float>(), a_.as<uint16_t>(), m * h_, s));
    }
    const int w_count = lay.num_waves;
    const int eb = lay.wave_begin[lay.rank * (w_count + 1) + w], ee = lay.wave_begin[lay.rank * (w_count + 1) + w + 1];
    const int64_t* off = lay.a_expert_offsets[w].data();
    WAVEEP_RETURN_IF_ERROR(kernels::CudaGroupedGemmNTBf16(a_.as<uint16_t>(), off, ee - eb, h_, b13_.data() + eb,
                                                          2 * inter_, gate_up_.data(), DType::kF32, s, kLayerGemm));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaSwiGLU(gate_up_.as<float>(), m, inter_, act_.as<float>(), s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaConvertF32ToBf16(act_.as<float>(), act_bf_.as<uint16_t>(), m * inter_, s));
    return kernels::CudaGroupedGemmNTBf16(act_bf_.as<uint16_t>(), off, ee - eb, inter_, b2_.data() + eb, h_, y_.data(),
                                          DType::kF32, s, kLayerGemm);
  }

  Status Unpack(int w, Stream& s) override {
    const int64_t m = static_cast<int64_t>(lay_->a_rows[w].size());
    if (m == 0) return absl::OkStatus();
    WAVEEP_RETURN_IF_ERROR(kernels::CudaConvertF32ToBf16(y_.as<float>(), y_bf_.as<uint16_t>(), m * h_, s));
    return kernels::CudaScatterRows(y_bf_.data(), crow_, a_rows_.as<int64_t>() + wave_row_begin(w), m, ret_send(w), s);
  }

  // NOTES: invariance over np (and W). cuBLASLt's algorithm, and with it a row's rounding, depends on M, and a row's
  // result may depend on its position in the GEMM; this rank's tokens change with np. So, as on the CPU, the shared
  // expert runs on blocks of kSharedGemmRows rows aligned to *global* token ids (block b = tokens [b*B, (b+1)*B),
  // absent rows zero), one group per block in one grouped call: every token sits at row (id mod B) of an M = B GEMM
  // for any np, and its output is bitwise identical. Part 0 = the rank's tokens before the split, part 1 the rest.
  // Both parts use the same scratch rows: the schedule runs them on one stream (the compute stream's head and tail),
  // and part 0 has copied its rows out before part 1 starts. A block the split cuts (the split is a multiple of
  // kSharedBlockRows, not of B) is computed in both parts, each keeping its own rows.
  Status Shared(int part, Stream& s) override {
    const TokenBatch& b = *batch_;
    const int64_t blk = kSharedGemmRows, first = SharedPartBegin(b, part), last = first + SharedPartTokens(b, part);
    if (first == last) return absl::OkStatus();
    const int64_t nb = SharedBlocks(b, part);
    const int64_t lead = first - first / blk * blk;  // rows of the first block before this part's first token
    const int64_t rows = nb * blk, n_tok = last - first, tok0 = first - b.first_token;
    uint16_t* x = xs_.as<uint16_t>();
    float* gate_up = s_gate_up_.as<float>();
    float* act = s_act_.as<float>();
    uint16_t* act_bf = s_act_bf_.as<uint16_t>();
    float* y = s_y_.as<float>();
    // Host arrays for the grouped calls (read before they return): the blocks as groups, all with the same weights.
    std::vector<int64_t> off(nb + 1);
    for (int64_t i = 0; i <= nb; ++i) off[i] = i * blk;
    const std::vector<const uint16_t*> b13(nb, sw13_.as<uint16_t>()), b2(nb, sw2_.as<uint16_t>());
    // Only the padding rows are zeroed (before and after this part's tokens); the tokens' rows are written next.
    WAVEEP_RETURN_IF_ERROR(kernels::CudaFillZeroAsync(x, lead * h_ * 2, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaFillZeroAsync(x + (lead + n_tok) * h_, (rows - lead - n_tok) * h_ * 2, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaConvertF32ToBf16(x_.as<float>() + tok0 * h_, x + lead * h_, n_tok * h_, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaGroupedGemmNTBf16(x, off.data(), static_cast<int>(nb), h_, b13.data(), 2 * si_,
                                                          gate_up, DType::kF32, s, kLayerGemm));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaSwiGLU(gate_up, rows, si_, act, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaConvertF32ToBf16(act, act_bf, rows * si_, s));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaGroupedGemmNTBf16(act_bf, off.data(), static_cast<int>(nb), si_, b2.data(), h_,
                                                          y, DType::kF32, s, kLayerGemm));
    return kernels::CudaCopyAsync(s_out_.as<float>() + tok0 * h_, y + lead * h_, n_tok * h_ * 4, s);
  }

  // out = combine-reduce (+ shared) on the device, then device -> pinned; Collect copies pinned -> the caller's host
  // array once the streams have drained (T x H floats, ~117 MB at V4 sizes: too long to hold the driver's callback
  // thread with a host function).
  Status Finish(Stream& s) override {
    const TokenBatch& b = *batch_;
    const int64_t n = b.num_tokens * h_;
    if (n == 0) return absl::OkStatus();
    WAVEEP_RETURN_IF_ERROR(kernels::CudaCombineReduceBf16(ret_recv_.as<uint16_t>(), row_of_pair_.as<int64_t>(),
                                                          topk_w_.as<float>(), b.num_tokens, b.top_k, h_,
                                                          out_dev_.as<float>(), s));
    if (shared_) WAVEEP_RETURN_IF_ERROR(kernels::CudaAddF32(s_out_.as<float>(), out_dev_.as<float>(), n, s));
    return kernels::CudaCopyAsync(out_host_.data(), out_dev_.data(), n * 4, s);
  }

  Status Collect() override {
    const int64_t n = batch_->num_tokens * h_;
    if (n == 0) return absl::OkStatus();
    const float* src = out_host_.as<float>();
    std::copy(src, src + n, out_);
    return absl::OkStatus();
  }

 private:
  // Global id of part `part`'s first token, and how many kSharedGemmRows blocks its tokens touch.
  static int64_t SharedPartBegin(const TokenBatch& b, int part) {
    return b.first_token + (part == 0 ? 0 : SharedSplitToken(b));
  }
  static int64_t SharedBlocks(const TokenBatch& b, int part) {
    const int64_t n = SharedPartTokens(b, part), first = SharedPartBegin(b, part), blk = kSharedGemmRows;
    return n == 0 ? 0 : (first + n - 1) / blk - first / blk + 1;
  }

  // FP32 host weights (BF16-representable: synthetic and checkpoint weights are widened BF16, FP8 dequantized to
  // FP32 is rounded here) -> BF16 on the device. Synchronous: weights load once.
  StatusOr<Buffer> Upload(const std::vector<float>& w) {
    std::vector<uint16_t> bf(w.size());
    kernels::ConvertF32ToBf16(w.data(), bf.data(), static_cast<int64_t>(w.size()));
    WAVEEP_ASSIGN_OR_RETURN(Buffer dev,
                            Buffer::Allocate(device_, MemoryKind::kDevice, std::max<size_t>(bf.size() * 2, 256)));
    StreamOptions so;
    so.name = "weights";
    WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<Stream> s, Stream::Create(device_, so));
    WAVEEP_RETURN_IF_ERROR(kernels::CudaCopyAsync(dev.data(), bf.data(), static_cast<int64_t>(bf.size()) * 2, *s));
    WAVEEP_RETURN_IF_ERROR(s->Synchronize());
    return dev;
  }

  const bool shared_;
  const int block_;
  Buffer w13_, w2_, sw13_, sw2_;           // BF16 weights
  std::vector<const uint16_t*> b13_, b2_;  // per local expert
  std::vector<int64_t> a_rows_all_;        // every wave's GEMM rows, wave w from wave_row_begin(w)
  // Device buffers: tokens (FP32, encoded), index arrays, one wave's scratch, the shared expert's.
  Buffer x_, tok_;
  Buffer pair_of_row_, row_of_pair_, topk_w_, a_rows_;
  Buffer q_, sc_;  // pack: FP8 payload and scales of the local tokens (comm stream)
  Buffer aq_, as_, a_rows8_, a_f32_, a_, gate_up_, act_, act_bf_, y_, y_bf_;
  // The shared expert's blocks (BF16 input, gate/up, activation, output) and its output in token order.
  Buffer xs_, s_gate_up_, s_act_, s_act_bf_, s_y_, s_out_, out_dev_, out_host_;
};

}  // namespace

StatusOr<std::unique_ptr<LayerOps>> NewCudaLayerOps(const ModelConfig& model, DType dispatch_dtype, bool shared,
                                                    Device device) {
  if (device.is_cpu()) return absl::InvalidArgumentError("NewCudaLayerOps: device is the CPU");
  WAVEEP_RETURN_IF_ERROR(CheckCudaDevice(device));
  return std::unique_ptr<LayerOps>(new CudaLayerOps(model, dispatch_dtype, shared, device));
}

}  // namespace waveep::ep::internal
