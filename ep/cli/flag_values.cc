// Copyright 2026 The waveep Authors.
#include "ep/cli/flag_values.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace waveep::cli {

StatusOr<std::vector<int64_t>> ParseIntList(absl::string_view flag, absl::string_view text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v))
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", part, "' is not an integer"));
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

StatusOr<Device> ParseDeviceFlag(absl::string_view value, int local_rank, int visible_gpus) {
  if (value == "cpu") return Device::Cpu();
  if (value == "cuda") {
    // One GPU per rank of a node, by local rank (what OMPI_COMM_WORLD_LOCAL_RANK / SLURM_LOCALID give); more ranks
    // than GPUs share them round-robin (run them under MPS).
    return Device::Cuda(visible_gpus > 0 ? std::max(0, local_rank) % visible_gpus : 0);
  }
  if (absl::StartsWith(value, "cuda:")) {
    const absl::string_view ord = value.substr(5);
    int n = -1;
    if (ord.empty() || ord.size() > 4 ||
        !std::all_of(ord.begin(), ord.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        !absl::SimpleAtoi(ord, &n)) {
      return absl::InvalidArgumentError(absl::StrCat("--device=", value, ": expected cuda:N with N a device ordinal"));
    }
    return Device::Cuda(n);
  }
  return absl::InvalidArgumentError(absl::StrCat("--device=", value, " is not cpu, cuda or cuda:N"));
}

}  // namespace waveep::cli
