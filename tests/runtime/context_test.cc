// Copyright 2026 The waveep Authors.
//
// MPI bootstrap under real mpirun (np 1, 2, 4).
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/mpi_context.h"
#include "runtime/runtime.h"
#include "tests/common/mpi_test_main.h"

namespace waveep {
namespace {

using ::testing::HasSubstr;

TEST(Context, RanksAndNodesAreConsistent) {
  const ProcessContext& c = waveep::testing::MpiTestContext();
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(c.world_size, size);
  EXPECT_GE(c.world_rank, 0);
  EXPECT_LT(c.world_rank, c.world_size);
  EXPECT_EQ(c.num_nodes, 1);  // tests run on one machine
  EXPECT_EQ(c.node_id, 0);
  EXPECT_EQ(c.local_size, c.world_size);
  EXPECT_EQ(c.local_rank, c.world_rank);
  EXPECT_GE(c.thread_level, MPI_THREAD_MULTIPLE);
  EXPECT_THAT(DiagnosticPrefix(), HasSubstr(absl::StrCat("rank ", c.world_rank)));
}

TEST(Context, SameConfigPasses) {
  EXPECT_TRUE(CheckSameOnAllRanks(waveep::testing::MpiTestContext(), "config", "model=tiny;waves=2").ok());
}

TEST(Context, DifferentConfigFailsOnEveryRank) {
  const ProcessContext& c = waveep::testing::MpiTestContext();
  if (c.world_size < 2) GTEST_SKIP() << "needs 2 ranks";
  std::string mine = c.world_rank == c.world_size - 1 ? "model=tiny;waves=3" : "model=tiny;waves=2";
  Status s = CheckSameOnAllRanks(c, "the command line", mine);
  ASSERT_FALSE(s.ok());  // every rank, including those that agree with rank 0
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("the command line differs"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat(c.world_size - 1)));
}

TEST(Context, AgreeOnStatusSpreadsTheLowestFailingRank) {
  const ProcessContext& c = waveep::testing::MpiTestContext();
  EXPECT_TRUE(AgreeOnStatus(c, absl::OkStatus()).ok());
  Status local =
      c.world_rank == c.world_size - 1 ? absl::InvalidArgumentError("bad expert index 99") : absl::OkStatus();
  Status s = AgreeOnStatus(c, local);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("bad expert index 99"));
  if (c.world_rank != c.world_size - 1) {
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("rank ", c.world_size - 1)));
  }
}

TEST(Context, GatherStringsInRankOrder) {
  const ProcessContext& c = waveep::testing::MpiTestContext();
  std::string mine(static_cast<size_t>(c.world_rank) * 3, static_cast<char>('a' + c.world_rank));
  auto all = GatherStrings(c, mine, 0);
  ASSERT_TRUE(all.ok());
  if (c.world_rank == 0) {
    ASSERT_EQ(static_cast<int>(all->size()), c.world_size);
    for (int r = 0; r < c.world_size; ++r)
      EXPECT_EQ((*all)[r], std::string(static_cast<size_t>(r) * 3, static_cast<char>('a' + r)));
  } else {
    EXPECT_TRUE(all->empty());
  }
}

// Peer-failure checks (what a comm backend registers so that the bounded collectives see a dead peer between
// exchanges; tests/comm/ucx_dead_peer_test.sh covers them end to end): every registered check runs, the first error
// comes back naming what was being done, and a removed check no longer runs.
TEST(Context, PeerFailureChecksRunUntilRemoved) {
  EXPECT_TRUE(CheckPeerFailures("nothing registered").ok());
  int calls = 0;
  const int64_t healthy = AddPeerFailureCheck([&calls](absl::string_view) {
    ++calls;
    return absl::OkStatus();
  });
  EXPECT_TRUE(CheckPeerFailures("one healthy check").ok());
  EXPECT_EQ(calls, 1);
  const int64_t dead = AddPeerFailureCheck(
      [](absl::string_view doing) { return absl::AbortedError(absl::StrCat("rank 9 died while ", doing)); });
  EXPECT_NE(dead, healthy);
  Status s = CheckPeerFailures("the per-step statistics");
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank 9 died while the per-step statistics"));
  EXPECT_TRUE(IsJobFatal(s));
  RemovePeerFailureCheck(dead);
  EXPECT_TRUE(CheckPeerFailures("after removing it").ok());
  RemovePeerFailureCheck(healthy);
  RemovePeerFailureCheck(12345);  // unknown: nothing happens
  const int before = calls;
  EXPECT_TRUE(CheckPeerFailures("none left").ok());
  EXPECT_EQ(calls, before);
}

// Keep this test last: the late rank's collective completes only after the others gave up on it.
TEST(Context, RollCallNamesTheRankThatNeverCame) {
  const ProcessContext& c = waveep::testing::MpiTestContext();
  if (c.world_size < 2) GTEST_SKIP() << "needs 2 ranks";
  const int late = c.world_size - 1;
  const absl::Duration saved = DefaultTimeout();
  // MPI may write these after the timeout (WaitCollective): never freed.
  auto* send = new int(1);
  auto* recv = new int(0);
  if (c.world_rank == late) {
    absl::SleepFor(absl::Seconds(4));  // past the others' 1 s timeout and their 1 s roll call
    EXPECT_TRUE(Allreduce(c, send, recv, 1, MPI_INT, MPI_SUM, "the late sum").ok());
  } else {
    SetDefaultTimeout(absl::Seconds(1));
    Status s = Allreduce(c, send, recv, 1, MPI_INT, MPI_SUM, "the late sum");
    SetDefaultTimeout(saved);
    ASSERT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("the late sum timed out after 1s"));
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("roll call: rank ", late, " did not answer")));
    EXPECT_THAT(std::string(s.message()),
                HasSubstr(absl::StrCat(c.world_size - 2, " other rank(s) timed out in this one too")));
  }
  MPI_Barrier(MPI_COMM_WORLD);  // progresses the late collective to completion on every rank
}

}  // namespace
}  // namespace waveep
