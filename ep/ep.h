// Copyright 2026 The waveep Authors.
//
// ep/ep.h — expert parallelism: placement, routing inputs, dispatch layout, the MoE layer and its wave schedule.
// Checkpoint and token files (safetensors) are the module above it: ep/io/io.h.
//
// One MoE layer step on every rank (collective over the communicator):
//
//   WAVEEP_ASSIGN_OR_RETURN(auto layer, MoeLayer::Create(ctx, comm.get(), cfg, weights.get()));
//   TokenBatch batch = MakeSyntheticBatch(cfg.model, RoutingMode::kGate, seed, first_token, num_tokens);
//   std::vector<float> out(batch.num_tokens * H);
//   StepStats stats;
//   WAVEEP_RETURN_IF_ERROR(layer->Forward(batch, out.data(), &stats));
//
// Forward = layout (validate routing on every rank, exchange counts per (rank, local expert), split local experts
// into waves balanced by routed rows, allgather wave boundaries) + the wave schedule of docs/architecture.md run by
// WaveScheduler on a compute stream and a comm stream:
//
//   comm:     dispatch(0) dispatch(1) combine(0) dispatch(2) combine(1) ... combine(W-1)
//   compute:        gemm(0)        gemm(1)          gemm(2)      ...  shared-expert
//
// Receive and return buffers are double-buffered: dispatch(w+2) waits until gemm(w) has consumed its rows and
// gemm(w+2) waits until combine(w) has sent its results. The origin rank reduces the K returned rows of each token
// in slot order in FP32, so the output is bitwise identical for every W, every np (same global tokens) and every
// run. W = 1 is exactly the sequential baseline (dispatch all -> grouped GEMM -> combine all).
#ifndef WAVEEP_EP_EP_H_
#define WAVEEP_EP_EP_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/comm.h"
#include "kernels/kernels.h"
#include "runtime/runtime.h"

namespace waveep::ep {

// ---- placement -------------------------------------------------------------------------------------------------
// Expert -> rank. Contiguous: rank r owns experts [r*E/R, (r+1)*E/R).
class Placement {
 public:
  // InvalidArgument when E is not divisible by R (name both numbers).
  static StatusOr<Placement> Contiguous(int num_experts, int num_ranks);
  int num_experts() const { return num_experts_; }
  int num_ranks() const { return num_ranks_; }
  int experts_per_rank() const { return num_experts_ / num_ranks_; }
  int OwnerOf(int expert) const { return expert / experts_per_rank(); }
  int FirstExpert(int rank) const { return rank * experts_per_rank(); }

 private:
  int num_experts_ = 0;
  int num_ranks_ = 1;
};

// ---- inputs ----------------------------------------------------------------------------------------------------
// Local tokens of one rank: hidden states and their routing. Global token ids are first_token .. first_token+T-1.
struct TokenBatch {
  int64_t first_token = 0;
  int64_t num_tokens = 0;
  int64_t hidden = 0;
  int top_k = 0;
  std::vector<float> x;             // [T, H], FP32 holding BF16-representable values
  std::vector<int32_t> topk_idx;    // [T, K]
  std::vector<float> topk_weights;  // [T, K]
};

enum class RoutingMode {
  kGate,     // router: synthetic logits -> the model's top-k gating (softmax / sigmoid, groups, scaling)
  kUniform,  // K distinct experts uniformly at random, weights 1/K
  kSkewed,   // half of the tokens' first slot on expert 0, the upper half of the experts never chosen
};
StatusOr<RoutingMode> ParseRoutingMode(absl::string_view name);
absl::string_view RoutingModeName(RoutingMode m);

// Deterministic from (seed, global token id): any rank or a single process regenerates the same batch.
StatusOr<TokenBatch> MakeSyntheticBatch(const ModelConfig& model, RoutingMode mode, uint64_t seed, int64_t first_token,
                                        int64_t num_tokens);

// The router on real hidden states: logits[t][e] = x[t] . gate_weight[e] (FP32 inputs, double accumulation in a
// fixed order, so a token's routing does not depend on the rank count), then kernels::TopkGating with the model's
// scoring, groups, renormalisation and scaling; `bias` [E] (nullable) is used for selection only. Overwrites
// batch->topk_idx / topk_weights (and top_k).
Status RouteWithGate(const ModelConfig& model, const float* gate_weight, const float* bias, TokenBatch* batch);

// ---- weights ---------------------------------------------------------------------------------------------------
// Source of expert weights in FP32, nn.Linear layout: w13 [2I, H] (rows 0..I-1 gate W1, I..2I-1 up W3), w2 [H, I].
// Implementations must be thread-compatible and deterministic.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Routed expert `expert` (global id).
  virtual Status LoadExpert(int expert, float* w13, float* w2) const = 0;
  // Shared expert(s) fused into one MLP of intermediate size n_shared * I: w13 [2*n_shared*I, H], w2 [H, n_shared*I].
  virtual Status LoadShared(float* w13, float* w2) const = 0;
};

