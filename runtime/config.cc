// Copyright 2026 The waveep Authors.
#include "runtime/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

#ifndef WAVEEP_SOURCE_CONFIG_DIR
#define WAVEEP_SOURCE_CONFIG_DIR ""
#endif

namespace waveep {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

Status FieldError(absl::string_view origin, absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("model config ", origin, ": field '", field, "' ", why));
}

// Reads an integer field in [lo, hi]. `required` fields must exist.
Status GetInt(const json& j, absl::string_view origin, const char* key, bool required, int64_t* out,
              int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return FieldError(origin, key, "is missing");
    return absl::OkStatus();
  }
  StatusOr<int64_t> v = JsonInteger(*it, lo, hi);
  if (!v.ok()) return FieldError(origin, key, v.status().message());
  *out = *v;
  return absl::OkStatus();
}

// An integer field stored as int: values outside [INT_MIN, INT_MAX] are errors, never narrowed.
Status GetInt32(const json& j, absl::string_view origin, const char* key, bool required, int* out) {
  int64_t v = *out;
  WAVEEP_RETURN_IF_ERROR(GetInt(j, origin, key, required, &v, INT_MIN, INT_MAX));
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

}  // namespace

StatusOr<int64_t> JsonInteger(const json& v, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) return absl::InvalidArgumentError(absl::StrCat("must be an integer, got ", v.dump()));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    return absl::InvalidArgumentError(absl::StrCat("is out of range: ", v.dump()));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) return absl::InvalidArgumentError(absl::StrCat("is out of range: ", x));
  return x;
}

absl::string_view ScoringName(Scoring s) { return s == Scoring::kSoftmax ? "softmax" : "sigmoid"; }

Status ValidateModelConfig(const ModelConfig& m) {
  const std::string& o = m.origin.empty() ? m.name : m.origin;
  if (m.hidden_size <= 0) return FieldError(o, "hidden_size", absl::StrCat("must be > 0, got ", m.hidden_size));
  if (m.moe_intermediate_size <= 0)
    return FieldError(o, "moe_intermediate_size", absl::StrCat("must be > 0, got ", m.moe_intermediate_size));
  if (m.num_experts <= 0) return FieldError(o, "n_routed_experts", absl::StrCat("must be > 0, got ", m.num_experts));
  if (m.num_shared_experts < 0)
    return FieldError(o, "n_shared_experts", absl::StrCat("must be >= 0, got ", m.num_shared_experts));
  if (m.top_k <= 0 || m.top_k > m.num_experts)
    return FieldError(o, "num_experts_per_tok",
                      absl::StrCat("(top-k) must be in [1, n_routed_experts=", m.num_experts, "], got ", m.top_k));
  if (m.n_group <= 0 || m.num_experts % m.n_group != 0)
    return FieldError(o, "n_group",
                      absl::StrCat("must be > 0 and divide n_routed_experts=", m.num_experts, ", got ", m.n_group));
  if (m.topk_group <= 0 || m.topk_group > m.n_group)
    return FieldError(o, "topk_group", absl::StrCat("must be in [1, n_group=", m.n_group, "], got ", m.topk_group));
  if (static_cast<int64_t>(m.topk_group) * (m.num_experts / m.n_group) < m.top_k)
    return FieldError(o, "topk_group",
                      absl::StrCat("too small: topk_group * experts per group = ",
                                   m.topk_group * (m.num_experts / m.n_group), " < top-k ", m.top_k));
  if (!(m.routed_scaling_factor > 0))
    return FieldError(o, "routed_scaling_factor", absl::StrCat("must be > 0, got ", m.routed_scaling_factor));
  if (m.fp8_block_size <= 0) return FieldError(o, "fp8_block_size", "must be > 0");
  return absl::OkStatus();
}

StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view origin) {
  WAVEEP_RETURN_IF_ERROR(CheckJsonNesting(json_text, absl::StrCat("model config ", origin)));
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Re-parse with exceptions only to get the position for the message; nothing escapes this function.
    std::string detail = "malformed JSON";
    try {
      json unused = json::parse(json_text.begin(), json_text.end());
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number that overflows
      detail = e.what();
    }
    return absl::InvalidArgumentError(absl::StrCat("model config ", origin, ": ", detail));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat("model config ", origin, ": not a JSON object"));
  ModelConfig m;
  m.origin = std::string(origin);
  if (auto it = j.find("name"); it != j.end() && it->is_string()) m.name = it->get<std::string>();
  if (auto it = j.find("description"); it != j.end() && it->is_string()) m.description = it->get<std::string>();
  WAVEEP_RETURN_IF_ERROR(GetInt(j, origin, "hidden_size", true, &m.hidden_size));
  // Qwen/Mixtral use intermediate_size for the expert FFN when moe_intermediate_size is absent.
  if (j.contains("moe_intermediate_size")) {
    WAVEEP_RETURN_IF_ERROR(GetInt(j, origin, "moe_intermediate_size", true, &m.moe_intermediate_size));
  } else {
    WAVEEP_RETURN_IF_ERROR(GetInt(j, origin, "intermediate_size", false, &m.moe_intermediate_size));
    if (m.moe_intermediate_size == 0) return FieldError(origin, "moe_intermediate_size", "is missing");
  }
  const char* experts_key = j.contains("n_routed_experts") ? "n_routed_experts"
                            : j.contains("num_experts")    ? "num_experts"
                                                           : "num_local_experts";
  if (!j.contains(experts_key)) return FieldError(origin, "n_routed_experts", "is missing");
  WAVEEP_RETURN_IF_ERROR(GetInt32(j, origin, experts_key, true, &m.num_experts));
  m.num_shared_experts = 0;
  WAVEEP_RETURN_IF_ERROR(GetInt32(j, origin, "n_shared_experts", false, &m.num_shared_experts));
  WAVEEP_RETURN_IF_ERROR(GetInt32(j, origin, "num_experts_per_tok", true, &m.top_k));
  m.n_group = 1;
  WAVEEP_RETURN_IF_ERROR(GetInt32(j, origin, "n_group", false, &m.n_group));
  m.topk_group = 1;
  WAVEEP_RETURN_IF_ERROR(GetInt32(j, origin, "topk_group", false, &m.topk_group));
  m.fp8_block_size = 128;
  WAVEEP_RETURN_IF_ERROR(GetInt32(j, origin, "fp8_block_size", false, &m.fp8_block_size));
  if (auto it = j.find("scoring_func"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) return FieldError(origin, "scoring_func", "must be a string");
    std::string s = it->get<std::string>();
    if (s == "softmax") {
      m.scoring = Scoring::kSoftmax;
    } else if (s == "sigmoid") {
      m.scoring = Scoring::kSigmoid;
    } else {
      return FieldError(origin, "scoring_func", absl::StrCat("must be 'softmax' or 'sigmoid', got '", s, "'"));
    }
  }
  if (auto it = j.find("norm_topk_prob"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) return FieldError(origin, "norm_topk_prob", "must be true or false");
    m.norm_topk_prob = it->get<bool>();
  }
  if (auto it = j.find("routed_scaling_factor"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return FieldError(origin, "routed_scaling_factor", "must be a number");
    m.routed_scaling_factor = it->get<double>();
  }
  if (m.name.empty()) m.name = fs::path(std::string(origin)).stem().string();
  WAVEEP_RETURN_IF_ERROR(ValidateModelConfig(m));
  return m;
}

Status CheckRegularFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return absl::NotFoundError(absl::StrCat("file not found: ", path));
    return absl::PermissionDeniedError(absl::StrCat("cannot stat ", path, ": ", std::strerror(errno)));
  }
  if (S_ISREG(st.st_mode)) return absl::OkStatus();
  const char* what = S_ISDIR(st.st_mode)    ? "a directory"
                     : S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                                            : "not a regular file";
  return absl::InvalidArgumentError(absl::StrCat(path, " is ", what, ", not a regular file"));
}

StatusOr<std::string> ReadFileToString(const std::string& path, int64_t max_bytes) {
  WAVEEP_RETURN_IF_ERROR(CheckRegularFile(path));
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (!ec && static_cast<int64_t>(size) > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has ", size, " bytes; more than the ", max_bytes, " this kind of file may have"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  std::string out;
  char buf[1 << 16];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    out.append(buf, static_cast<size_t>(in.gcount()));
    if (static_cast<int64_t>(out.size()) > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " has more than the ", max_bytes, " bytes this kind of file may have"));
    }
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("read error on ", path));
  return out;
}

