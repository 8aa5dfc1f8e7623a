// Copyright 2026 The waveep Authors.
//
// ep/io/io.h — the public header of the I/O module: what waveep reads from and writes to disk, above the layer.
//
//   safetensors.h  safetensors files and multi-file checkpoints: mmap reader by tensor name, writer (namespace waveep)
//   checkpoints    one MoE layer's expert, shared-expert and router weights from a Hugging Face-style directory,
//                  as an ep::WeightSource (checkpoint.cc)
//   token files    `waveep run --input / --output`: hidden states and routing in, outputs out (token_io.cc)
//
// Dependencies: runtime (Status, DType, MPI bootstrap), kernels (the BF16 / F16 / FP8 -> FP32 converters the reader
// widens with) and ep (WeightSource, TokenBatch). Nothing below it includes it; the CLI and the tests do.
#ifndef WAVEEP_EP_IO_IO_H_
#define WAVEEP_EP_IO_IO_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ep/ep.h"
#include "ep/io/safetensors.h"  // IWYU pragma: export
#include "runtime/runtime.h"

namespace waveep::ep {

// ---- checkpoints (checkpoint.cc) -------------------------------------------------------------------------------
// Hugging Face-style checkpoint directories: config.json + safetensors (model.safetensors.index.json or
// model.safetensors). One MoE layer at a time:
//
//   WAVEEP_ASSIGN_OR_RETURN(ModelConfig m, LoadCheckpointConfig("/models/DeepSeek-V3"));
//   WAVEEP_ASSIGN_OR_RETURN(auto w, OpenCheckpoint("/models/DeepSeek-V3", m, /*layer=*/3));
//   WAVEEP_ASSIGN_OR_RETURN(auto layer, MoeLayer::Create(ctx, comm, cfg, *w));   // reads only this rank's experts
//   std::vector<float> gate, bias;
//   WAVEEP_RETURN_IF_ERROR(w->LoadRouter(&gate, &bias));
//   WAVEEP_RETURN_IF_ERROR(RouteWithGate(m, gate.data(), bias.empty() ? nullptr : bias.data(), &batch));
//
// Tensor names (nn.Linear [out, in] layout), detected per layer:
//   kDeepSeek (DeepSeek-V3/V4, Qwen2/3-MoE):  model.layers.{L}.mlp.experts.{e}.{gate,up,down}_proj.weight,
//       router model.layers.{L}.mlp.gate.weight [E, H] (+ .e_score_correction_bias [E] where present),
//       shared model.layers.{L}.mlp.shared_experts.{gate,up,down}_proj.weight ([nS*I, H], [nS*I, H], [H, nS*I]).
//   kMixtral:  model.layers.{L}.block_sparse_moe.experts.{e}.{w1,w3,w2}.weight (gate, up, down),
//       router model.layers.{L}.block_sparse_moe.gate.weight.
// Weights in F32, BF16 or F16 are widened to FP32 exactly. F8_E4M3 weights need DeepSeek's `<name>_scale_inv` (F32,
// one scale per block of config.json's quantization_config.weight_block_size, default 128 x 128; partial edge
// blocks allowed) and are dequantized: W[i][j] = fp8[i][j] * scale_inv[i / 128][j / 128], in FP32.
enum class CheckpointFamily { kDeepSeek, kMixtral };
// "deepseek" (also Qwen-MoE naming) or "mixtral".
absl::string_view CheckpointFamilyName(CheckpointFamily f);

// Reads `dir`/config.json with ParseModelConfig (HF field names: hidden_size, moe_intermediate_size or
// intermediate_size, n_routed_experts / num_local_experts / num_experts, num_experts_per_tok, scoring_func, n_group,
// topk_group, norm_topk_prob, routed_scaling_factor, n_shared_experts). The name is config.json's "name" if any,
// else the directory's base name. NotFound when the directory or config.json is missing.
StatusOr<ModelConfig> LoadCheckpointConfig(const std::string& dir);

// Expert weights of one MoE layer of a checkpoint. Thread-safe (reads go through SafetensorsCheckpoint).
class CheckpointWeights final : public WeightSource {
 public:
  // Routed expert `expert`: reads (and, for FP8, dequantizes) exactly its three matrices, checking dtype and shape.
  Status LoadExpert(int expert, float* w13, float* w2) const override;
  // The shared expert(s) (DeepSeek naming); FailedPrecondition if the model has none.
  Status LoadShared(float* w13, float* w2) const override;
  // Router weight [E, H] in FP32 and its e_score_correction_bias [E] (left empty when the checkpoint has none).
  // NotFound if the layer has no router tensor. Outputs are set only on success.
  Status LoadRouter(std::vector<float>* weight, std::vector<float>* bias) const;
  bool has_router() const;

