// Copyright 2026 The waveep Authors.
//
// Flag values: the input is split into lines, each fed to one parser by its position — --tokens_list/--waves_list
// (ParseIntList), --device (ParseDeviceFlag), --dtype (ParseDType), --routing (ParseRoutingMode), and Abseil's own
// parsing of int64 / double / bool flag text (what absl::ParseCommandLine runs for every scalar flag). Every line
// must give a value or an error, never a crash.
#include <string>

#include "absl/flags/marshalling.h"
#include "absl/strings/str_split.h"
#include "ep/cli/flag_values.h"
#include "ep/ep.h"
#include "tests/fuzz/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  int i = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::string err;
    switch (i++ % 7) {
      case 0:
        (void)waveep::cli::ParseIntList("tokens_list", line);
        break;
      case 1:
        (void)waveep::cli::ParseDeviceFlag(line, static_cast<int>(size % 9), static_cast<int>(size % 3));
        break;
      case 2:
        (void)waveep::ParseDType(line);
        break;
      case 3:
        (void)waveep::ep::ParseRoutingMode(line);
        break;
      case 4: {
        int64_t v = 0;
        (void)absl::ParseFlag(std::string(line), &v, &err);
        break;
      }
      case 5: {
        double v = 0;
        (void)absl::ParseFlag(std::string(line), &v, &err);
        break;
      }
      default: {
        bool v = false;
        (void)absl::ParseFlag(std::string(line), &v, &err);
        break;
      }
    }
  }
  return 0;
}
