// Copyright 2026 The waveep Authors.
//
// Bridges `waveep bench --cluster=FILE` to the topology performance model.
#include "ep/cli/bench_internal.h"

namespace waveep::cli {

StatusOr<std::unique_ptr<Predictor>> MakePredictor(const std::string& cluster_path, const ProcessContext& ctx) {
  if (cluster_path.empty()) return std::unique_ptr<Predictor>();
  return absl::UnimplementedError("--cluster: the topology model is not wired into bench yet");
}

}  // namespace waveep::cli
