// Copyright 2026 The waveep Authors.
//
// Model config files (--model=FILE, a checkpoint's config.json): any bytes must give a ModelConfig or an error,
// never a crash, a hang or an unbounded allocation; an accepted config must validate and print.
#include <cstdlib>

#include "runtime/runtime.h"
#include "tests/fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  waveep::StatusOr<waveep::ModelConfig> m = waveep::ParseModelConfig(text, "fuzz.json");
  if (m.ok()) {
    if (!waveep::ValidateModelConfig(*m).ok()) std::abort();  // accepted means valid
    (void)waveep::ModelConfigToJson(*m);
    (void)m->FlopsPerPair();
  }
  return 0;
}
