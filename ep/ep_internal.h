// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "ep/ep.h"
#ifndef WAVEEP_EP_EP_INTERNAL_H_
#define WAVEEP_EP_EP_INTERNAL_H_

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "comm/comm.h"
#include "ep/ep.h"
#include "runtime/runtime.h"

namespace waveep::ep::internal {

// OK only if `local` is OK on every rank of `comm`; otherwise every rank returns the lowest failing rank's error
// ("rank R: ..."). Collective: runtime's AgreeOnStatus over comm.Allgather.
Status AgreeStatus(comm::Communicator& comm, const Status& local);

// InvalidArgument naming node_of_rank unless it has one node id in [0, num_ranks) per rank (LayerConfig,
// BuildDispatchLayout).
Status ValidateNodeOfRank(const std::vector<int>& node_of_rank, int num_ranks);
// Distinct node ids in node_of_rank (validated): hierarchical dispatch needs at least two.
int CountNodes(const std::vector<int>& node_of_rank);

// What one step does per wave; the WaveScheduler decides when. Every operation *enqueues* its work on the stream
// it is given and returns at once: a CPU implementation enqueues a host task (Stream::Enqueue), a CUDA one launches
// kernels / copies on stream.native(), a communicator enqueues an asynchronous exchange. Work must only touch the
// buffers the schedule hands it:
//   head(s)          compute stream, first: work that needs only the step's inputs (overlaps the first pack and
//                    dispatch, the pipeline's fill); optional
//   pack(w, s)       comm stream: fill the send rows of wave w
//   dispatch(w, s)   comm stream: exchange wave w into receive buffer w % 2
//   gemm(w, s)       compute stream: consume receive buffer w % 2 and compute wave w
//   unpack(w, s)     compute stream: write wave w's results into its own return slot (one per wave)
//   combine(w, s)    comm stream: send wave w's return slot back to the rows' owners
//   tail(s)          compute stream, after the last unpack (overlaps the last combines, the drain); optional
//   finish(s)        compute stream, after the last combine
struct WaveOps {
  using WaveFn = std::function<Status(int, Stream&)>;
  using StepFn = std::function<Status(Stream&)>;
  WaveFn pack, dispatch, gemm, unpack, combine;
  StepFn head, tail, finish;
  // For span annotations (optional).
  std::function<double(int)> dispatch_bytes, combine_bytes, gemm_flops;
  double head_flops = 0, tail_flops = 0;
};

// The operations of one MoE layer step on one device, behind the WaveScheduler: MoeLayer::Forward owns the
// schedule, the layout, the exchanges and the statistics, and a LayerOps owns the weights, the buffers and the math.
// ep/cpu_layer_ops.cc runs them as host tasks (BLAS), ep/cuda_layer_ops.cc as kernels on CUDA streams. Every Wave/
// Step call enqueues on the stream it is given and returns at once (WaveOps rules). Buffers the exchanges use
// (send, recv[2], ret_send, ret_recv) are in the ops' memory (host or device) and valid after Prepare.
//
// Row formats shared by both (so any mix of ranks exchanges the same bytes): a dispatch row is the token in BF16
// (2H bytes), or FP8 e4m3 [H] followed by its H / block FP32 scales; a combine row is the expert output in BF16.
// The shared expert on the CPU runs on blocks of this many rows aligned to *global* token ids, so that a token's
// result does not depend on np (cpu_layer_ops.cc).
inline constexpr int64_t kSharedBlockRows = 64;
// Where LayerOps::Shared splits this rank's tokens: local index of the first token of part 1, the global block
// boundary (a multiple of kSharedBlockRows) nearest the middle of the batch, clamped into [0, num_tokens].
int64_t SharedSplitToken(const TokenBatch& batch);
// Tokens in part 0 or 1 of the shared expert.
int64_t SharedPartTokens(const TokenBatch& batch, int part);

class LayerOps {
 public:
  // `device` and `kind` say where the step's buffers live (CPU host memory, or device memory of one GPU).
  LayerOps(const ModelConfig& model, DType dispatch_dtype, Device device, MemoryKind kind);
  virtual ~LayerOps() = default;
  // Takes this rank's local expert weights in FP32 ([L][2I, H], [L][H, I]; gate rows then up rows) and the shared
  // expert's ([2 nS I, H], [H, nS I]; empty when not used). Called once, before any step.
  virtual Status LoadWeights(std::vector<float> w13, std::vector<float> w2, std::vector<float> shared_w13,
                             std::vector<float> shared_w2) = 0;
  // Sizes this step's buffers and stages its inputs on `stream` (the comm stream: everything on the compute stream
  // waits for dispatch(0), so it sees them). `batch`, `lay` and `out` stay valid until the step's streams drained.
  // Implementations start with BeginStep.
  virtual Status Prepare(const TokenBatch& batch, const DispatchLayout& lay, float* out, Stream& stream) = 0;
  void* send() { return send_.data(); }
  void* recv(int j) { return recv_[j].data(); }
  // Wave w's return slot: its rows in recv row order (every wave has its own, so unpack never waits for a combine).
  void* ret_send(int w) { return ret_send_.as<uint8_t>() + ret_send_row_begin_[w] * crow_; }
  void* ret_recv() { return ret_recv_.data(); }
  // Receives hierarchical dispatch's exchange 1 (DispatchLayout::x1_recv_*), every wave.
  void* forward_buffer() { return fwd_.data(); }
  // Whether Pack / Gemm / Unpack follow a deduplicated layout (dsend_token, a_rows into shared rows, ret_rows) and
  // Forward is implemented (hierarchical layouts).
  virtual bool SupportsDedup() const { return false; }
  virtual Status Pack(int w, Stream& stream) = 0;  // send rows of wave w (encodes the tokens at w = 0)
  // Hierarchical dispatch, between its two exchanges: copies the forward buffer's rows fwd_from[w] to the send
  // buffer's rows fwd_to[w].
  virtual Status Forward(int w, Stream& stream) {
    (void)w;
    (void)stream;
    return absl::UnimplementedError("these layer operations do not forward dispatch rows");
  }
  virtual Status Gemm(int w, Stream& stream) = 0;    // recv(w % 2) -> wave w's expert outputs
  virtual Status Unpack(int w, Stream& stream) = 0;  // wave w's outputs -> ret_send(w), BF16, recv row order
  // The shared expert on part 0 (the first half) or part 1 (the rest) of this rank's tokens: the schedule runs part
  // 0 in the fill and part 1 in the drain. The split depends only on the tokens, never on W, so the output does not
  // either.
  virtual Status Shared(int part, Stream& stream) = 0;
  virtual Status Finish(Stream& stream) = 0;  // out = combine-reduce(ret_recv) (+ shared), in host memory (+ Collect)
  // On the calling thread, after both streams have drained without error: whatever of Finish's result still has to
  // reach `out` (the CUDA ops copy pinned -> the caller's array here, not in a host function on the driver's
  // callback thread).
  virtual Status Collect() { return absl::OkStatus(); }