// Weights ~ U(-1,1)/sqrt(fan_in), rounded to BF16, from (seed, expert id).
std::unique_ptr<WeightSource> MakeSyntheticWeights(const ModelConfig& model, uint64_t seed);

// ---- layout ----------------------------------------------------------------------------------------------------
// Splits L local experts with `rows[e]` routed rows into W contiguous waves with balanced rows (every wave has at
// least one expert). Returns W+1 boundaries. InvalidArgument if W < 1 or W > L.
StatusOr<std::vector<int>> PartitionWaves(const std::vector<int64_t>& rows, int num_waves);

// Who sends what to whom, per wave, for one step. Built collectively by BuildDispatchLayout.
struct DispatchLayout {
  int num_ranks = 1;
  int rank = 0;
  int local_experts = 0;  // L
  int num_waves = 1;      // W
  // wave_begin[r * (W+1) + w]: first local expert of rank r's wave w (allgathered).
  std::vector<int> wave_begin;
  // Sender side: my T*K pairs grouped by global expert (== by destination rank, then its local expert).
  kernels::ExpertPermutation perm;
  // send_row_begin[w * R + p], send_rows[w * R + p]: rows of perm order sent to peer p in wave w.
  std::vector<int64_t> send_row_begin, send_rows;
  // Receiver side. recv_counts[s * L + e]: rows from source s for my local expert e.
  std::vector<int64_t> recv_counts;
  // Wave w's receive buffer is source-major: recv_row_begin[w * R + s], recv_rows[w * R + s] (rows within wave w).
  std::vector<int64_t> recv_row_begin, recv_rows;
  std::vector<int64_t> wave_recv_total;  // [W]
  // Expert-major order of wave w (local expert, then source, then token): a_rows[w][i] = row of wave w's receive
  // buffer (dispatch rows, below) feeding GEMM row i; ret_rows[w][i] = row of wave w's return slot (one per pair, in
  // the recv_row_begin layout above) that GEMM row i's result goes to. a_expert_offsets[w] has (experts in wave + 1)
  // entries.
  std::vector<std::vector<int64_t>> a_rows;
  std::vector<std::vector<int64_t>> ret_rows;
  std::vector<std::vector<int64_t>> a_expert_offsets;
  int64_t total_recv_rows = 0;  // pairs this rank computes in the step

  // Dispatch rows: what dispatch(w) moves. Without deduplication, one row per (token, expert) pair: the send_* and
  // recv_* layout above. With it (`dedup`), one row per (token, destination rank) in each wave: a token with several
  // experts in one wave of a rank crosses the link to that rank once, and the receiver's a_rows point several GEMM
  // rows at the same received row. The combine still returns one row per pair (send_* / recv_*), so the origin
  // reduces exactly as without deduplication and the output is bitwise the same.
  bool dedup = false;
  // dsend_row_begin[w * R + p], dsend_rows[w * R + p]: rows of the dispatch send buffer for peer p in wave w;
  // dsend_token[r]: the local token (batch index) of send row r, or -1 for a row forwarded (hierarchical, below).
  std::vector<int64_t> dsend_row_begin, dsend_rows, dsend_token;
  // drecv_row_begin[w * R + x], drecv_rows[w * R + x]: rows that rank x delivers into wave w's receive buffer (its
  // own, and with `hierarchical` those it forwards).
  std::vector<int64_t> drecv_row_begin, drecv_rows;
  int64_t send_buffer_rows = 0;  // rows of the dispatch send buffer (every wave)

