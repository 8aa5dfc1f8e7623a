// Copyright 2026 The waveep Authors.
//
// runtime/config.h — MoE model shapes (presets in configs/models/*.json) and their validation.
//
//   WAVEEP_ASSIGN_OR_RETURN(ModelConfig m, LoadModelConfig("deepseek-v4-pro"));   // preset by name
//   WAVEEP_ASSIGN_OR_RETURN(ModelConfig m, LoadModelConfig("/path/to/my.json"));  // or a file
//   m.hidden_size == 7168; m.moe_intermediate_size == 3072; m.num_experts == 384; m.top_k == 6
//
// JSON fields use Hugging Face names so a checkpoint's config.json reads the same way: hidden_size,
// moe_intermediate_size, n_routed_experts, n_shared_experts, num_experts_per_tok, scoring_func (softmax|sigmoid),
// n_group, topk_group, norm_topk_prob, routed_scaling_factor; plus name, description, source, fp8_block_size.
#ifndef WAVEEP_RUNTIME_CONFIG_H_
#define WAVEEP_RUNTIME_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"
#include "runtime/status.h"
#include "runtime/types.h"

namespace waveep {

enum class Scoring { kSoftmax, kSigmoid };
absl::string_view ScoringName(Scoring s);

struct ModelConfig {
  std::string name;
  std::string description;
  int64_t hidden_size = 0;            // H
  int64_t moe_intermediate_size = 0;  // I, per routed expert
  int num_experts = 0;                // E, routed experts
  int num_shared_experts = 0;         // always-on experts, computed locally (no dispatch)
  int top_k = 0;                      // K experts per token
  Scoring scoring = Scoring::kSoftmax;
  int n_group = 1;                     // group-limited routing (DeepSeek-V3): E split into n_group groups ...
  int topk_group = 1;                  // ... of which the best topk_group are eligible
  bool norm_topk_prob = true;          // renormalise the K selected weights to sum to 1
  double routed_scaling_factor = 1.0;  // multiplies the final routed weights
  int fp8_block_size = 128;            // elements per FP8 scale along H
  std::string origin;                  // file it was loaded from

  // FLOPs of one (token, expert) pair: gate+up (2*H*2I) + down (2*I*H) = 6*H*I.
  double FlopsPerPair() const { return 6.0 * static_cast<double>(hidden_size) * moe_intermediate_size; }
  // Bytes of one dispatch row: the token in `dispatch_dtype`, or FP8 e4m3 followed by one FP32 scale per
  // fp8_block_size elements. The one definition the layer, the balance check and the model use.
  int64_t DispatchRowBytes(DType dispatch_dtype) const {
    if (dispatch_dtype == DType::kFP8E4M3) return hidden_size + 4 * (hidden_size / fp8_block_size);
    return hidden_size * static_cast<int64_t>(DTypeSize(dispatch_dtype));
  }
};

// Checks every field; InvalidArgument naming the first bad field and the model.
Status ValidateModelConfig(const ModelConfig& m);

// Parses JSON text (`origin` names it in errors). Missing required fields and malformed JSON are InvalidArgument.
StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view origin);

// Loads a preset by name (searched in PresetDirs("models")) or a JSON file by path (anything containing '/' or
// ending in ".json"). NotFound for an unknown preset lists the presets that exist.
StatusOr<ModelConfig> LoadModelConfig(absl::string_view name_or_path);

// Names of the model presets (PresetDirs("models")), sorted.
std::vector<std::string> ListModelPresets();

// Canonical JSON (sorted keys, no origin) — identical for identical shapes. Used for fingerprints and outputs.
std::string ModelConfigToJson(const ModelConfig& m);

// Reads a whole file. Only regular files are opened (a FIFO, device or directory is InvalidArgument before any
// open, so nothing blocks); files larger than `max_bytes` are InvalidArgument with both sizes. NotFound /
// PermissionDenied / DataLoss with the path in the message.
inline constexpr int64_t kMaxTextFileBytes = int64_t{64} << 20;  // JSON configs, indexes, cluster files
StatusOr<std::string> ReadFileToString(const std::string& path, int64_t max_bytes = kMaxTextFileBytes);

// OK when `path` names a regular file (following symlinks); InvalidArgument naming what it is otherwise ("a FIFO",
// "a directory", ...), NotFound when it does not exist. Use before open(): opening a FIFO blocks.
Status CheckRegularFile(const std::string& path);

// JSON from outside (model and cluster files, checkpoint indexes, safetensors headers) is parsed only when its
// nesting is at most kMaxJsonDepth: nlohmann::json's parser, destructor and dump() recurse per level, so a deeply
// nested value would overflow the stack. InvalidArgument naming `origin` and the depth. O(size), no recursion.
inline constexpr int kMaxJsonDepth = 64;
Status CheckJsonNesting(absl::string_view text, absl::string_view origin);

// The one integer reader for JSON from outside (model and cluster files): `v` as an integer in [lo, hi], or
// InvalidArgument with the reason alone ("must be an integer, got 1.5", "is out of range: 18446744073709551615"),
// which the caller prefixes with the file and field. Never narrows or wraps (2^32 + 16 is not 16, 2^64 - 1 is not
// -1).
StatusOr<int64_t> JsonInteger(const nlohmann::json& v, int64_t lo, int64_t hi);

// Bytes of memory this machine can still give (MemAvailable of /proc/meminfo; physical memory if unknown). Sizes
// derived from inputs are checked against it before they are allocated.
int64_t AvailableHostMemoryBytes();
// InvalidArgument "`what` needs X GiB ... but this machine has Y GiB available" when bytes > available (or
// negative: an overflowed product).
Status CheckFitsInHostMemory(int64_t bytes, absl::string_view what);

// Directory holding the running executable ("" if unknown).
std::string ExecutableDir();

// JSON presets of one kind (`subdir`: "models", "clusters"), shared by every module that has presets.
// Directories searched, in order: $WAVEEP_CONFIG_DIR/<subdir>, <exe>/../configs/<subdir>,
// <exe>/../share/waveep/configs/<subdir>, and the source tree's configs/<subdir>.
std::vector<std::string> PresetDirs(absl::string_view subdir);
// Names (file stems) of the presets found in PresetDirs(subdir), sorted.
std::vector<std::string> ListPresets(absl::string_view subdir);
// The file to read for `name_or_path`: itself when it contains '/' or ends in ".json", else the first
// <dir>/<name>.json of PresetDirs(subdir). NotFound "unknown <noun> preset '<name>' (known: ...)" otherwise.
StatusOr<std::string> ResolvePreset(absl::string_view subdir, absl::string_view name_or_path, absl::string_view noun);

}  // namespace waveep

#endif  // WAVEEP_RUNTIME_CONFIG_H_
