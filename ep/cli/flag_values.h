// Copyright 2026 The waveep Authors.
//
// ep/cli/flag_values.h — parsers for flag values that are more than one scalar. Pure functions (no flags, no MPI), so
// the fuzz target tests/fuzz/flags_fuzz.cc links them alone.
#ifndef WAVEEP_EP_CLI_FLAG_VALUES_H_
#define WAVEEP_EP_CLI_FLAG_VALUES_H_

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/runtime.h"

namespace waveep::cli {

// "1,2,4" -> {1, 2, 4}. Empty items are skipped; InvalidArgument naming --`flag` for a non-integer item, an item
// outside int64, or no item at all.
StatusOr<std::vector<int64_t>> ParseIntList(absl::string_view flag, absl::string_view text);

// --device: "cpu"; "cuda" = the GPU of `local_rank` modulo `visible_gpus` (cuda:0 when none is visible: creating the
// layer then says so); "cuda:N" with N decimal digits (at most 4). InvalidArgument naming the value otherwise.
StatusOr<Device> ParseDeviceFlag(absl::string_view value, int local_rank, int visible_gpus);

}  // namespace waveep::cli

#endif  // WAVEEP_EP_CLI_FLAG_VALUES_H_
