// Copyright 2026 The waveep Authors.
//
// Expert weights from Hugging Face-style safetensors checkpoints (DeepSeek / Qwen-MoE and Mixtral naming), FP8
// block-scale dequantization, and the router on real hidden states.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "ep/io/io.h"
#include "nlohmann/json.hpp"

namespace waveep::ep {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kDeepSeekProj[3] = {"gate_proj", "up_proj", "down_proj"};
constexpr const char* kMixtralProj[3] = {"w1", "w3", "w2"};

std::string LayerPrefix(CheckpointFamily f, int layer) {
  return absl::StrCat("model.layers.", layer, f == CheckpointFamily::kDeepSeek ? ".mlp." : ".block_sparse_moe.");
}

std::string ExpertName(CheckpointFamily f, int layer, int expert, int which) {
  const char* proj = f == CheckpointFamily::kDeepSeek ? kDeepSeekProj[which] : kMixtralProj[which];
  return absl::StrCat(LayerPrefix(f, layer), "experts.", expert, ".", proj, ".weight");
}

// Layers that have expert tensors in either naming ("model.layers.{L}.mlp.experts." / ".block_sparse_moe.experts.").
std::set<int> MoeLayers(const SafetensorsCheckpoint& files) {
  std::set<int> layers;
  for (const std::string& name : files.TensorNames()) {
    std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
    int layer = 0;
    if (parts.size() >= 5 && parts[0] == "model" && parts[1] == "layers" && absl::SimpleAtoi(parts[2], &layer) &&
        ((parts[3] == "mlp" || parts[3] == "block_sparse_moe") && parts[4] == "experts")) {
      layers.insert(layer);
    }
  }
  return layers;
}

std::string DescribeLayers(const std::set<int>& layers) {
  if (layers.empty()) return "none";
  std::string s;
  int shown = 0;
  for (int l : layers) {
    if (shown++ == 8) {
      absl::StrAppend(&s, ", ... (", layers.size(), " in all, up to ", *layers.rbegin(), ")");
      break;
    }
    absl::StrAppend(&s, s.empty() ? "" : ", ", l);
  }
  return s;
}

// The optional config.json as JSON (null when absent or unreadable; LoadCheckpointConfig reports those errors).
json ReadConfigJson(const std::string& dir) {
  auto text = ReadFileToString((fs::path(dir) / "config.json").string());
  if (!text.ok()) return json();
  if (!CheckJsonNesting(*text, dir).ok()) return json();
  json j = json::parse(text->begin(), text->end(), nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? json() : j;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::string_view CheckpointFamilyName(CheckpointFamily f) {
  return f == CheckpointFamily::kDeepSeek ? "deepseek" : "mixtral";
}

StatusOr<ModelConfig> LoadCheckpointConfig(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " not found"));
  const std::string path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat("checkpoint ", dir, " has no config.json"));
  WAVEEP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  WAVEEP_ASSIGN_OR_RETURN(ModelConfig m, ParseModelConfig(text, path));
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) {
    fs::path p = fs::path(dir).lexically_normal();
    if (!p.has_filename()) p = p.parent_path();  // "dir/" -> "dir"
    m.name = p.filename().string();
    if (m.name.empty() || m.name == ".") m.name = fs::absolute(p, ec).lexically_normal().filename().string();
  }
  return m;
}

// ---- CheckpointWeights -----------------------------------------------------------------------------------------

std::string CheckpointWeights::Prefix() const { return LayerPrefix(family_, layer_); }

std::string CheckpointWeights::ExpertTensorName(int expert, int which) const {
  return ExpertName(family_, layer_, expert, which);
}

bool CheckpointWeights::has_router() const { return files_->Contains(Prefix() + "gate.weight"); }

StatusOr<std::string> CheckpointWeights::ExpertDTypeName(int expert) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsTensor* t, files_->Get(ExpertTensorName(expert, 0)));
  return t->dtype_name;
}

Status CheckpointWeights::LoadMatrix(const std::string& name, int64_t rows, int64_t cols, float* out) const {
  WAVEEP_RETURN_IF_ERROR(LoadMatrixValues(name, rows, cols, out));
  // A NaN or infinity in a weight poisons every token routed to the expert and the run would still exit 0 (with NaN
  // rows): reject it, naming the tensor and the first element.
  const int64_t n = rows * cols;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(out[i])) {
      WAVEEP_ASSIGN_OR_RETURN(const SafetensorsFile* f, files_->File(name));
      return absl::InvalidArgumentError(absl::StrCat(f->path(), ": tensor '", name, "' holds ", out[i], " at [",
                                                     i / cols, ", ", i % cols,
                                                     "]: weights must be finite (the checkpoint is corrupt)"));
    }
  }
  return absl::OkStatus();
}

