// Copyright 2026 The waveep Authors.
//
// Shared main() for gtest binaries run under mpirun: initialises MPI through waveep::InitProcess, lets only rank 0
// print gtest's report, and fails the job if any rank failed. Tests reach the context through MpiTestContext().
#ifndef WAVEEP_TESTS_COMMON_MPI_TEST_MAIN_H_
#define WAVEEP_TESTS_COMMON_MPI_TEST_MAIN_H_

#include "runtime/runtime.h"

namespace waveep::testing {
const ProcessContext& MpiTestContext();
}  // namespace waveep::testing

#endif  // WAVEEP_TESTS_COMMON_MPI_TEST_MAIN_H_
