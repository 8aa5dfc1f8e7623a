// Copyright 2026 The waveep Authors.
//
// MoeLayer and its wave scheduler. The schedule is expressed only with Stream/Event, so it runs unchanged on CPU
// worker threads and (later) CUDA streams.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "ep/ep.h"
#include "ep/ep_internal.h"

namespace waveep::ep {
namespace {

// Rows per shared-expert GEMM block (see NOTES in Forward).
constexpr int64_t kSharedBlockRows = 64;

// Grows `b` to at least `bytes` (contents not preserved). Buffers are reused across steps.
Status Ensure(Buffer& b, size_t bytes) {
  if (b.bytes() >= bytes && b.data() != nullptr) return absl::OkStatus();
  WAVEEP_ASSIGN_OR_RETURN(b, Buffer::Allocate(Device::Cpu(), MemoryKind::kHost, std::max<size_t>(bytes, 64)));
  return absl::OkStatus();
}

}  // namespace

double BusyUs(const std::vector<SpanRecord>& spans, absl::string_view stream) {
  std::vector<std::pair<double, double>> iv;
  for (const SpanRecord& s : spans)
    if (s.stream == stream) iv.emplace_back(s.start_us, s.end_us);
  std::sort(iv.begin(), iv.end());
  double busy = 0, cur_b = 0, cur_e = -1;
  for (auto [b, e] : iv) {
    if (b > cur_e) {
      if (cur_e > cur_b) busy += cur_e - cur_b;
      cur_b = b;
      cur_e = e;
    } else {
      cur_e = std::max(cur_e, e);
    }
  }
  if (cur_e > cur_b) busy += cur_e - cur_b;
  return busy;
}

Status ValidateLayerConfig(const LayerConfig& cfg, int num_ranks) {
  WAVEEP_RETURN_IF_ERROR(ValidateModelConfig(cfg.model));
  WAVEEP_RETURN_IF_ERROR(Placement::Contiguous(cfg.model.num_experts, num_ranks).status());
  const int local = cfg.model.num_experts / num_ranks;
  if (cfg.num_waves < 1 || cfg.num_waves > local) {
    return absl::InvalidArgumentError(absl::StrCat("--waves=", cfg.num_waves, " must be in [1, ", local,
                                                   "] (local experts = ", cfg.model.num_experts, " / ", num_ranks,
                                                   " ranks)"));
  }
  if (cfg.dispatch_dtype != DType::kBF16 && cfg.dispatch_dtype != DType::kFP8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype=", DTypeName(cfg.dispatch_dtype), " is not supported for dispatch (use bf16 or fp8)"));
  }
  if (cfg.dispatch_dtype == DType::kFP8E4M3 && cfg.model.hidden_size % cfg.model.fp8_block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hidden_size=", cfg.model.hidden_size,
                                                   " is not a multiple of the FP8 block (", cfg.model.fp8_block_size,
                                                   ") required by --dtype=fp8"));
  }
  if (!cfg.device.is_cpu()) {
    return absl::UnimplementedError(
        absl::StrCat("--device=", cfg.device.ToString(), ": the MoE layer runs on the CPU only in this build"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------------
class MoeLayer::Impl {
 public:
  // Weights of the local experts: w13 [L][2I, H], w2 [L][H, I]; shared: [2*nS*I, H], [H, nS*I].
  std::vector<float> w13, w2, shared_w13, shared_w2;
  std::unique_ptr<internal::WaveScheduler> scheduler;
  // Transit buffers: local tokens encoded once, send rows (perm order), double-buffered receive / return, returned
  // rows (perm order).
  Buffer tokens, send, recv[2], ret_send[2], ret_recv;
  // FP32 scratch for one wave: GEMM input, gate/up, activation, output; and the shared expert's.
  Buffer a, gate_up, act, y, s_in, s_gate_up, s_act, s_blk, s_out;
  DispatchLayout lay;
};

MoeLayer::MoeLayer(const ProcessContext& ctx, comm::Communicator* comm, LayerConfig cfg, Placement placement)
    : ctx_(ctx), comm_(comm), cfg_(std::move(cfg)), placement_(placement), impl_(std::make_unique<Impl>()) {}

MoeLayer::~MoeLayer() = default;

int64_t MoeLayer::dispatch_row_bytes() const {
  const int64_t h = cfg_.model.hidden_size;
  if (cfg_.dispatch_dtype == DType::kFP8E4M3) return h + 4 * (h / cfg_.model.fp8_block_size);
  return 2 * h;
}

StatusOr<std::unique_ptr<MoeLayer>> MoeLayer::Create(const ProcessContext& ctx, comm::Communicator* comm,
                                                     LayerConfig cfg, const WeightSource& weights) {
  if (comm == nullptr) return absl::InvalidArgumentError("MoeLayer::Create: communicator is null");
  Status valid = ValidateLayerConfig(cfg, comm->size());
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm, valid));
  std::string canon = absl::StrCat(ModelConfigToJson(cfg.model), "|", DTypeName(cfg.dispatch_dtype), "|", cfg.num_waves,
                                   "|", cfg.shared_experts);
  WAVEEP_RETURN_IF_ERROR(CheckSameOnAllRanks(ctx, "layer config (model, --dtype, --waves, shared experts)", canon));
  WAVEEP_ASSIGN_OR_RETURN(Placement placement, Placement::Contiguous(cfg.model.num_experts, comm->size()));
  std::unique_ptr<MoeLayer> layer(new MoeLayer(ctx, comm, std::move(cfg), placement));
  Impl& im = *layer->impl_;
  const ModelConfig& m = layer->cfg_.model;
  const int64_t h = m.hidden_size, i = m.moe_intermediate_size;
  const int l = placement.experts_per_rank();
  const int first = placement.FirstExpert(comm->rank());
  Status load = absl::OkStatus();
  im.w13.resize(static_cast<size_t>(l) * 2 * i * h);
  im.w2.resize(static_cast<size_t>(l) * h * i);
  for (int e = 0; e < l && load.ok(); ++e) {
    load = weights.LoadExpert(first + e, im.w13.data() + static_cast<size_t>(e) * 2 * i * h,
                              im.w2.data() + static_cast<size_t>(e) * h * i);
  }
  if (load.ok() && layer->cfg_.shared_experts && m.num_shared_experts > 0) {
    const int64_t si = i * m.num_shared_experts;
    im.shared_w13.resize(static_cast<size_t>(2 * si * h));
    im.shared_w2.resize(static_cast<size_t>(h * si));
    load = weights.LoadShared(im.shared_w13.data(), im.shared_w2.data());
  }
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm, Annotate(load, "loading expert weights")));
  WAVEEP_ASSIGN_OR_RETURN(im.scheduler, internal::WaveScheduler::Create(Device::Cpu(), layer->cfg_.timeout));
  return layer;
}

