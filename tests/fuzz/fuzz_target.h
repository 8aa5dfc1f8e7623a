// Copyright 2026 The waveep Authors.
//
// The entry point every fuzz target defines (libFuzzer's). Built two ways (tests/fuzz/CMakeLists.txt): with
// -DWAVEEP_FUZZ=ON under clang as a libFuzzer binary (fuzz_<name>) that searches for crashes, and in every build as
// fuzz_<name>_replay, which runs the committed corpus (tests/fuzz/corpus/<name>/) once under ctest.
#ifndef WAVEEP_TESTS_FUZZ_FUZZ_TARGET_H_
#define WAVEEP_TESTS_FUZZ_FUZZ_TARGET_H_

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#endif  // WAVEEP_TESTS_FUZZ_FUZZ_TARGET_H_
