// Copyright 2026 The waveep Authors.
//
// CreateCommunicator's registry (known, unknown and not-built backends), ValidateAlltoallvArgs as a pure function,
// and the MPI backend's tuning knobs. Runs under mpirun -np 1.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "comm/comm.h"
#include "comm/mpi_transport.h"
#include "gtest/gtest.h"
#include "runtime/mpi_context.h"
#include "runtime/runtime.h"

namespace waveep::comm {
namespace {

const ProcessContext* g_ctx = nullptr;

TEST(AvailableBackendsTest, MpiIsAlwaysThereAndLast) {
  std::vector<std::string> b = AvailableBackends();
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(b.back(), "mpi");  // the host fallback comes after any GPU-native backend
}

TEST(CreateCommunicatorTest, Mpi) {
  auto comm = CreateCommunicator("mpi", *g_ctx);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->name(), "mpi");
  EXPECT_EQ((*comm)->rank(), g_ctx->world_rank);
  EXPECT_EQ((*comm)->size(), g_ctx->world_size);
  EXPECT_TRUE((*comm)->capabilities().host_memory);
  // Device buffers are staged through pinned host memory when built with CUDA and a GPU is visible.
  EXPECT_EQ((*comm)->capabilities().device_memory, BuiltWithCuda() && CudaDeviceCount() > 0);
}

TEST(CreateCommunicatorTest, UnknownNameIsNotFoundAndListsBackends) {
  for (const char* name : {"nccll", "", "MPI", "gloo"}) {
    auto comm = CreateCommunicator(name, *g_ctx);
    ASSERT_FALSE(comm.ok()) << name;
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kNotFound) << comm.status();
    EXPECT_TRUE(absl::StrContains(comm.status().message(), "mpi")) << comm.status();
    EXPECT_TRUE(absl::StrContains(comm.status().message(), absl::StrCat("'", name, "'"))) << comm.status();
  }
}

TEST(CreateCommunicatorTest, KnownButNotBuiltIsUnavailable) {
  std::vector<std::string> available = AvailableBackends();
  for (const char* name : {"nccl", "cuda_ipc", "ucx", "ucx_put"}) {
    if (std::find(available.begin(), available.end(), name) != available.end()) continue;  // built after all
    auto comm = CreateCommunicator(name, *g_ctx);
    ASSERT_FALSE(comm.ok()) << name;
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kUnavailable) << comm.status();
    EXPECT_TRUE(absl::StrContains(comm.status().message(), name)) << comm.status();
  }
}

TEST(CreateCommunicatorTest, NeedsInitialisedContext) {
  ProcessContext empty;  // world == MPI_COMM_NULL
  auto comm = CreateCommunicator("mpi", empty);
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition) << comm.status();
}

TEST(CreateCommunicatorTest, NegativeTimeoutIsInvalid) {
  Options opts;
  opts.timeout = absl::Seconds(-1);
  auto comm = CreateCommunicator("mpi", *g_ctx, opts);
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument) << comm.status();
}

// ---- ValidateAlltoallvArgs: pure, no communicator needed --------------------------------------------------------

AlltoallvArgs Valid(int n, char* send, char* recv) {
  AlltoallvArgs a;
  a.send = send;
  a.recv = recv;
  for (int p = 0; p < n; ++p) {
    a.send_bytes.push_back(8);
    a.send_offsets.push_back(8 * p);
    a.recv_bytes.push_back(8);
    a.recv_offsets.push_back(8 * p);
  }
  return a;
}

void ExpectInvalid(const AlltoallvArgs& a, int n, absl::string_view needle) {
  Status s = ValidateAlltoallvArgs(a, n);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), needle)) << "want '" << needle << "' in: " << s;
}

TEST(ValidateAlltoallvArgsTest, AcceptsValidArgs) {
  char send[32], recv[32];
  EXPECT_TRUE(ValidateAlltoallvArgs(Valid(4, send, recv), 4).ok());
}

TEST(ValidateAlltoallvArgsTest, VectorSizesMustMatchCommunicator) {
  char send[32], recv[32];
  ExpectInvalid(Valid(4, send, recv), 3, "send_bytes has 4 entries, expected 3");
  for (int field = 0; field < 4; ++field) {
    AlltoallvArgs a = Valid(4, send, recv);
    std::vector<size_t>* v[] = {&a.send_bytes, &a.send_offsets, &a.recv_bytes, &a.recv_offsets};
    const char* names[] = {"send_bytes", "send_offsets", "recv_bytes", "recv_offsets"};
    v[field]->pop_back();
    ExpectInvalid(a, 4, names[field]);
  }
  ExpectInvalid(AlltoallvArgs{}, 0, "size 0");
}