Status CheckpointWeights::LoadMatrixValues(const std::string& name, int64_t rows, int64_t cols, float* out) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsFile* f, files_->File(name));
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsTensor* t, f->GetWithShape(name, {rows, cols}));
  if (t->dtype != DType::kFP8E4M3) return f->ReadF32(name, {rows, cols}, out);
  // DeepSeek FP8: "<prefix>.weight" has its inverse scales in "<prefix>.weight_scale_inv".
  const std::string scale_name = name + "_scale_inv";
  if (!files_->Contains(scale_name)) {
    return absl::NotFoundError(absl::StrCat(f->path(), ": tensor '", name, "' is F8_E4M3 but its block scales '",
                                            scale_name, "' are not in the checkpoint (", files_->source(), ")"));
  }
  const int64_t srows = CeilDiv(rows, block_rows_), scols = CeilDiv(cols, block_cols_);
  std::vector<float> scales(static_cast<size_t>(srows * scols));
  WAVEEP_RETURN_IF_ERROR(files_->ReadF32(scale_name, {srows, scols}, scales.data()));
  WAVEEP_ASSIGN_OR_RETURN(absl::Span<const uint8_t> q, f->Bytes(name, 0, rows));
  for (int64_t i = 0; i < rows; ++i) {
    const float* srow = scales.data() + (i / block_rows_) * scols;
    const uint8_t* qrow = q.data() + i * cols;
    float* orow = out + i * cols;
    for (int64_t j = 0; j < cols; ++j) orow[j] = kernels::Fp8E4M3ToFloat(qrow[j]) * srow[j / block_cols_];
  }
  return absl::OkStatus();
}

Status CheckpointWeights::LoadExpert(int expert, float* w13, float* w2) const {
  if (expert < 0 || expert >= model_.num_experts)
    return absl::InvalidArgumentError(absl::StrCat("expert ", expert, " out of range [0, ", model_.num_experts, ")"));
  const int64_t h = model_.hidden_size, inter = model_.moe_intermediate_size;
  WAVEEP_RETURN_IF_ERROR(LoadMatrix(ExpertTensorName(expert, 0), inter, h, w13));
  WAVEEP_RETURN_IF_ERROR(LoadMatrix(ExpertTensorName(expert, 1), inter, h, w13 + inter * h));
  return LoadMatrix(ExpertTensorName(expert, 2), h, inter, w2);
}

Status CheckpointWeights::LoadShared(float* w13, float* w2) const {
  if (model_.num_shared_experts == 0) return absl::FailedPreconditionError("model has no shared experts");
  const int64_t h = model_.hidden_size, si = model_.moe_intermediate_size * model_.num_shared_experts;
  const std::string p = Prefix() + "shared_experts.";
  WAVEEP_RETURN_IF_ERROR(LoadMatrix(p + "gate_proj.weight", si, h, w13));
  WAVEEP_RETURN_IF_ERROR(LoadMatrix(p + "up_proj.weight", si, h, w13 + si * h));
  return LoadMatrix(p + "down_proj.weight", h, si, w2);
}