  // Hierarchical dispatch (`dedup` with the ranks on several nodes, BuildDispatchLayout's node_of_rank): a token
  // crosses to each other node once per wave, to one proxy rank there (the rank with the sender's index within its
  // node, modulo that node's ranks), which forwards it to the ranks of its node that need it. dispatch(w) is then
  // exchange 1 (origin -> its proxies on other nodes: x1_*), forwarding (copy fwd_from rows of the forward buffer to
  // fwd_to rows of the send buffer) and exchange 2 (within the node: dsend_* / drecv_*, own rows and forwarded
  // ones). Only the transport changes: a_rows feed the GEMM the same rows in the same order, and the combine
  // returns one row per pair directly, as without it, so the output is the same bits.
  bool hierarchical = false;
  // x1_send_row_begin/rows[w * R + p]: send buffer rows to proxy p in wave w; x1_recv_row_begin/rows[w * R + s]:
  // forward buffer rows from origin s in wave w. All zero when not hierarchical.
  std::vector<int64_t> x1_send_row_begin, x1_send_rows, x1_recv_row_begin, x1_recv_rows;
  std::vector<std::vector<int64_t>> fwd_from, fwd_to;  // [w]
  int64_t forward_buffer_rows = 0;
};

// Collective. Validates routing on every rank first (an out-of-range expert index anywhere fails every rank with the
// offending rank/token/slot named), then exchanges counts and wave boundaries; with `dedup` (every rank must pass the
// same value) also each pair's dispatch row (one more all-to-all-v of 4 bytes per pair, host memory). With `dedup`
// and `node_of_rank` (the node of every rank, ids in [0, R), the same on every rank) naming at least two nodes, the
// layout is hierarchical (two more collectives: per-proxy counts, and 4 bytes per forwarded row).
StatusOr<DispatchLayout> BuildDispatchLayout(comm::Communicator& comm, const Placement& placement,
                                             const TokenBatch& batch, int num_waves, bool dedup = false,
                                             const std::vector<int>* node_of_rank = nullptr);

// ---- the layer -------------------------------------------------------------------------------------------------
struct LayerConfig {
  ModelConfig model;
  DType dispatch_dtype = DType::kBF16;  // bf16, or fp8 (e4m3 + per-block scales); combine is always bf16
  int num_waves = 1;
  bool shared_experts = true;  // add the model's shared expert(s), computed locally
  // Send each token once per destination rank and wave instead of once per (token, expert) pair (DispatchLayout).
  // Output unchanged. On the CPU; the CUDA operations send one row per pair for now (MoeLayer::dedup() says which).
  bool dedup = true;
  // With `dedup`, when the ranks span several nodes: each token crosses to each other node once per wave and is
  // forwarded inside it (DispatchLayout::hierarchical). Output unchanged.
  bool dedup_hosts = true;
  // Node of every rank of the communicator, ids in [0, R): what `dedup_hosts` and StepStats::bytes_sent_internode go
  // by. Empty = the hosts the ranks run on (ProcessContext::node_id). Tests set it to emulate nodes on one host.
  std::vector<int> node_of_rank;
  Device device = Device::Cpu();
  absl::Duration timeout = absl::ZeroDuration();  // zero = DefaultTimeout()
};

// Validates LayerConfig against the model and the number of ranks (before any communication): E % R, waves in
// [1, E/R], fp8 needs H % fp8_block_size == 0, node_of_rank (when set) one id in [0, R) per rank, device supported.
// InvalidArgument naming the field.
Status ValidateLayerConfig(const LayerConfig& cfg, int num_ranks);

// Host memory one rank needs for `cfg` at `tokens_per_rank` (FP32 weights of its experts and the shared expert, the
// step's token, transit and scratch buffers; an upper estimate), checked against what the machine has available
// before anything is allocated: InvalidArgument naming the model, the token count and both sizes. Sizes whose
// product overflows count as too large. MoeLayer::Create checks the weights (tokens_per_rank = 0); callers that
// build token batches check their token counts too (the CLI does, per --tokens_per_rank / --tokens_list value).
Status CheckLayerFitsInMemory(const LayerConfig& cfg, int num_ranks, int64_t tokens_per_rank);

// A timed interval on one stream during a step.
struct SpanRecord {
  std::string stream;  // "comm" or "compute"
  std::string name;    // "dispatch(2)", "gemm(2)", "combine(1)", "shared"
  double start_us = 0;
  double end_us = 0;
  double bytes = 0;  // bytes sent by this rank (comm spans)
  double flops = 0;  // FLOPs (compute spans)
};

