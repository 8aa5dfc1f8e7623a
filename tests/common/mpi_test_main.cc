// Copyright 2026 The waveep Authors.
#include "tests/common/mpi_test_main.h"

#include <cstdio>

#include "gtest/gtest.h"
#include "runtime/mpi_context.h"

namespace waveep::testing {
namespace {
ProcessContext* g_ctx = nullptr;
}  // namespace

const ProcessContext& MpiTestContext() { return *g_ctx; }

}  // namespace waveep::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto ctx = waveep::InitProcess(&argc, &argv);
  if (!ctx.ok()) {
    std::fprintf(stderr, "InitProcess: %s\n", std::string(ctx.status().message()).c_str());
    return 1;
  }
  waveep::testing::g_ctx = &*ctx;
  if (ctx->world_rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  int all = 0;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, WorldComm(*ctx));
  if (all != 0 && rc == 0) std::fprintf(stderr, "rank %d: passed, but another rank failed\n", ctx->world_rank);
  waveep::FinalizeProcess();
  return all;
}
