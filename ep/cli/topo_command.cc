// Copyright 2026 The waveep Authors.
#include "ep/cli/cli.h"

namespace waveep::cli {
std::string TopoUsage() { return "usage: waveep topo check|model|probe|tune (not implemented yet)\n"; }
int TopoMain(const ProcessContext& ctx, const std::vector<std::string>& args) {
  ReportError(ctx, "topo", absl::UnimplementedError("topo is not implemented yet"));
  return kError;
}
}  // namespace waveep::cli