TEST(ValidateAlltoallvArgsTest, NullBuffersOnlyWithZeroBytes) {
  char send[32], recv[32];
  AlltoallvArgs a = Valid(4, nullptr, recv);
  ExpectInvalid(a, 4, "send is null but send_bytes[0] = 8");
  a = Valid(4, send, nullptr);
  a.recv_bytes[0] = 0;
  ExpectInvalid(a, 4, "recv is null but recv_bytes[1] = 8");
  AlltoallvArgs empty;
  empty.send_bytes.assign(4, 0);
  empty.send_offsets.assign(4, 99);
  empty.recv_bytes.assign(4, 0);
  empty.recv_offsets.assign(4, 0);
  EXPECT_TRUE(ValidateAlltoallvArgs(empty, 4).ok());
}

TEST(ValidateAlltoallvArgsTest, OffsetOverflow) {
  char send[32], recv[32];
  AlltoallvArgs a = Valid(4, send, recv);
  a.recv_offsets[2] = std::numeric_limits<size_t>::max() - 3;
  ExpectInvalid(a, 4, "recv_offsets[2]");
  a = Valid(4, send, recv);
  a.send_offsets[3] = std::numeric_limits<size_t>::max() - reinterpret_cast<uintptr_t>(send);  // address overflows
  ExpectInvalid(a, 4, "overflows");
}

TEST(ValidateAlltoallvArgsTest, Overlaps) {
  char buf[64];
  // Receive blocks overlapping each other.
  AlltoallvArgs a = Valid(4, buf + 32, buf);
  a.recv_offsets[3] = 4;
  ExpectInvalid(a, 4, "overlaps");
  // A receive block overlapping a send block (in place).
  a = Valid(4, buf, buf);
  ExpectInvalid(a, 4, "overlaps");
  a = Valid(2, buf, buf + 15);  // send [0,16), recv [15,31)
  ExpectInvalid(a, 2, "overlaps");
  // Send blocks may overlap each other (the same rows to several peers).
  a = Valid(4, buf, buf + 32);
  for (size_t& o : a.send_offsets) o = 0;
  EXPECT_TRUE(ValidateAlltoallvArgs(a, 4).ok());
  // Adjacent blocks do not overlap.
  a = Valid(2, buf, buf + 16);
  EXPECT_TRUE(ValidateAlltoallvArgs(a, 2).ok());
}

TEST(MpiTuningTest, RejectsBadKnobs) {
  internal::MpiTuning t;
  t.max_message_bytes = 0;
  EXPECT_EQ(internal::SetMpiTuning(t).code(), absl::StatusCode::kInvalidArgument);
  t.max_message_bytes = size_t{1} << 31;  // > INT_MAX
  EXPECT_EQ(internal::SetMpiTuning(t).code(), absl::StatusCode::kInvalidArgument);
  t = internal::MpiTuning{};
  t.poll_sleep = absl::Microseconds(-1);
  EXPECT_EQ(internal::SetMpiTuning(t).code(), absl::StatusCode::kInvalidArgument);
  t = internal::MpiTuning{};
  t.spin_per_mib = absl::Microseconds(-1);
  EXPECT_EQ(internal::SetMpiTuning(t).code(), absl::StatusCode::kInvalidArgument);
  t = internal::MpiTuning{};
  t.busy_poll = absl::Microseconds(-1);
  EXPECT_EQ(internal::SetMpiTuning(t).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(internal::GetMpiTuning().max_message_bytes, internal::kDefaultMaxMessageBytes);
}

}  // namespace
}  // namespace waveep::comm

int main(int argc, char** argv) {
  auto ctx = waveep::InitProcess(&argc, &argv);
  if (!ctx.ok()) {
    std::fprintf(stderr, "InitProcess failed: %s\n", std::string(ctx.status().message()).c_str());
    return 1;
  }
  waveep::comm::g_ctx = &ctx.value();
  ::testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  waveep::FinalizeProcess();
  return rc;
}