Status CheckJsonNesting(absl::string_view text, absl::string_view origin) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin, ": JSON nested deeper than ", kMaxJsonDepth, " levels (at byte ", i, ")"));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

int64_t AvailableHostMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : INT64_MAX;
}

Status CheckFitsInHostMemory(int64_t bytes, absl::string_view what) {
  const int64_t avail = AvailableHostMemoryBytes();
  if (bytes >= 0 && bytes <= avail) return absl::OkStatus();
  auto gib = [](double b) { return absl::StrFormat("%.3g GiB", b / (1024.0 * 1024 * 1024)); };
  return absl::InvalidArgumentError(
      absl::StrCat(what, " needs ", bytes < 0 ? std::string("more than 2^63 bytes") : gib(static_cast<double>(bytes)),
                   " of host memory per rank, but this machine has ", gib(static_cast<double>(avail)), " available"));
}

std::string ExecutableDir() {
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  return p.parent_path().string();
}

std::vector<std::string> PresetDirs(absl::string_view subdir) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("WAVEEP_CONFIG_DIR"); env != nullptr && *env != '\0') {
    dirs.push_back(absl::StrCat(env, "/", subdir));
  }
  const std::string exe = ExecutableDir();
  if (!exe.empty()) {
    dirs.push_back(absl::StrCat(exe, "/../configs/", subdir));
    dirs.push_back(absl::StrCat(exe, "/../share/waveep/configs/", subdir));
  }
  if (std::string src = WAVEEP_SOURCE_CONFIG_DIR; !src.empty()) dirs.push_back(absl::StrCat(src, "/", subdir));
  return dirs;
}

std::vector<std::string> ListPresets(absl::string_view subdir) {
  std::set<std::string> names;
  for (const std::string& d : PresetDirs(subdir)) {
    std::error_code ec;
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".json") names.insert(it->path().stem().string());
    }
  }
  return {names.begin(), names.end()};
}

StatusOr<std::string> ResolvePreset(absl::string_view subdir, absl::string_view name_or_path, absl::string_view noun) {
  if (absl::StrContains(name_or_path, '/') || absl::EndsWith(name_or_path, ".json")) return std::string(name_or_path);
  for (const std::string& d : PresetDirs(subdir)) {
    std::string candidate = absl::StrCat(d, "/", name_or_path, ".json");
    std::error_code ec;
    if (fs::exists(candidate, ec)) return candidate;
  }
  const std::vector<std::string> presets = ListPresets(subdir);
  return absl::NotFoundError(absl::StrCat(
      "unknown ", noun, " preset '", name_or_path,
      "' (known: ", presets.empty() ? "none found; set WAVEEP_CONFIG_DIR" : absl::StrJoin(presets, ", "), ")"));
}

std::vector<std::string> ListModelPresets() { return ListPresets("models"); }

StatusOr<ModelConfig> LoadModelConfig(absl::string_view name_or_path) {
  if (name_or_path.empty()) return absl::InvalidArgumentError("--model is empty: give a preset name or a JSON path");
  WAVEEP_ASSIGN_OR_RETURN(const std::string path, ResolvePreset("models", name_or_path, "model"));
  WAVEEP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseModelConfig(text, path);
}

std::string ModelConfigToJson(const ModelConfig& m) {
  json j;  // nlohmann::json objects keep keys sorted
  j["name"] = m.name;
  j["hidden_size"] = m.hidden_size;
  j["moe_intermediate_size"] = m.moe_intermediate_size;
  j["n_routed_experts"] = m.num_experts;
  j["n_shared_experts"] = m.num_shared_experts;
  j["num_experts_per_tok"] = m.top_k;
  j["scoring_func"] = std::string(ScoringName(m.scoring));
  j["n_group"] = m.n_group;
  j["topk_group"] = m.topk_group;
  j["norm_topk_prob"] = m.norm_topk_prob;
  j["routed_scaling_factor"] = m.routed_scaling_factor;
  j["fp8_block_size"] = m.fp8_block_size;
  return j.dump();
}

}  // namespace waveep
