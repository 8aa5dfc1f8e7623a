// Copyright 2026 The waveep Authors.
//
// Cluster description files (--cluster=FILE, `topo probe` output): any bytes must give a Cluster or an error, never a
// crash or a hang; an accepted cluster is expanded (ParseCluster does) and written back.
#include "tests/fuzz/fuzz_target.h"
#include "topology/topology.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  waveep::StatusOr<waveep::topology::Cluster> c = waveep::topology::ParseCluster(text, "fuzz.json");
  if (c.ok()) (void)waveep::topology::ClusterToJson(*c);
  return 0;
}