 protected:
  // Remembers the step and sizes the transit buffers (send: the layout's send rows; ret_send and ret_recv: every
  // pair; recv: the largest wave; forward: the layout's forward rows). Sets max_wave_ and the return slots.
  Status BeginStep(const TokenBatch& batch, const DispatchLayout& lay, float* out);
  // Grows `b` to at least `bytes` (contents not kept; freed first: device memory is the scarce kind). Buffers are
  // reused across steps.
  Status Ensure(Buffer& b, int64_t bytes) { return Ensure(b, bytes, kind_); }
  Status Ensure(Buffer& b, int64_t bytes, MemoryKind kind);
  // First row of wave w among all the rows this rank receives in a step (waves in order; a_rows[w] has
  // wave_recv_total[w] entries). Valid after BeginStep.
  int64_t wave_row_begin(int w) const { return ret_send_row_begin_[w]; }

  const ModelConfig m_;
  const Device device_;
  const MemoryKind kind_;
  const bool fp8_;
  const int64_t h_, inter_, si_;  // hidden, expert intermediate, shared intermediate (nS * I)
  const int64_t drow_, crow_;     // dispatch and combine row bytes
  // The step in flight (BeginStep).
  const TokenBatch* batch_ = nullptr;
  const DispatchLayout* lay_ = nullptr;
  float* out_ = nullptr;
  int64_t max_wave_ = 0;  // rows of the largest wave this rank receives
  // Transit rows: send (perm order), double-buffered receive, one return slot per wave, returned rows (perm order).
  Buffer send_, recv_[2], ret_send_, ret_recv_, fwd_;
  std::vector<int64_t> ret_send_row_begin_;  // wave_row_begin: first row of wave w's return slot in ret_send_
};
// OK when `device` (a CUDA device) is compiled in and visible; otherwise an error naming --device.
Status CheckCudaDevice(Device device);
// `shared` = run the shared expert.
std::unique_ptr<LayerOps> NewCpuLayerOps(const ModelConfig& model, DType dispatch_dtype, bool shared);
// InvalidArgument/Unavailable when `device` is not a usable CUDA device or the build has no CUDA.
StatusOr<std::unique_ptr<LayerOps>> NewCudaLayerOps(const ModelConfig& model, DType dispatch_dtype, bool shared,
                                                    Device device);

// The wave schedule (docs/architecture.md) on a comm and a compute stream:
//
//   comm:    pack(0) dispatch(0) pack(1) dispatch(1) combine(0) pack(2) dispatch(2) combine(1) ... combine(W-1)
//   compute: head                gemm(0) unpack(0)   gemm(1) unpack(1)   gemm(2) ...  tail  finish
//
// Dependencies (events): head after the inputs staged on the comm stream (LayerOps::Prepare); gemm(w) after
// dispatch(w); pack(w+2) after gemm(w) consumed recv buffer w % 2; combine(w) after unpack(w); finish after
// combine(W-1). Return slots are per wave, so unpack never waits for a combine: the compute stream runs on into
// the tail while the comm stream still sends earlier waves back.
// Written only against Stream/Event, so it runs unchanged on CPU worker threads and CUDA streams.
class WaveScheduler {
 public:
  // `timeout` bounds every wait (zero = DefaultTimeout()).
  static StatusOr<std::unique_ptr<WaveScheduler>> Create(Device device, absl::Duration timeout);