Status CheckpointWeights::LoadRouter(std::vector<float>* weight, std::vector<float>* bias) const {
  const std::string name = Prefix() + "gate.weight";
  if (!files_->Contains(name)) {
    return absl::NotFoundError(absl::StrCat("layer ", layer_, " has no router: tensor '", name,
                                            "' is not in the checkpoint (", files_->source(), ")"));
  }
  const int64_t e_count = model_.num_experts, h = model_.hidden_size;
  std::vector<float> w(static_cast<size_t>(e_count * h)), b;
  WAVEEP_RETURN_IF_ERROR(files_->ReadF32(name, {e_count, h}, w.data()));
  const std::string bias_name = Prefix() + "gate.e_score_correction_bias";
  if (files_->Contains(bias_name)) {
    b.resize(static_cast<size_t>(e_count));
    WAVEEP_RETURN_IF_ERROR(files_->ReadF32(bias_name, {e_count}, b.data()));
  }
  *weight = std::move(w);
  *bias = std::move(b);
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<CheckpointWeights>> OpenCheckpoint(const std::string& dir, const ModelConfig& model,
                                                            int layer) {
  WAVEEP_RETURN_IF_ERROR(ValidateModelConfig(model));
  std::unique_ptr<CheckpointWeights> w(new CheckpointWeights());
  w->model_ = model;
  WAVEEP_ASSIGN_OR_RETURN(w->files_, SafetensorsCheckpoint::Open(dir));
  const SafetensorsCheckpoint& files = *w->files_;
  const std::set<int> moe_layers = MoeLayers(files);
  if (layer < 0) {
    if (moe_layers.empty()) {
      return absl::NotFoundError(
          absl::StrCat("checkpoint ", files.source(),
                       " has no MoE expert tensors (model.layers.{L}.mlp.experts.{e}.gate_proj.weight or "
                       "model.layers.{L}.block_sparse_moe.experts.{e}.w1.weight)"));
    }
    layer = *moe_layers.begin();
  }
  w->layer_ = layer;
  const std::string ds0 = ExpertName(CheckpointFamily::kDeepSeek, layer, 0, 0);
  const std::string mx0 = ExpertName(CheckpointFamily::kMixtral, layer, 0, 0);
  if (files.Contains(ds0)) {
    w->family_ = CheckpointFamily::kDeepSeek;
  } else if (files.Contains(mx0)) {
    w->family_ = CheckpointFamily::kMixtral;
  } else {
    json cfg = ReadConfigJson(dir);
    std::string hint;
    if (cfg.is_object() && cfg.contains("first_k_dense_replace") && cfg["first_k_dense_replace"].is_number_integer() &&
        layer < cfg["first_k_dense_replace"].get<int>()) {
      hint =
          absl::StrCat("; layers below first_k_dense_replace=", cfg["first_k_dense_replace"].get<int>(), " are dense");
    }
    return absl::NotFoundError(absl::StrCat("--layer=", layer, ": no expert tensors for this layer in ", files.source(),
                                            " (looked for '", ds0, "' and '", mx0,
                                            "'); layers with experts: ", DescribeLayers(moe_layers), hint));
  }
  // Every routed expert, by name only (no file is opened): a missing one fails on every rank, before any load.
  for (int e = 0; e < model.num_experts; ++e) {
    for (int which = 0; which < 3; ++which) {
      const std::string name = w->ExpertTensorName(e, which);
      if (!files.Contains(name)) {
        return absl::NotFoundError(absl::StrCat("tensor '", name, "' is not in the checkpoint (", files.source(), ")"));
      }
    }
  }
  if (files.Contains(w->ExpertTensorName(model.num_experts, 0))) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", files.source(), " has tensor '",
                                                   w->ExpertTensorName(model.num_experts, 0),
                                                   "' but the model config says n_routed_experts=", model.num_experts));
  }
  const std::string shared = w->Prefix() + "shared_experts.";
  if (model.num_shared_experts > 0) {
    if (w->family_ == CheckpointFamily::kMixtral) {
      return absl::InvalidArgumentError(absl::StrCat("the model config has n_shared_experts=", model.num_shared_experts,
                                                     " but Mixtral-style checkpoints have no shared experts"));
    }
    for (const char* proj : kDeepSeekProj) {
      const std::string name = absl::StrCat(shared, proj, ".weight");
      if (!files.Contains(name))
        return absl::NotFoundError(
            absl::StrCat("tensor '", name, "' is not in the checkpoint (", files.source(),
                         ") but the model config has n_shared_experts=", model.num_shared_experts));
    }
  } else if (files.Contains(shared + "gate_proj.weight")) {
    w->notes_.push_back(absl::StrCat("the checkpoint has shared experts (", shared,
                                     "*) but the model config has no n_shared_experts: they are not computed"));
  }
  if (files.Contains(w->Prefix() + "shared_expert.gate_proj.weight")) {
    w->notes_.push_back(absl::StrCat("Qwen2-MoE shared_expert (", w->Prefix(),
                                     "shared_expert.*, gated by shared_expert_gate) is not supported: routed experts "
                                     "only"));
  }
  // FP8 scale blocks (DeepSeek's quantization_config.weight_block_size), 128 x 128 unless config.json says otherwise.
  json cfg = ReadConfigJson(dir);
  if (cfg.is_object() && cfg.contains("quantization_config") && cfg["quantization_config"].is_object()) {
    const json& q = cfg["quantization_config"];
    if (auto it = q.find("weight_block_size"); it != q.end()) {
      if (!it->is_array() || it->size() != 2 || !(*it)[0].is_number_integer() || !(*it)[1].is_number_integer() ||
          (*it)[0].get<int>() <= 0 || (*it)[1].get<int>() <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(dir, "/config.json: quantization_config.weight_block_size ",
                                                       it->dump(), " must be [rows, cols] > 0"));
      }
      w->block_rows_ = (*it)[0].get<int>();
      w->block_cols_ = (*it)[1].get<int>();
    }
  }
  return w;
}

}  // namespace waveep::ep
