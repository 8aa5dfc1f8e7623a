// Copyright 2026 The waveep Authors.
//
// MoeLayer: the wave schedule, the layout and the exchanges of one step, device-independent. The operations
// (weights, buffers, math) are a LayerOps: ep/cpu_layer_ops.cc (host tasks, BLAS) or ep/cuda_layer_ops.cc (CUDA
// kernels); the WaveScheduler runs either on its two streams.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "ep/ep.h"
#include "ep/ep_internal.h"

namespace waveep::ep {

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
  if (!cfg.node_of_rank.empty()) WAVEEP_RETURN_IF_ERROR(internal::ValidateNodeOfRank(cfg.node_of_rank, num_ranks));
  if (!cfg.device.is_cpu()) WAVEEP_RETURN_IF_ERROR(internal::CheckCudaDevice(cfg.device));
  return absl::OkStatus();
}

Status CheckLayerFitsInMemory(const LayerConfig& cfg, int num_ranks, int64_t tokens_per_rank) {
  const ModelConfig& m = cfg.model;
  // In double: a hostile config (H = I = 2^40) must not wrap an int64 product into a small number.
  const double h = static_cast<double>(m.hidden_size), inter = static_cast<double>(m.moe_intermediate_size);
  const double local = static_cast<double>(m.num_experts) / std::max(1, num_ranks);
  const double shared = cfg.shared_experts ? static_cast<double>(m.num_shared_experts) : 0.0;
  const double weights = 4.0 * 3.0 * inter * h * (local + shared);
  const double t = static_cast<double>(tokens_per_rank), k = static_cast<double>(m.top_k);
  // Tokens in and out (FP32), routing, the encoded tokens, send / receive / return rows (up to every pair), and one
  // wave's FP32 scratch (<= every pair): gathered input, gate/up, activation, output.
  const double drow = 2.0 * h + 4.0 * h / std::max(1, m.fp8_block_size), crow = 2.0 * h;
  const double step = t * (8.0 * h + 16.0 + drow) + t * k * (24.0 + 3.0 * drow + 3.0 * crow) +
                      t * k * 4.0 * (2.0 * h + 3.0 * inter) +
                      (shared > 0 ? t * 4.0 * (2.0 * h + 3.0 * inter * shared) : 0);
  const double total = weights + step;
  const int64_t bytes = total < 9.0e18 ? static_cast<int64_t>(total) : -1;
  return CheckFitsInHostMemory(bytes, absl::StrCat("--model=", m.name, " (H=", m.hidden_size,
                                                   ", I=", m.moe_intermediate_size, ", E=", m.num_experts, ") on ",
                                                   num_ranks, " rank(s) with ", tokens_per_rank, " tokens per rank"));
}

// ---------------------------------------------------------------------------------------------------------------
class MoeLayer::Impl {
 public:
  std::unique_ptr<internal::LayerOps> ops;
  std::unique_ptr<internal::WaveScheduler> scheduler;
  DispatchLayout lay;
  bool dedup_capable = false;  // every rank's operations can deduplicate dispatch rows
};

MoeLayer::MoeLayer(const ProcessContext& ctx, comm::Communicator* comm, LayerConfig cfg, Placement placement)
    : ctx_(ctx), comm_(comm), cfg_(std::move(cfg)), placement_(placement), impl_(std::make_unique<Impl>()) {}

MoeLayer::~MoeLayer() = default;

int64_t MoeLayer::dispatch_row_bytes() const { return cfg_.model.DispatchRowBytes(cfg_.dispatch_dtype); }