  // Enqueues one step of `num_waves` (>= 1) waves, waits for both streams, returns the first error of either (a
  // failing task fails the other stream through the events instead of leaving it waiting; after a failure the
  // streams are replaced so the next Run starts clean). Appends one span per task to `spans` (may be null).
  // Not thread-safe: one Run at a time.
  Status Run(int num_waves, const WaveOps& ops, std::vector<SpanRecord>* spans);

  Stream& comm_stream() { return *comm_; }
  Stream& compute_stream() { return *compute_; }

 private:
  WaveScheduler() = default;
  Status EnsureEvents(int num_waves);
  void AddSpan(SpanRecord r);
  // Enqueues `enqueue`'s work on `s` between two marker tasks that time it as one span.
  // NOTES: on CUDA the markers are host functions (approximate times); event-based timing comes with CUDA waves.
  Status Timed(Stream& s, int slot, std::string name, double bytes, double flops,
               const std::function<Status(Stream&)>& enqueue);

  Device device_;
  absl::Duration timeout_;
  std::unique_ptr<Stream> comm_, compute_;
  std::unique_ptr<Event> inputs_ready_, all_combined_;
  std::vector<std::unique_ptr<Event>> dispatch_done_, recv_free_, unpacked_;
  std::mutex spans_mu_;
  std::vector<SpanRecord>* spans_ = nullptr;
  std::vector<double> begin_us_;  // one slot per timed operation of the current step
};

}  // namespace waveep::ep::internal

#endif  // WAVEEP_EP_EP_INTERNAL_H_