  CheckpointFamily family() const { return family_; }
  int layer() const { return layer_; }
  const ModelConfig& model() const { return model_; }
  // Safetensors dtype of expert `expert`'s gate matrix ("BF16", "F8_E4M3", ...); opens that file's header.
  StatusOr<std::string> ExpertDTypeName(int expert) const;
  // Name of expert `expert`'s matrix `which` (0 gate, 1 up, 2 down) in this layer.
  std::string ExpertTensorName(int expert, int which) const;
  // Things present in the checkpoint that this layer does not use (e.g. Qwen2-MoE's gated shared_expert).
  const std::vector<std::string>& notes() const { return notes_; }
  // The files and what was read from them (per-file bytes and tensor names).
  const SafetensorsCheckpoint& files() const { return *files_; }

 private:
  friend StatusOr<std::unique_ptr<CheckpointWeights>> OpenCheckpoint(const std::string&, const ModelConfig&, int);
  CheckpointWeights() = default;
  // Reads (and dequantizes) one matrix and rejects non-finite values.
  Status LoadMatrix(const std::string& name, int64_t rows, int64_t cols, float* out) const;
  Status LoadMatrixValues(const std::string& name, int64_t rows, int64_t cols, float* out) const;
  std::string Prefix() const;

  std::unique_ptr<SafetensorsCheckpoint> files_;
  ModelConfig model_;
  int layer_ = 0;
  CheckpointFamily family_ = CheckpointFamily::kDeepSeek;
  int block_rows_ = 128, block_cols_ = 128;  // FP8 weight scale blocks
  std::vector<std::string> notes_;
};

// Opens the safetensors files of `dir` (only the index, or headers when there is no index) and checks, by name
// only, that layer `layer` has every routed expert 0..E-1 (and no expert E), the shared expert when the model has
// one, in one naming family. `layer` < 0 picks the first layer that has expert tensors. No tensor data is read here;
// LoadExpert reads one expert's bytes. NotFound / InvalidArgument naming the missing or extra tensor and the index.
StatusOr<std::unique_ptr<CheckpointWeights>> OpenCheckpoint(const std::string& dir, const ModelConfig& model,
                                                            int layer);

// ---- token files (token_io.cc) ---------------------------------------------------------------------------------
// `waveep run --input=FILE --output=FILE`. Input: safetensors with hidden_states [T, H] (F32, BF16 or F16) and
// optionally topk_idx [T, K] (I32 or I64) + topk_weights [T, K] (F32). Output: output [T, H] F32, topk_idx [T, K]
// I32 and topk_weights [T, K] F32 (the routing used), in global token order, plus __metadata__ strings.
//
// NOTES: hidden states are rounded to BF16 on read (round to nearest even). The layer dispatches BF16 (or FP8 from
// BF16-representable values) anyway; rounding once at the input makes the router, the shared expert, the dense
// reference and scripts/check_layer.py all see the same x.

// Rank `rank`'s tokens when `num_tokens` are split in order over `num_ranks`: [begin, end); the first
// num_tokens % num_ranks ranks get one more token.
std::pair<int64_t, int64_t> TokenRangeOfRank(int64_t num_tokens, int rank, int num_ranks);

struct TokenInput {
  TokenBatch batch;          // this rank's tokens (first_token = global index)
  int64_t total_tokens = 0;  // T in the file
  bool has_routing = false;  // false: batch.topk_* are zero, route with RouteWithGate
};
// Reads rank `rank`'s rows of `path` (only those rows' bytes), checking names, dtypes, shapes against `model`
// (H, K), expert ids in [0, E) and finite values. Errors name the file and tensor. Not collective.
StatusOr<TokenInput> ReadTokenFile(const std::string& path, const ModelConfig& model, int rank, int num_ranks);

// Gathers every rank's output rows and routing to rank 0 in global token order (ranks must hold consecutive token
// ranges in rank order, as TokenRangeOfRank gives) and writes `path` from rank 0 with `metadata`. Collective over
// WorldComm(ctx); every rank returns the same Status (a write error on rank 0 fails every rank).
Status WriteTokenOutputs(const ProcessContext& ctx, const std::string& path, const TokenBatch& batch, const float* out,
                         const std::map<std::string, std::string>& metadata);

}  // namespace waveep::ep

#endif  // WAVEEP_EP_IO_IO_H_