namespace internal {

Status CheckCudaDevice(Device device) {
  if (!kernels::CudaKernelsCompiledIn()) {
    return absl::UnavailableError(absl::StrCat("--device=", device.ToString(),
                                               ": this waveep was built without CUDA (reconfigure with nvcc on PATH)"));
  }
  const int n = CudaDeviceCount();
  if (n == 0)
    return absl::UnavailableError(absl::StrCat("--device=", device.ToString(), ": no CUDA device is visible"));
  if (device.ordinal < 0 || device.ordinal >= n) {
    return absl::InvalidArgumentError(absl::StrCat("--device=", device.ToString(), ": only ", n,
                                                   " CUDA device(s) visible (cuda:0 .. cuda:", n - 1, ")"));
  }
  return absl::OkStatus();
}

int64_t SharedSplitToken(const TokenBatch& batch) {
  const int64_t mid = batch.first_token + batch.num_tokens / 2;
  const int64_t boundary = (mid + kSharedBlockRows / 2) / kSharedBlockRows * kSharedBlockRows;
  return std::clamp<int64_t>(boundary - batch.first_token, 0, batch.num_tokens);
}

int64_t SharedPartTokens(const TokenBatch& batch, int part) {
  const int64_t split = SharedSplitToken(batch);
  return part == 0 ? split : batch.num_tokens - split;
}

LayerOps::LayerOps(const ModelConfig& model, DType dispatch_dtype, Device device, MemoryKind kind)
    : m_(model),
      device_(device),
      kind_(kind),
      fp8_(dispatch_dtype == DType::kFP8E4M3),
      h_(model.hidden_size),
      inter_(model.moe_intermediate_size),
      si_(model.moe_intermediate_size * model.num_shared_experts),
      drow_(model.DispatchRowBytes(dispatch_dtype)),
      crow_(2 * model.hidden_size) {}

Status LayerOps::BeginStep(const TokenBatch& batch, const DispatchLayout& lay, float* out) {
  batch_ = &batch;
  lay_ = &lay;
  out_ = out;
  max_wave_ = 0;
  for (int64_t n : lay.wave_recv_total) max_wave_ = std::max(max_wave_, n);
  const int64_t pairs = lay.perm.num_rows();
  WAVEEP_RETURN_IF_ERROR(Ensure(send_, lay.send_buffer_rows * drow_));
  WAVEEP_RETURN_IF_ERROR(Ensure(fwd_, lay.forward_buffer_rows * drow_));
  WAVEEP_RETURN_IF_ERROR(Ensure(ret_recv_, pairs * crow_));
  for (int j = 0; j < 2; ++j) WAVEEP_RETURN_IF_ERROR(Ensure(recv_[j], max_wave_ * drow_));
  ret_send_row_begin_.assign(1, 0);
  for (int64_t n : lay.wave_recv_total) ret_send_row_begin_.push_back(ret_send_row_begin_.back() + n);
  WAVEEP_RETURN_IF_ERROR(Ensure(ret_send_, ret_send_row_begin_.back() * crow_));
  return absl::OkStatus();
}

Status LayerOps::Ensure(Buffer& b, int64_t bytes, MemoryKind kind) {
  if (b.data() != nullptr && static_cast<int64_t>(b.bytes()) >= bytes) return absl::OkStatus();
  b = Buffer();
  WAVEEP_ASSIGN_OR_RETURN(b, Buffer::Allocate(device_, kind, static_cast<size_t>(std::max<int64_t>(bytes, 256))));
  return absl::OkStatus();
}

}  // namespace internal

