// Copyright 2026 The waveep Authors.
#include "ep/cli/cli.h"

namespace waveep::cli {
std::vector<std::string> BenchFlagNames() { return {}; }
int BenchMain(const ProcessContext& ctx) {
  ReportError(ctx, "bench", absl::UnimplementedError("bench is not implemented yet"));
  return kError;
}
}  // namespace waveep::cli