struct StepStats {
  double step_us = 0;               // Forward() wall time, layout included
  double layout_us = 0;             // routing validation + count/boundary exchange
  double compute_busy_us = 0;       // union of compute-stream spans
  double comm_busy_us = 0;          // union of comm-stream spans
  double overlap_efficiency = 0;    // (comm + compute - (step - layout)) / min(comm, compute); < 0 when idle
  double flops = 0;                 // routed + shared FLOPs computed on this rank
  double bytes_sent = 0;            // dispatch + combine bytes this rank sent to other ranks
  double bytes_sent_dispatch = 0;   // the dispatch part of bytes_sent
  double bytes_sent_internode = 0;  // the part of bytes_sent that went to ranks on other nodes
  int64_t recv_rows = 0;            // rows this rank computed (routed)
  std::vector<SpanRecord> spans;
};

// Union length of intervals (overlapping spans on one stream count once).
double BusyUs(const std::vector<SpanRecord>& spans, absl::string_view stream);

class MoeLayer {
 public:
  // Loads this rank's experts from `weights` (not owned; used only during Create). Collective (checks the config
  // is the same on every rank).
  static StatusOr<std::unique_ptr<MoeLayer>> Create(const ProcessContext& ctx, comm::Communicator* comm,
                                                    LayerConfig cfg, const WeightSource& weights);
  ~MoeLayer();

  // out [T, H] = routed experts (+ shared) for the batch's tokens. Collective; every rank gets the same error if
  // any rank fails. `stats` may be null.
  Status Forward(const TokenBatch& batch, float* out, StepStats* stats);

  // Changes the number of waves for later steps (weights are kept). Collective: every rank must pass the same value
  // (checked); InvalidArgument outside [1, local experts].
  Status SetNumWaves(int num_waves);

  // Turns dispatch deduplication (and its per-node form) on or off for later steps. Collective: every rank must
  // pass the same values (checked). Where the operations cannot deduplicate (CUDA for now) it stays off: see dedup().
  Status SetDedup(bool dedup, bool dedup_hosts);
  // Whether steps deduplicate dispatch rows (LayerConfig::dedup, where every rank's operations can).
  bool dedup() const { return dedup_; }
  // Whether steps send each token once per destination node (dedup() && dedup_hosts, ranks on several nodes).
  bool hierarchical() const { return dedup_ && cfg_.dedup_hosts && num_nodes_ > 1; }

  const LayerConfig& config() const { return cfg_; }
  const Placement& placement() const { return placement_; }
  // Bytes of one dispatched row (payload + FP8 scales) and of one combined row.
  int64_t dispatch_row_bytes() const;
  int64_t combine_row_bytes() const { return cfg_.model.hidden_size * 2; }

 private:
  MoeLayer(const ProcessContext& ctx, comm::Communicator* comm, LayerConfig cfg, Placement placement);
  class Impl;
  const ProcessContext& ctx_;
  comm::Communicator* comm_;
  LayerConfig cfg_;
  Placement placement_;
  bool dedup_ = false;
  std::vector<int> node_of_rank_;  // node id of every rank of the communicator (LayerConfig::node_of_rank)
  int num_nodes_ = 1;
  std::unique_ptr<Impl> impl_;
};

// ---- verification ----------------------------------------------------------------------------------------------
// Independent dense reference: for each token, a plain loop over its K experts with the regenerated weights (no
// permute, no communication, no BLAS); FP8 dispatch is modelled by rounding x through an independent
// nearest-value e4m3 search with the same block scales.
struct VerifyResult {
  double max_rel_l2 = 0;      // max over tokens of ||out - ref|| / ||ref||
  double max_normalized = 0;  // max over tokens of ||out - ref|| / (sum_k |w_k| ||y_k|| + ||shared||) — checked
  double tolerance = 0;
  int64_t worst_token = -1;  // global id
  bool passed = false;
};
// Tolerance: combine rows travel in BF16 (unit roundoff 2^-9 per element), so ||out - ref|| <= 2^-9 *
// (sum_k |w_k| ||y_k||) + FP32 reordering (~1e-6); we allow 2^-8.
StatusOr<VerifyResult> VerifyAgainstReference(const LayerConfig& cfg, const WeightSource& weights,
                                              const TokenBatch& batch, const float* out);

// FNV-1a over every rank's output bytes in global token order (chained rank 0 -> R-1). Same value on every rank.
StatusOr<uint64_t> GlobalChecksum(const ProcessContext& ctx, const float* out, int64_t num_floats);

}  // namespace waveep::ep

#endif  // WAVEEP_EP_EP_H_