StatusOr<std::unique_ptr<MoeLayer>> MoeLayer::Create(const ProcessContext& ctx, comm::Communicator* comm,
                                                     LayerConfig cfg, const WeightSource& weights) {
  if (comm == nullptr) return absl::InvalidArgumentError("MoeLayer::Create: communicator is null");
  Status valid = ValidateLayerConfig(cfg, comm->size());
  // The weights must fit before they are loaded (hostile or mistaken shapes end here, not in std::bad_alloc).
  if (valid.ok()) valid = CheckLayerFitsInMemory(cfg, comm->size(), 0);
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm, valid));
  std::string canon =
      absl::StrCat(ModelConfigToJson(cfg.model), "|", DTypeName(cfg.dispatch_dtype), "|", cfg.num_waves, "|",
                   cfg.shared_experts, "|", cfg.dedup, "|", cfg.dedup_hosts, "|", absl::StrJoin(cfg.node_of_rank, ","));
  WAVEEP_RETURN_IF_ERROR(CheckSameOnAllRanks(
      ctx, "layer config (model, --dtype, --waves, shared experts, --dedup, --dedup_hosts, node_of_rank)", canon));
  WAVEEP_ASSIGN_OR_RETURN(Placement placement, Placement::Contiguous(cfg.model.num_experts, comm->size()));
  std::unique_ptr<MoeLayer> layer(new MoeLayer(ctx, comm, std::move(cfg), placement));
  Impl& im = *layer->impl_;
  const LayerConfig& c = layer->cfg_;
  const ModelConfig& m = c.model;
  const int64_t h = m.hidden_size, i = m.moe_intermediate_size;
  const int l = placement.experts_per_rank();
  const int first = placement.FirstExpert(comm->rank());
  const bool shared = c.shared_experts && m.num_shared_experts > 0;
  // The backend must take buffers where the layer keeps them.
  const comm::Capabilities caps = comm->capabilities();
  Status usable = absl::OkStatus();
  if (c.device.is_cpu() && !caps.host_memory) {
    usable = absl::InvalidArgumentError(absl::StrCat(
        "--backend=", comm->name(), " exchanges device memory only; use --device=cuda (or --backend=mpi)"));
  } else if (!c.device.is_cpu() && !caps.device_memory) {
    usable = absl::InvalidArgumentError(absl::StrCat(
        "--backend=", comm->name(), " cannot exchange device memory; use --backend=mpi, cuda_ipc or nccl"));
  }
  if (usable.ok()) {
    if (c.device.is_cpu()) {
      im.ops = internal::NewCpuLayerOps(m, c.dispatch_dtype, shared);
    } else if (auto ops = internal::NewCudaLayerOps(m, c.dispatch_dtype, shared, c.device); ops.ok()) {
      im.ops = *std::move(ops);
    } else {
      usable = ops.status();
    }
  }
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm, usable));
  // Node of every rank (inter-node bytes), and whether every rank's operations can deduplicate dispatch rows.
  const int32_t mine[2] = {ctx.node_id, im.ops->SupportsDedup() ? 1 : 0};
  std::vector<int32_t> all(2 * static_cast<size_t>(comm->size()));
  WAVEEP_RETURN_IF_ERROR(comm->Allgather(mine, sizeof(mine), all.data()));
  bool all_dedup = true;
  for (int r = 0; r < comm->size(); ++r) {
    layer->node_of_rank_.push_back(c.node_of_rank.empty() ? all[2 * r] : c.node_of_rank[r]);
    all_dedup = all_dedup && all[2 * r + 1] != 0;
  }
  layer->num_nodes_ = internal::CountNodes(layer->node_of_rank_);
  im.dedup_capable = all_dedup;
  layer->dedup_ = c.dedup && all_dedup;
  std::vector<float> w13(static_cast<size_t>(l) * 2 * i * h), w2(static_cast<size_t>(l) * h * i), sw13, sw2;
  Status load = absl::OkStatus();
  for (int e = 0; e < l && load.ok(); ++e) {
    load = weights.LoadExpert(first + e, w13.data() + static_cast<size_t>(e) * 2 * i * h,
                              w2.data() + static_cast<size_t>(e) * h * i);
  }
  if (load.ok() && shared) {
    const int64_t si = i * m.num_shared_experts;
    sw13.resize(static_cast<size_t>(2 * si * h));
    sw2.resize(static_cast<size_t>(h * si));
    load = weights.LoadShared(sw13.data(), sw2.data());
  }
  if (load.ok()) load = im.ops->LoadWeights(std::move(w13), std::move(w2), std::move(sw13), std::move(sw2));
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm, Annotate(load, "loading expert weights")));
  auto scheduler = internal::WaveScheduler::Create(c.device, c.timeout);
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm, scheduler.status()));
  im.scheduler = *std::move(scheduler);
  return layer;
}