Status MoeLayer::SetNumWaves(int num_waves) {
  LayerConfig next = cfg_;
  next.num_waves = num_waves;
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm_, ValidateLayerConfig(next, comm_->size())));
  WAVEEP_RETURN_IF_ERROR(CheckSameOnAllRanks(ctx_, "--waves", absl::StrCat(num_waves)));
  cfg_.num_waves = num_waves;
  return absl::OkStatus();
}

// The wave schedule (DESIGN.md §3). Host code only enqueues; the two streams' threads do the work.
Status MoeLayer::Forward(const TokenBatch& batch, float* out, StepStats* stats) {
  Impl& im = *impl_;
  const ModelConfig& m = cfg_.model;
  const int64_t h = m.hidden_size, inter = m.moe_intermediate_size;
  const int k = m.top_k;
  const int w_count = cfg_.num_waves;
  const int r_count = comm_->size();
  const int64_t drow = dispatch_row_bytes(), crow = combine_row_bytes();
  const bool fp8 = cfg_.dispatch_dtype == DType::kFP8E4M3;
  const int block = m.fp8_block_size;
  const double t0 = NowUs();
  std::vector<SpanRecord> spans;
  Status shape_ok =
      (batch.hidden == h && batch.top_k == k)
          ? absl::OkStatus()
          : absl::InvalidArgumentError(absl::StrCat("token batch has H=", batch.hidden, " K=", batch.top_k,
                                                    " but the model has H=", h, " K=", k));
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm_, shape_ok));
  WAVEEP_ASSIGN_OR_RETURN(im.lay, BuildDispatchLayout(*comm_, placement_, batch, w_count));
  const DispatchLayout& lay = im.lay;
  const double t_layout = NowUs();
  spans.push_back(SpanRecord{"comm", "layout", t0, t_layout, 0, 0});
  if (GlobalTracer().enabled()) GlobalTracer().Add(TraceSpan{"comm", "layout", "comm", t0, t_layout - t0, {}});

  // Buffers, grown to this step's needs.
  const int64_t pairs = lay.perm.num_rows();
  int64_t max_wave = 0;
  for (int64_t n : lay.wave_recv_total) max_wave = std::max(max_wave, n);
  WAVEEP_RETURN_IF_ERROR(Ensure(im.tokens, batch.num_tokens * drow));
  WAVEEP_RETURN_IF_ERROR(Ensure(im.send, pairs * drow));
  WAVEEP_RETURN_IF_ERROR(Ensure(im.ret_recv, pairs * crow));
  for (int j = 0; j < 2; ++j) {
    WAVEEP_RETURN_IF_ERROR(Ensure(im.recv[j], max_wave * drow));
    WAVEEP_RETURN_IF_ERROR(Ensure(im.ret_send[j], max_wave * crow));
  }
  WAVEEP_RETURN_IF_ERROR(Ensure(im.a, max_wave * h * 4));
  WAVEEP_RETURN_IF_ERROR(Ensure(im.gate_up, max_wave * 2 * inter * 4));
  WAVEEP_RETURN_IF_ERROR(Ensure(im.act, max_wave * inter * 4));
  WAVEEP_RETURN_IF_ERROR(Ensure(im.y, max_wave * h * 4));
  const bool shared = cfg_.shared_experts && m.num_shared_experts > 0;
  const int64_t si = inter * m.num_shared_experts;
  if (shared) {
    WAVEEP_RETURN_IF_ERROR(Ensure(im.s_in, kSharedBlockRows * h * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(im.s_gate_up, kSharedBlockRows * 2 * si * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(im.s_act, kSharedBlockRows * si * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(im.s_blk, kSharedBlockRows * h * 4));
    WAVEEP_RETURN_IF_ERROR(Ensure(im.s_out, batch.num_tokens * h * 4));
  }
  const int me = comm_->rank();

  // ---- task bodies ----
  // pack(w): my rows for every peer's wave w, in perm order. Each token is encoded to the transit dtype once per
  // step (at the start of pack(0)) and then copied to its K rows, instead of being re-encoded for every slot.
  auto encode_tokens = [&, this]() -> Status {
    uint8_t* tok = im.tokens.as<uint8_t>();
    if (!fp8) {
      kernels::ConvertF32ToBf16(batch.x.data(), reinterpret_cast<uint16_t*>(tok), batch.num_tokens * h);
      return absl::OkStatus();
    }
    std::vector<float> scales(h / block);
    for (int64_t t = 0; t < batch.num_tokens; ++t) {
      uint8_t* dst = tok + t * drow;
      WAVEEP_RETURN_IF_ERROR(kernels::QuantizeFp8Blockwise(batch.x.data() + t * h, 1, h, block, dst, scales.data()));
      std::memcpy(dst + h, scales.data(), scales.size() * sizeof(float));
    }
    return absl::OkStatus();
  };
  auto pack = [&, this](int w) -> Status {
    if (w == 0) WAVEEP_RETURN_IF_ERROR(encode_tokens());
    const uint8_t* tok = im.tokens.as<uint8_t>();
    uint8_t* send = im.send.as<uint8_t>();
    for (int p = 0; p < r_count; ++p) {
      const int64_t b = lay.send_row_begin[w * r_count + p], n = lay.send_rows[w * r_count + p];
      for (int64_t r = b; r < b + n; ++r)
        std::memcpy(send + r * drow, tok + (lay.perm.pair_of_row[r] / k) * drow, static_cast<size_t>(drow));
    }
    return absl::OkStatus();
  };
  auto wave_bytes_sent = [&](int w, bool dispatch) {
    double b = 0;
    for (int p = 0; p < r_count; ++p) {
      if (p == me) continue;
      b += dispatch ? lay.send_rows[w * r_count + p] * drow : lay.recv_rows[w * r_count + p] * crow;
    }
    return b;
  };
  auto dispatch_args = [&](int w) {
    comm::AlltoallvArgs a;
    a.send = im.send.data();
    a.recv = im.recv[w % 2].data();
    a.label = absl::StrCat("alltoallv dispatch(", w, ")");
    for (int p = 0; p < r_count; ++p) {
      a.send_bytes.push_back(lay.send_rows[w * r_count + p] * drow);
      a.send_offsets.push_back(lay.send_row_begin[w * r_count + p] * drow);
      a.recv_bytes.push_back(lay.recv_rows[w * r_count + p] * drow);
      a.recv_offsets.push_back(lay.recv_row_begin[w * r_count + p] * drow);
    }
    return a;
  };
  auto combine_args = [&](int w) {
    comm::AlltoallvArgs a;
    a.send = im.ret_send[w % 2].data();
    a.recv = im.ret_recv.data();
    a.label = absl::StrCat("alltoallv combine(", w, ")");
    for (int p = 0; p < r_count; ++p) {
      a.send_bytes.push_back(lay.recv_rows[w * r_count + p] * crow);
      a.send_offsets.push_back(lay.recv_row_begin[w * r_count + p] * crow);
      a.recv_bytes.push_back(lay.send_rows[w * r_count + p] * crow);
      a.recv_offsets.push_back(lay.send_row_begin[w * r_count + p] * crow);
    }
    return a;
  };
  // gemm(w): gather wave w's rows into expert-major FP32, then gate/up GEMM, SwiGLU, down GEMM per expert.
  auto gemm = [&, this](int w) -> Status {
    const std::vector<int64_t>& rows = lay.a_rows[w];
    const int64_t mrows = static_cast<int64_t>(rows.size());
    float* a = im.a.as<float>();
    const uint8_t* recv = im.recv[w % 2].as<uint8_t>();
    for (int64_t i = 0; i < mrows; ++i) {
      const uint8_t* src = recv + rows[i] * drow;
      if (fp8) {
        WAVEEP_RETURN_IF_ERROR(
            kernels::DequantizeFp8Blockwise(src, reinterpret_cast<const float*>(src + h), 1, h, block, a + i * h));
      } else {
        kernels::ConvertBf16ToF32(reinterpret_cast<const uint16_t*>(src), a + i * h, h);
      }
    }
    const int eb = lay.wave_begin[me * (w_count + 1) + w], ee = lay.wave_begin[me * (w_count + 1) + w + 1];
    std::vector<const float*> b13, b2;
    for (int e = eb; e < ee; ++e) {
      b13.push_back(im.w13.data() + static_cast<size_t>(e) * 2 * inter * h);
      b2.push_back(im.w2.data() + static_cast<size_t>(e) * h * inter);
    }
    const int64_t* off = lay.a_expert_offsets[w].data();
    WAVEEP_RETURN_IF_ERROR(kernels::GroupedGemmNT(a, off, ee - eb, h, b13.data(), 2 * inter, im.gate_up.as<float>()));
    kernels::SwiGLU(im.gate_up.as<float>(), mrows, inter, im.act.as<float>());
    return kernels::GroupedGemmNT(im.act.as<float>(), off, ee - eb, inter, b2.data(), h, im.y.as<float>());
  };
  // ret(w): results back into the recv layout (source-major blocks in each source's order), as BF16.
  auto ret = [&, this](int w) -> Status {
    const std::vector<int64_t>& rows = lay.a_rows[w];
    uint8_t* dst = im.ret_send[w % 2].as<uint8_t>();
    const float* y = im.y.as<float>();
    for (size_t i = 0; i < rows.size(); ++i)
      kernels::ConvertF32ToBf16(y + i * h, reinterpret_cast<uint16_t*>(dst + rows[i] * crow), h);
    return absl::OkStatus();
  };
  // NOTES: BLAS row results depend on M and on the row's position in the GEMM (kernel choice, tile lanes), and the
  // shared expert's rows are this rank's tokens, which change with np. So the shared expert runs on blocks of
  // kSharedBlockRows rows aligned to *global* token ids (block b = tokens [b*B, (b+1)*B), absent rows zero): every
  // token sits at the same position of a same-size GEMM for any np, and its result is bitwise identical.
  auto shared_expert = [&, this]() -> Status {
    const int64_t blk = kSharedBlockRows;
    const int64_t off[2] = {0, blk};
    const float* b13 = im.shared_w13.data();
    const float* b2 = im.shared_w2.data();
    float* xin = im.s_in.as<float>();
    const int64_t first = batch.first_token, last = batch.first_token + batch.num_tokens;
    if (batch.num_tokens == 0) return absl::OkStatus();
    for (int64_t bs = first / blk * blk; bs < last; bs += blk) {
      const int64_t lo = std::max(bs, first), hi = std::min(bs + blk, last);  // my tokens in this block
      std::memset(xin, 0, static_cast<size_t>(blk * h) * sizeof(float));
      std::memcpy(xin + (lo - bs) * h, batch.x.data() + (lo - first) * h, static_cast<size_t>((hi - lo) * h) * 4);
      WAVEEP_RETURN_IF_ERROR(kernels::GroupedGemmNT(xin, off, 1, h, &b13, 2 * si, im.s_gate_up.as<float>()));
      kernels::SwiGLU(im.s_gate_up.as<float>(), blk, si, im.s_act.as<float>());
      WAVEEP_RETURN_IF_ERROR(kernels::GroupedGemmNT(im.s_act.as<float>(), off, 1, si, &b2, h, im.s_blk.as<float>()));
      std::memcpy(im.s_out.as<float>() + (lo - first) * h, im.s_blk.as<float>() + (lo - bs) * h,
                  static_cast<size_t>((hi - lo) * h) * 4);
    }
    return absl::OkStatus();
  };
  auto reduce = [&, this]() -> Status {
    kernels::CombineReduceBf16(im.ret_recv.as<uint16_t>(), lay.perm.row_of_pair.data(), batch.topk_weights.data(),
                               batch.num_tokens, k, h, out);
    if (shared) {
      const float* s = im.s_out.as<float>();
      for (int64_t i = 0; i < batch.num_tokens * h; ++i) out[i] += s[i];
    }
    return absl::OkStatus();
  };

  // ---- run the schedule ----
  // CPU: every operation is a host task on its stream; exchanges are the communicator's asynchronous all-to-all-v.
  auto host = [](std::function<Status(int)> fn) {
    return [fn](int w, Stream& st) { return st.Enqueue([fn, w] { return fn(w); }); };
  };
  internal::WaveOps ops;
  ops.pack = host(pack);
  ops.dispatch = [&](int w, Stream& st) { return comm_->AlltoallvAsync(dispatch_args(w), st); };
  ops.gemm = host(gemm);
  ops.unpack = host(ret);
  ops.combine = [&](int w, Stream& st) { return comm_->AlltoallvAsync(combine_args(w), st); };
  if (shared) ops.tail = [&](Stream& st) { return st.Enqueue(shared_expert); };
  ops.finish = [&](Stream& st) { return st.Enqueue(reduce); };
  ops.dispatch_bytes = [&](int w) { return wave_bytes_sent(w, true); };
  ops.combine_bytes = [&](int w) { return wave_bytes_sent(w, false); };
  ops.gemm_flops = [&](int w) { return static_cast<double>(lay.wave_recv_total[w]) * m.FlopsPerPair(); };
  ops.tail_flops = static_cast<double>(batch.num_tokens) * 6.0 * h * si;
  Status local = im.scheduler->Run(w_count, ops, &spans);
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm_, local));
  const double t1 = NowUs();

  if (stats != nullptr) {
    StepStats st;
    st.spans = std::move(spans);
    st.step_us = t1 - t0;
    st.layout_us = t_layout - t0;
    st.compute_busy_us = BusyUs(st.spans, "compute");
    st.comm_busy_us = BusyUs(st.spans, "comm");
    const double lo = std::min(st.compute_busy_us, st.comm_busy_us);
    st.overlap_efficiency = lo > 0 ? (st.compute_busy_us + st.comm_busy_us - st.step_us) / lo : 0;
    st.recv_rows = lay.total_recv_rows;
    st.flops = static_cast<double>(lay.total_recv_rows) * m.FlopsPerPair() +
               (shared ? static_cast<double>(batch.num_tokens) * 6.0 * h * si : 0);
    for (int w = 0; w < w_count; ++w) st.bytes_sent += wave_bytes_sent(w, true) + wave_bytes_sent(w, false);
    *stats = std::move(st);
  }
  return absl::OkStatus();
}

}  // namespace waveep::ep