Status MoeLayer::SetDedup(bool dedup, bool dedup_hosts) {
  WAVEEP_RETURN_IF_ERROR(
      CheckSameOnAllRanks(ctx_, "--dedup / --dedup_hosts", absl::StrCat(dedup ? 1 : 0, dedup_hosts ? 1 : 0)));
  cfg_.dedup = dedup;
  cfg_.dedup_hosts = dedup_hosts;
  dedup_ = dedup && impl_->dedup_capable;
  return absl::OkStatus();
}

Status MoeLayer::SetNumWaves(int num_waves) {
  LayerConfig next = cfg_;
  next.num_waves = num_waves;
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm_, ValidateLayerConfig(next, comm_->size())));
  WAVEEP_RETURN_IF_ERROR(CheckSameOnAllRanks(ctx_, "--waves", absl::StrCat(num_waves)));
  cfg_.num_waves = num_waves;
  return absl::OkStatus();
}

// The wave schedule (docs/architecture.md). Host code only enqueues; the two streams do the work.
Status MoeLayer::Forward(const TokenBatch& batch, float* out, StepStats* stats) {
  Impl& im = *impl_;
  internal::LayerOps& ops = *im.ops;
  const ModelConfig& m = cfg_.model;
  const int64_t h = m.hidden_size;
  const int k = m.top_k;
  const int w_count = cfg_.num_waves;
  const int r_count = comm_->size();
  const int64_t drow = dispatch_row_bytes(), crow = combine_row_bytes();
  const double t0 = NowUs();
  std::vector<SpanRecord> spans;
  Status shape_ok =
      (batch.hidden == h && batch.top_k == k)
          ? absl::OkStatus()
          : absl::InvalidArgumentError(absl::StrCat("token batch has H=", batch.hidden, " K=", batch.top_k,
                                                    " but the model has H=", h, " K=", k));
  // Global token ids place the shared expert's blocks (and name tokens in errors): they must be ids.
  if (shape_ok.ok() && (batch.first_token < 0 || batch.num_tokens < 0 ||
                        batch.first_token > std::numeric_limits<int64_t>::max() / 2 - batch.num_tokens)) {
    shape_ok = absl::InvalidArgumentError(absl::StrCat("token batch has first_token=", batch.first_token,
                                                       " num_tokens=", batch.num_tokens,
                                                       ": global token ids must be in [0, 2^62)"));
  }
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm_, shape_ok));
  WAVEEP_ASSIGN_OR_RETURN(im.lay, BuildDispatchLayout(*comm_, placement_, batch, w_count, dedup_,
                                                      hierarchical() ? &node_of_rank_ : nullptr));
  const DispatchLayout& lay = im.lay;
  const double t_layout = NowUs();
  spans.push_back(SpanRecord{"comm", "layout", t0, t_layout, 0, 0});
  if (GlobalTracer().enabled()) GlobalTracer().Add(TraceSpan{"comm", "layout", "comm", t0, t_layout - t0, {}});
  const bool shared = cfg_.shared_experts && m.num_shared_experts > 0;
  const int64_t si = m.moe_intermediate_size * m.num_shared_experts;
  const int me = comm_->rank();
  // Buffers grown to this step's needs, inputs staged (on the comm stream, ahead of pack(0)).
  WAVEEP_RETURN_IF_ERROR(internal::AgreeStatus(*comm_, ops.Prepare(batch, lay, out, im.scheduler->comm_stream())));

  // Bytes this rank sends to other ranks in wave w's dispatch or combine (only to other nodes: `internode`).
  auto wave_bytes_sent = [&](int w, bool dispatch, bool internode = false) {
    double b = 0;
    for (int p = 0; p < r_count; ++p) {
      if (p == me || (internode && node_of_rank_[p] == node_of_rank_[me])) continue;
      const int64_t i = w * r_count + p;
      b += dispatch ? (lay.dsend_rows[i] + lay.x1_send_rows[i]) * drow : lay.recv_rows[i] * crow;
    }
    return b;
  };
  // Wave w's blocks of `row` bytes: to peer p send_rows[w * R + p] rows from send row send_begin[...], and from it
  // recv_rows[...] rows into recv row recv_begin[...].
  using Rows = std::vector<int64_t>;
  auto wave_args = [&](int w, void* send, const Rows& send_begin, const Rows& send_rows, void* recv,
                       const Rows& recv_begin, const Rows& recv_rows, int64_t row, std::string label) {
    comm::AlltoallvArgs a;
    a.send = send;
    a.recv = recv;
    a.label = std::move(label);
    for (int p = 0; p < r_count; ++p) {
      const int64_t i = w * r_count + p;
      a.send_bytes.push_back(send_rows[i] * row);
      a.send_offsets.push_back(send_begin[i] * row);
      a.recv_bytes.push_back(recv_rows[i] * row);
      a.recv_offsets.push_back(recv_begin[i] * row);
    }
    return a;
  };
  auto dispatch_args = [&](int w) {
    return wave_args(w, ops.send(), lay.dsend_row_begin, lay.dsend_rows, ops.recv(w % 2), lay.drecv_row_begin,
                     lay.drecv_rows, drow, absl::StrCat("alltoallv dispatch(", w, ")"));
  };
  auto proxy_args = [&](int w) {  // hierarchical exchange 1: to my proxies on other nodes
    return wave_args(w, ops.send(), lay.x1_send_row_begin, lay.x1_send_rows, ops.forward_buffer(),
                     lay.x1_recv_row_begin, lay.x1_recv_rows, drow,
                     absl::StrCat("alltoallv dispatch(", w, ") to node proxies"));
  };
  auto combine_args = [&](int w) {  // the rows I computed back to their origins, into their send positions
    return wave_args(w, ops.ret_send(w), lay.recv_row_begin, lay.recv_rows, ops.ret_recv(), lay.send_row_begin,
                     lay.send_rows, crow, absl::StrCat("alltoallv combine(", w, ")"));
  };

  // ---- run the schedule: the same on every device; the ops enqueue host tasks or kernels ----
  internal::WaveOps wave;
  wave.pack = [&](int w, Stream& st) { return ops.Pack(w, st); };
  wave.dispatch = [&](int w, Stream& st) {
    if (lay.hierarchical) {
      WAVEEP_RETURN_IF_ERROR(comm_->AlltoallvAsync(proxy_args(w), st));
      WAVEEP_RETURN_IF_ERROR(ops.Forward(w, st));
    }
    return comm_->AlltoallvAsync(dispatch_args(w), st);
  };
  wave.gemm = [&](int w, Stream& st) { return ops.Gemm(w, st); };
  wave.unpack = [&](int w, Stream& st) { return ops.Unpack(w, st); };
  wave.combine = [&](int w, Stream& st) { return comm_->AlltoallvAsync(combine_args(w), st); };
  if (shared) {
    wave.head = [&](Stream& st) { return ops.Shared(0, st); };
    wave.tail = [&](Stream& st) { return ops.Shared(1, st); };
  }
  wave.finish = [&](Stream& st) { return ops.Finish(st); };
  wave.dispatch_bytes = [&](int w) { return wave_bytes_sent(w, true); };
  wave.combine_bytes = [&](int w) { return wave_bytes_sent(w, false); };
  wave.gemm_flops = [&](int w) { return static_cast<double>(lay.wave_recv_total[w]) * m.FlopsPerPair(); };
  wave.head_flops = static_cast<double>(internal::SharedPartTokens(batch, 0)) * 6.0 * h * si;
  wave.tail_flops = static_cast<double>(internal::SharedPartTokens(batch, 1)) * 6.0 * h * si;
  Status local = im.scheduler->Run(w_count, wave, &spans);
  if (local.ok()) local = ops.Collect();
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
    for (int w = 0; w < w_count; ++w) {
      st.bytes_sent_dispatch += wave_bytes_sent(w, true);
      st.bytes_sent += wave_bytes_sent(w, true) + wave_bytes_sent(w, false);
      st.bytes_sent_internode += wave_bytes_sent(w, true, true) + wave_bytes_sent(w, false, true);
    }
    *stats = std::move(st);
  }
  return absl::OkStatus();
}

}  // namespace waveep::ep
