// Copyright 2026 The waveep Authors.
//
// Conformance suite for comm/comm.h: every test runs on every backend in AvailableBackends(), under mpirun with 1,
// 2 and 4 ranks (tests/comm/CMakeLists.txt). Payload bytes are fresh random values that are never zero and depend on
// (seed, src, dst, index), and receive buffers start zeroed with zero gaps between blocks, so a lost, misplaced or
// overflowing block is caught.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "comm/comm.h"
#include "comm/mpi_transport.h"
#ifdef WAVEEP_HAVE_UCX
#include "comm/ucx_transport.h"
#endif
#ifdef WAVEEP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#include "gtest/gtest.h"
#include "runtime/mpi_context.h"
#include "runtime/runtime.h"

namespace waveep::comm {
namespace {

const ProcessContext* g_ctx = nullptr;

constexpr size_t kGap = 64;  // zero bytes between blocks; must stay zero

// ---- payload ------------------------------------------------------------------------------------------------------

uint64_t BlockKey(uint64_t seed, int src, int dst) {
  return RngHash(seed, RngStream::kTest, (static_cast<uint64_t>(src) << 32) | static_cast<uint32_t>(dst));
}

// Byte i of the block src -> dst: random, never zero.
void FillBlock(char* p, size_t n, uint64_t seed, int src, int dst) {
  const uint64_t key = BlockKey(seed, src, dst);
  for (size_t w = 0; w * 8 < n; ++w) {
    uint64_t v = RngHash(key, RngStream::kTest, w);
    for (size_t b = 0; b < 8 && w * 8 + b < n; ++b, v >>= 8) {
      const uint8_t byte = static_cast<uint8_t>(v & 0xFF);
      p[w * 8 + b] = static_cast<char>(byte == 0 ? 0xA5 : byte);
    }
  }
}

// Index of the first byte that differs from the payload, or -1.
int64_t FirstMismatch(const char* p, size_t n, uint64_t seed, int src, int dst) {
  std::vector<char> want(std::min<size_t>(n, size_t{1} << 20));
  const uint64_t key = BlockKey(seed, src, dst);
  for (size_t base = 0; base < n; base += want.size()) {
    const size_t len = std::min(want.size(), n - base);
    // base is a multiple of 8 (the chunk is 1 MiB), so words line up with FillBlock's.
    for (size_t w = 0; w * 8 < len; ++w) {
      uint64_t v = RngHash(key, RngStream::kTest, base / 8 + w);
      for (size_t b = 0; b < 8 && w * 8 + b < len; ++b, v >>= 8) {
        const uint8_t byte = static_cast<uint8_t>(v & 0xFF);
        want[w * 8 + b] = static_cast<char>(byte == 0 ? 0xA5 : byte);
      }
    }
    if (std::memcmp(p + base, want.data(), len) != 0) {
      for (size_t i = 0; i < len; ++i) {
        if (p[base + i] != want[i]) return static_cast<int64_t>(base + i);
      }
    }
  }
  return -1;
}

using SizeFn = std::function<size_t(int src, int dst)>;

// One exchange's buffers and arguments. Send blocks are laid out in descending peer order and receive blocks in
// ascending order, both with zero gaps, so offsets matter.
struct TestExchange {
  uint64_t seed = 0;
  int rank = 0;
  int size = 0;
  std::vector<char> send;
  std::vector<char> recv;
  AlltoallvArgs args;

  AlltoallvArgs Args() const { return args; }
};

std::unique_ptr<TestExchange> MakeExchange(int rank, int size, uint64_t seed, const SizeFn& bytes, std::string label) {
  auto ex = std::make_unique<TestExchange>();
  ex->seed = seed;
  ex->rank = rank;
  ex->size = size;
  AlltoallvArgs& a = ex->args;
  a.label = std::move(label);
  a.send_bytes.resize(size);
  a.send_offsets.resize(size);
  a.recv_bytes.resize(size);
  a.recv_offsets.resize(size);
  size_t send_total = kGap, recv_total = kGap;
  for (int p = size - 1; p >= 0; --p) {
    a.send_bytes[p] = bytes(rank, p);
    a.send_offsets[p] = send_total;
    send_total += a.send_bytes[p] + kGap;
  }
  for (int p = 0; p < size; ++p) {
    a.recv_bytes[p] = bytes(p, rank);
    a.recv_offsets[p] = recv_total;
    recv_total += a.recv_bytes[p] + kGap;
  }
  ex->send.assign(send_total, 0);
  ex->recv.assign(recv_total, 0);
  for (int p = 0; p < size; ++p) FillBlock(ex->send.data() + a.send_offsets[p], a.send_bytes[p], seed, rank, p);
  a.send = ex->send.data();
  a.recv = ex->recv.data();
  return ex;
}

// Empty when every received block holds its payload and every gap is still zero; otherwise what is wrong.
std::string CheckReceived(const TestExchange& ex) {
  const AlltoallvArgs& a = ex.args;
  std::vector<char> in_block(ex.recv.size(), 0);
  for (int p = 0; p < ex.size; ++p) {
    const int64_t bad = FirstMismatch(ex.recv.data() + a.recv_offsets[p], a.recv_bytes[p], ex.seed, p, ex.rank);
    if (bad >= 0) {
      return absl::StrCat("rank ", ex.rank, ", '", a.label, "': block from rank ", p, " (", a.recv_bytes[p],
                          " bytes) differs at byte ", bad);
    }
    std::memset(in_block.data() + a.recv_offsets[p], 1, a.recv_bytes[p]);
  }
  for (size_t i = 0; i < ex.recv.size(); ++i) {
    if (in_block[i] == 0 && ex.recv[i] != 0) {
      return absl::StrCat("rank ", ex.rank, ", '", a.label, "': byte ", i, " outside every block was written");
    }
  }
  return "";
}

// ---- fixture ------------------------------------------------------------------------------------------------------

class CommConformanceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto comm = CreateCommunicator(GetParam(), *g_ctx);
    // A GPU backend built into this binary is Unavailable on a machine without a device (the same on every rank).
    if (comm.status().code() == absl::StatusCode::kUnavailable) GTEST_SKIP() << comm.status();
    ASSERT_TRUE(comm.ok()) << comm.status();
    comm_ = std::move(comm).value();
    rank_ = comm_->rank();
    size_ = comm_->size();
    // Fresh contents every run: rank 0's random seed, shared.
    uint64_t mine = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    std::vector<uint64_t> all(size_);
    ASSERT_TRUE(comm_->Allgather(&mine, sizeof(mine), all.data()).ok());
    seed_ = all[0];
  }

  void TearDown() override {
    if (comm_ != nullptr) {
      EXPECT_TRUE(comm_->Barrier().ok());
    }
  }

  bool HostMemory() const { return comm_->capabilities().host_memory; }

  std::unique_ptr<Stream> NewStream(std::string name) {
    StreamOptions opts;
    opts.name = std::move(name);
    auto s = Stream::Create(Device::Cpu(), opts);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  std::unique_ptr<TestExchange> Make(const SizeFn& bytes, std::string label, uint64_t salt = 0) {
    return MakeExchange(rank_, size_, seed_ + salt, bytes, std::move(label));
  }

  // Runs `ex` asynchronously on a fresh stream and checks the result.
  void RunAsyncAndCheck(TestExchange& ex) {
    auto stream = NewStream("comm");
    ASSERT_NE(stream, nullptr);
    ASSERT_TRUE(comm_->AlltoallvAsync(ex.Args(), *stream).ok());
    Status s = stream->Synchronize();
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(CheckReceived(ex), "");
  }

  std::unique_ptr<Communicator> comm_;
  int rank_ = 0;
  int size_ = 1;
  uint64_t seed_ = 0;
};

#define REQUIRE_HOST_MEMORY()                                                       \
  do {                                                                              \
    if (!HostMemory()) GTEST_SKIP() << GetParam() << " does not take host buffers"; \
  } while (0)

// Sets the MPI backend's knobs for one test (on every rank: the split must agree) and restores them.
class ScopedMpiTuning {
 public:
  explicit ScopedMpiTuning(internal::MpiTuning t) : saved_(internal::GetMpiTuning()) {
    EXPECT_TRUE(internal::SetMpiTuning(t).ok());
  }
  ~ScopedMpiTuning() { EXPECT_TRUE(internal::SetMpiTuning(saved_).ok()); }

 private:
  internal::MpiTuning saved_;
};

// ---- basics -------------------------------------------------------------------------------------------------------

TEST_P(CommConformanceTest, IdentityAndLinkEstimates) {
  EXPECT_EQ(comm_->name(), GetParam());
  EXPECT_EQ(rank_, g_ctx->world_rank);
  EXPECT_EQ(size_, g_ctx->world_size);
  LinkEstimate self = comm_->Estimate(rank_);
  EXPECT_EQ(self.kind, "loopback");
  for (int p = 0; p < size_; ++p) {
    LinkEstimate e = comm_->Estimate(p);
    EXPECT_FALSE(e.kind.empty());
    EXPECT_GT(e.bw_gbps, 0) << "peer " << p;
    EXPECT_GT(e.latency_us, 0) << "peer " << p;
    if (p != rank_ && g_ctx->num_nodes == 1) {
      EXPECT_NE(e.kind, "net") << "peer " << p << " is on this node";  // "shm" (mpi), "cuda_ipc", "nvlink" (nccl)
    }
  }
  EXPECT_EQ(comm_->Estimate(-1).bw_gbps, 0);
  EXPECT_EQ(comm_->Estimate(size_).bw_gbps, 0);
}

TEST_P(CommConformanceTest, Barrier) {
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(comm_->Barrier().ok());
}

TEST_P(CommConformanceTest, Allgather) {
  const int32_t mine[3] = {rank_, rank_ * 7 + 1, -rank_};
  std::vector<int32_t> all(3 * size_, -99);
  ASSERT_TRUE(comm_->Allgather(mine, sizeof(mine), all.data()).ok());
  for (int p = 0; p < size_; ++p) {
    EXPECT_EQ(all[3 * p], p);
    EXPECT_EQ(all[3 * p + 1], p * 7 + 1);
    EXPECT_EQ(all[3 * p + 2], -p);
  }
  EXPECT_TRUE(comm_->Allgather(nullptr, 0, nullptr).ok());  // zero bytes: nothing to do
  EXPECT_EQ(comm_->Allgather(nullptr, 4, all.data()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(CommConformanceTest, AlltoallCounts) {
  const int64_t n = 3;
  std::vector<int64_t> send(n * size_), recv(n * size_, -1);
  for (int p = 0; p < size_; ++p) {
    for (int64_t i = 0; i < n; ++i) send[p * n + i] = (int64_t{rank_} << 40) + int64_t{p} * 1000 + i;
  }
  ASSERT_TRUE(comm_->AlltoallCounts(send.data(), n, recv.data()).ok());
  for (int p = 0; p < size_; ++p) {
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(recv[p * n + i], (int64_t{p} << 40) + int64_t{rank_} * 1000 + i);
  }
  EXPECT_TRUE(comm_->AlltoallCounts(nullptr, 0, nullptr).ok());
  EXPECT_EQ(comm_->AlltoallCounts(send.data(), -1, recv.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm_->AlltoallCounts(nullptr, n, recv.data()).code(), absl::StatusCode::kInvalidArgument);
}

// ---- all-to-all-v ------------------------------------------------------------------------------------------------

SizeFn UnevenSizes(uint64_t seed) {
  return [seed](int src, int dst) {
    return 1 + static_cast<size_t>(UniformInt(seed, RngStream::kTest, src * 4096 + dst, 5000));
  };
}

TEST_P(CommConformanceTest, AsyncUnevenSizes) {
  REQUIRE_HOST_MEMORY();
  auto ex = Make(UnevenSizes(seed_), "uneven");
  RunAsyncAndCheck(*ex);
}

TEST_P(CommConformanceTest, BlockingUnevenSizes) {
  REQUIRE_HOST_MEMORY();
  auto ex = Make(UnevenSizes(seed_ + 1), "uneven-blocking");
  Status s = comm_->Alltoallv(ex->Args());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*ex), "");
}

// The blocking path reuses the previous call's plan when the buffers, sizes, offsets and message split repeat. New
// contents in the same buffers must arrive, and any change of layout or split must be planned (and validated) anew.
TEST_P(CommConformanceTest, BlockingRepeatsWithNewContentsAndChangedLayouts) {
  REQUIRE_HOST_MEMORY();
  auto ex = Make(UnevenSizes(seed_ + 7), "repeat-blocking");
  auto refill = [&](uint64_t seed) {
    ex->seed = seed;
    for (int p = 0; p < size_; ++p) {
      FillBlock(ex->send.data() + ex->args.send_offsets[p], ex->args.send_bytes[p], seed, rank_, p);
    }
    std::fill(ex->recv.begin(), ex->recv.end(), 0);
  };
  for (int i = 0; i < 3; ++i) {  // same layout, new contents each time
    refill(seed_ + 100 + i);
    Status s = comm_->Alltoallv(ex->Args());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(CheckReceived(*ex), "") << "repeat " << i;
  }
  for (bool send_side : {true, false}) {  // the same buffers with one size changed: validated, not reused
    AlltoallvArgs bad = ex->Args();
    (send_side ? bad.send_bytes : bad.recv_bytes)[rank_] += 1;
    Status s = comm_->Alltoallv(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << (send_side ? "send" : "recv") << ": " << s;
  }
  if (GetParam() == "mpi") {  // the same layout under another message split
    internal::MpiTuning t = internal::GetMpiTuning();
    t.max_message_bytes = 100;
    ScopedMpiTuning scoped(t);
    refill(seed_ + 200);
    Status s = comm_->Alltoallv(ex->Args());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(CheckReceived(*ex), "") << "split at 100 bytes";
  }
  // The same buffers with every block halved (consistent on all ranks: the sender halves what the receiver halves).
  refill(seed_ + 300);
  AlltoallvArgs half = ex->Args();
  for (int p = 0; p < size_; ++p) {
    half.send_bytes[p] /= 2;
    half.recv_bytes[p] /= 2;
  }
  Status s = comm_->Alltoallv(half);
  ASSERT_TRUE(s.ok()) << s;
  for (int p = 0; p < size_; ++p) {
    const char* block = ex->recv.data() + half.recv_offsets[p];
    EXPECT_EQ(FirstMismatch(block, half.recv_bytes[p], ex->seed, p, rank_), -1) << "half block from rank " << p;
    for (size_t i = half.recv_bytes[p]; i < ex->args.recv_bytes[p]; ++i) {
      ASSERT_EQ(block[i], 0) << "byte " << i << " of the block from rank " << p << " is past the halved size";
    }
  }
  // And back to the full layout.
  refill(seed_ + 400);
  s = comm_->Alltoallv(ex->Args());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*ex), "");
}

TEST_P(CommConformanceTest, ZeroSizeBlocks) {
  REQUIRE_HOST_MEMORY();
  // Rank 0 sends nothing at all; otherwise blocks between ranks of equal parity are empty (self included), so some
  // peers exchange nothing in either direction and some in one direction only.
  auto ex = Make(
      [](int src, int dst) -> size_t {
        if (src == 0 || (src + dst) % 2 == 0) return 0;
        return 100 + 37 * src + dst;
      },
      "zero-blocks");
  RunAsyncAndCheck(*ex);
  auto blocking = Make([](int src, int dst) -> size_t { return src == dst || dst == 1 ? 0 : 513; }, "zero-blocking");
  Status s = comm_->Alltoallv(blocking->Args());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*blocking), "");
}

TEST_P(CommConformanceTest, EverythingZero) {
  AlltoallvArgs a;
  a.label = "all-zero";
  a.send_bytes.assign(size_, 0);
  a.send_offsets.assign(size_, 12345);  // offsets of empty blocks do not matter, nor do null buffers
  a.recv_bytes.assign(size_, 0);
  a.recv_offsets.assign(size_, 0);
  // Device-only backends (nccl) need a CUDA stream even for nothing; they only exist with a GPU.
  std::unique_ptr<Stream> stream;
  if (HostMemory()) {
    stream = NewStream("comm");
  } else {
    StreamOptions opts;
    opts.name = "comm";
    auto s = Stream::Create(Device::Cuda(g_ctx->local_rank % CudaDeviceCount()), opts);
    ASSERT_TRUE(s.ok()) << s.status();
    stream = std::move(s).value();
  }
  ASSERT_TRUE(comm_->AlltoallvAsync(a, *stream).ok());
  Status s = stream->Synchronize();
  ASSERT_TRUE(s.ok()) << s;
  s = comm_->Alltoallv(a);
  ASSERT_TRUE(s.ok()) << s;
}

// 64 MiB to one peer only (rank r -> r+1), so memory stays at ~2 x 64 MiB per rank.
SizeFn RingOnly(size_t bytes, int size) {
  return [bytes, size](int src, int dst) -> size_t { return dst == (src + 1) % size ? bytes : 0; };
}

TEST_P(CommConformanceTest, LargeMessage64MiB) {
  REQUIRE_HOST_MEMORY();
  auto ex = Make(RingOnly(size_t{64} << 20, size_), "large");
  RunAsyncAndCheck(*ex);
}

TEST_P(CommConformanceTest, LargeMessageSplitIntoChunks) {
  REQUIRE_HOST_MEMORY();
  if (GetParam() != "mpi") GTEST_SKIP() << "the chunk knob belongs to the mpi backend";
  internal::MpiTuning t = internal::GetMpiTuning();
  t.max_message_bytes = (size_t{8} << 20) + 5;  // 64 MiB -> 8 messages, the last one short
  ScopedMpiTuning scoped(t);
  auto ex = Make(RingOnly((size_t{64} << 20) + 3, size_), "large-split");
  RunAsyncAndCheck(*ex);
}

TEST_P(CommConformanceTest, ForcedChunkSplitting) {
  REQUIRE_HOST_MEMORY();
  if (GetParam() != "mpi") GTEST_SKIP() << "the chunk knob belongs to the mpi backend";
  internal::MpiTuning t = internal::GetMpiTuning();
  t.max_message_bytes = 1000;
  ScopedMpiTuning scoped(t);
  // Every pair of ranks (whatever the rank count) exchanges several messages, some with a short tail ...
  const size_t multi[] = {4099, 2000, 1001, 3000};
  auto split = [&multi](int src, int dst) { return multi[(src + 2 * dst) % 4]; };
  // ... and sizes around the threshold: one byte, one short message, exactly one full message, none.
  const size_t edges[] = {0, 1, 999, 1000, 1001, 4099, 2000};
  auto edge = [&edges](int src, int dst) { return edges[(src * 3 + dst) % 7]; };
  for (const SizeFn& fn : {SizeFn(split), SizeFn(edge)}) {
    auto ex = Make(fn, "forced-split");
    RunAsyncAndCheck(*ex);
    auto blocking = Make(fn, "forced-split-blocking", 1);
    Status s = comm_->Alltoallv(blocking->Args());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(CheckReceived(*blocking), "");
  }
}

TEST_P(CommConformanceTest, BackToBackOnOneStream) {
  REQUIRE_HOST_MEMORY();
  std::vector<std::unique_ptr<TestExchange>> exs;  // declared first: outlives the stream that uses it
  auto stream = NewStream("comm");
  for (int i = 0; i < 6; ++i) {
    const uint64_t salt = 100 + i;
    exs.push_back(Make(
        [this, salt, i](int src, int dst) -> size_t {
          if (i == 2) return 0;                        // an empty one in the middle
          if (i == 4) return (src + dst) % 3 ? 0 : 7;  // a sparse one
          return static_cast<size_t>(UniformInt(seed_ + salt, RngStream::kTest, src * 64 + dst, 20000));
        },
        absl::StrCat("dispatch(", i, ")"), salt));
    ASSERT_TRUE(comm_->AlltoallvAsync(exs.back()->Args(), *stream).ok());
  }
  Status s = stream->Synchronize();
  ASSERT_TRUE(s.ok()) << s;
  for (const auto& ex : exs) EXPECT_EQ(CheckReceived(*ex), "");
}

TEST_P(CommConformanceTest, TwoStreamsInterleaved) {
  REQUIRE_HOST_MEMORY();
  // Exchanges on two streams run concurrently and in either order; they must still match by issue order.
  std::vector<std::unique_ptr<TestExchange>> exs;
  auto a = NewStream("dispatch");
  auto b = NewStream("combine");
  for (int i = 0; i < 8; ++i) {
    exs.push_back(Make(UnevenSizes(seed_ + 200 + i), absl::StrCat("wave(", i, ")"), 200 + i));
    ASSERT_TRUE(comm_->AlltoallvAsync(exs.back()->Args(), i % 2 ? *b : *a).ok());
  }
  Status sa = a->Synchronize();
  Status sb = b->Synchronize();
  ASSERT_TRUE(sa.ok()) << sa;
  ASSERT_TRUE(sb.ok()) << sb;
  for (const auto& ex : exs) EXPECT_EQ(CheckReceived(*ex), "");
}

TEST_P(CommConformanceTest, BlockingCollectivesWhileExchangeInFlight) {
  REQUIRE_HOST_MEMORY();
  // Rank 0 holds its side of the exchange behind a gate, so on every other rank the exchange is certainly in flight
  // (waiting for rank 0) while the main thread runs blocking collectives. Everything the stream touches is declared
  // before it, so it outlives the stream's worker even when an ASSERT returns early.
  std::atomic<bool> gate{false};
  auto done = Event::Create(Device::Cpu(), "exchange done");
  ASSERT_TRUE(done.ok());
  auto ex = Make(UnevenSizes(seed_ + 300), "in-flight");
  auto stream = NewStream("comm");
  if (rank_ == 0) {
    ASSERT_TRUE(stream
                    ->Enqueue([&gate] {
                      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
                      while (!gate.load()) {
                        if (std::chrono::steady_clock::now() > deadline) {
                          return absl::DeadlineExceededError("test gate never opened");
                        }
                        std::this_thread::sleep_for(std::chrono::milliseconds(1));
                      }
                      return absl::OkStatus();
                    })
                    .ok());
  }
  ASSERT_TRUE(comm_->AlltoallvAsync(ex->Args(), *stream).ok());
  ASSERT_TRUE(stream->Record(**done).ok());

  ASSERT_TRUE(comm_->Barrier().ok());
  int64_t mine = rank_ + 1;
  std::vector<int64_t> all(size_);
  ASSERT_TRUE(comm_->Allgather(&mine, sizeof(mine), all.data()).ok());
  for (int p = 0; p < size_; ++p) EXPECT_EQ(all[p], p + 1);
  std::vector<int64_t> counts(size_, rank_), got(size_);
  ASSERT_TRUE(comm_->AlltoallCounts(counts.data(), 1, got.data()).ok());
  for (int p = 0; p < size_; ++p) EXPECT_EQ(got[p], p);
  auto blocking = Make(UnevenSizes(seed_ + 301), "blocking-beside-async", 301);
  Status s = comm_->Alltoallv(blocking->Args());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*blocking), "");
  if (rank_ != 0) {
    EXPECT_FALSE((*done)->Query()) << "the exchange cannot finish before rank 0 opens its gate";
  }

  ASSERT_TRUE(comm_->Barrier().ok());  // every rank has checked; now let rank 0 join the exchange
  gate = true;
  s = stream->Synchronize();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*ex), "");
}

#ifdef WAVEEP_HAVE_UCX
// ucx_put: each exchange lands in one registered buffer of the receiver, whose key a sender unpacks once and keeps.
// Growing exchanges (every one needs a buffer twice the last) make each receiver evict the least recently used of
// its kUcxMaxFreeLandings free buffers; the senders must drop the keys of evicted buffers (announced in later
// clear-to-send messages), so what they hold stays bounded by the buffers still alive, and later exchanges into
// those buffers must still land. Without the pruning a sender holds one key per buffer a peer ever had (8 here).
TEST_P(CommConformanceTest, RemoteKeysOfEvictedLandingBuffersAreDropped) {
  REQUIRE_HOST_MEMORY();
  if (internal::UcxRemoteKeysHeld(*comm_) < 0) GTEST_SKIP() << "not a ucx communicator";
  if (size_ < 2) GTEST_SKIP() << "needs peers";
  constexpr int kSizes = 2 * internal::kUcxMaxFreeLandings;
  // Rank r receives 3/4 of 64 KiB << i in all (the smallest landing buffer is 64 KiB): a new buffer each time.
  auto sizes = [&](int i) -> SizeFn {
    const size_t per_peer = (size_t{3} << (14 + i)) / static_cast<size_t>(size_ - 1);
    return [per_peer](int src, int dst) -> size_t { return src == dst ? 64 : per_peer - 8 * (src % 3); };
  };
  for (int pass = 0; pass < 2; ++pass) {  // growing, then shrinking: the second pass reuses the live buffers' keys
    for (int j = 0; j < kSizes; ++j) {
      const int i = pass == 0 ? j : kSizes - 1 - j;
      auto ex = Make(sizes(i), absl::StrCat("landing-growth ", pass, "/", i), 500 + 16 * pass + i);
      Status s = comm_->Alltoallv(ex->Args());
      ASSERT_TRUE(s.ok()) << s;
      ASSERT_EQ(CheckReceived(*ex), "");
    }
    const int64_t held = internal::UcxRemoteKeysHeld(*comm_);
    if (GetParam() == "ucx_put") {
      // Each peer keeps at most kUcxMaxFreeLandings buffers alive (none is in use between exchanges).
      EXPECT_LE(held, int64_t{size_ - 1} * internal::kUcxMaxFreeLandings) << "after pass " << pass;
      EXPECT_GT(held, 0) << "the put path holds the keys of the buffers it puts into";
    }
  }
}
#endif

TEST_P(CommConformanceTest, TraceSpanPerExchange) {
  REQUIRE_HOST_MEMORY();
  GlobalTracer().Clear();
  GlobalTracer().SetEnabled(true);
  auto ex = Make([](int src, int dst) -> size_t { return src == dst ? 10 : 1000; }, "traced(7)");
  RunAsyncAndCheck(*ex);
  GlobalTracer().SetEnabled(false);
  std::vector<TraceSpan> spans = GlobalTracer().Spans();
  GlobalTracer().Clear();
  auto it = std::find_if(spans.begin(), spans.end(), [](const TraceSpan& t) { return t.name == "traced(7)"; });
  ASSERT_NE(it, spans.end());
  EXPECT_EQ(it->row, "comm");
  double sent = -1, recv = -1;
  for (const auto& [k, v] : it->args) {
    if (k == "bytes_sent") sent = v;
    if (k == "bytes_recv") recv = v;
  }
  EXPECT_EQ(sent, 1000.0 * (size_ - 1));
  EXPECT_EQ(recv, 1000.0 * (size_ - 1));
}

// ---- argument validation: fails on the caller, before any communication ------------------------------------------

TEST_P(CommConformanceTest, InvalidArgumentsFailWithoutCommunicating) {
  REQUIRE_HOST_MEMORY();
  auto stream = NewStream("comm");
  auto good = Make([](int, int) -> size_t { return 64; }, "valid");
  auto expect_invalid = [&](const AlltoallvArgs& a, absl::string_view needle) {
    Status s = comm_->AlltoallvAsync(a, *stream);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), needle)) << s;
    s = comm_->Alltoallv(a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), needle)) << s;
  };
  {
    AlltoallvArgs a = good->Args();
    a.send_bytes.pop_back();
    expect_invalid(a, "send_bytes");
  }
  {
    AlltoallvArgs a = good->Args();
    a.recv_offsets.push_back(0);
    expect_invalid(a, "recv_offsets");
  }
  {
    AlltoallvArgs a = good->Args();
    a.send = nullptr;
    expect_invalid(a, "send is null");
  }
  {
    AlltoallvArgs a = good->Args();
    a.recv = nullptr;
    expect_invalid(a, "recv is null");
  }
  {
    AlltoallvArgs a = good->Args();
    a.send_offsets[size_ - 1] = std::numeric_limits<size_t>::max() - 10;
    expect_invalid(a, "overflows");
  }
  if (size_ >= 2) {
    AlltoallvArgs a = good->Args();
    a.recv_offsets[1] = a.recv_offsets[0] + 1;  // two receive blocks overlap
    expect_invalid(a, "overlaps");
  }
  {
    AlltoallvArgs a = good->Args();
    a.recv_bytes[rank_] += 1;  // self block disagrees
    expect_invalid(a, "send_bytes");
  }
  // Nothing was sent and no sequence number was consumed: a valid exchange right after still matches.
  EXPECT_TRUE(stream->status().ok());
  RunAsyncAndCheck(*good);
  auto blocking = Make([](int, int) -> size_t { return 32; }, "valid-blocking", 1);
  Status s = comm_->Alltoallv(blocking->Args());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*blocking), "");
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// After rank 1 sent rank 0 a block of another size than rank 0 expects: rank 0 or rank 1 (the receiver or the sender,
// by backend) failed with InvalidArgument naming the other rank, "disagrees" and `label`; neither failed otherwise
// than by a timeout or an abort. Collective over the world.
void ExpectSizeDisagreementNamed(const Status& s, int rank, absl::string_view label) {
  int named = 0;
  if (rank <= 1 && !s.ok()) {
    if (s.code() == absl::StatusCode::kInvalidArgument) {
      EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("rank ", 1 - rank))) << s;
      EXPECT_TRUE(absl::StrContains(s.message(), "disagrees")) << s;
      EXPECT_TRUE(absl::StrContains(s.message(), label)) << s;
      named = 1;
    } else {
      EXPECT_TRUE(s.code() == absl::StatusCode::kAborted || s.code() == absl::StatusCode::kDeadlineExceeded) << s;
    }
  }
  MPI_Allreduce(MPI_IN_PLACE, &named, 1, MPI_INT, MPI_MAX, WorldComm(*g_ctx));
  EXPECT_EQ(named, 1) << "neither rank 0 nor rank 1 named the size disagreement";
}

// ---- device memory: every backend with capabilities().device_memory, on a GPU machine -----------------------------

// A TestExchange mirrored into device memory: the payload is copied up before the exchange and the receive buffer
// (gaps included) copied back for CheckReceived.
class DeviceExchange {
 public:
  static std::unique_ptr<DeviceExchange> Make(std::unique_ptr<TestExchange> host, int device) {
    auto d = std::unique_ptr<DeviceExchange>(new DeviceExchange);
    d->host_ = std::move(host);
    auto send = Buffer::Allocate(Device::Cuda(device), MemoryKind::kDevice, d->host_->send.size());
    auto recv = Buffer::Allocate(Device::Cuda(device), MemoryKind::kDevice, d->host_->recv.size());
    EXPECT_TRUE(send.ok() && recv.ok()) << send.status() << recv.status();
    if (!send.ok() || !recv.ok()) return nullptr;
    d->send_ = std::move(send).value();
    d->recv_ = std::move(recv).value();
#ifdef WAVEEP_HAVE_CUDA
    EXPECT_EQ(cudaMemcpy(d->send_.data(), d->host_->send.data(), d->host_->send.size(), cudaMemcpyHostToDevice),
              cudaSuccess);
    EXPECT_EQ(cudaMemset(d->recv_.data(), 0, d->host_->recv.size()), cudaSuccess);
    // cudaMemset of device memory is asynchronous and the backends copy on non-blocking streams, which do not order
    // after the legacy default stream: without this the zeroing may land after the received data.
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
#endif
    return d;
  }

  AlltoallvArgs Args() const {
    AlltoallvArgs a = host_->args;
    a.send = send_.data();
    a.recv = recv_.data();
    return a;
  }

  // Copies the received bytes down and checks them (empty string = correct).
  std::string Check() {
#ifdef WAVEEP_HAVE_CUDA
    if (cudaMemcpy(host_->recv.data(), recv_.data(), host_->recv.size(), cudaMemcpyDeviceToHost) != cudaSuccess) {
      return "cudaMemcpy of the receive buffer failed";
    }
#endif
    return CheckReceived(*host_);
  }

 private:
  DeviceExchange() = default;
  std::unique_ptr<TestExchange> host_;
  Buffer send_;
  Buffer recv_;
};

class DeviceMemoryTest : public CommConformanceTest {
 protected:
  void SetUp() override {
    CommConformanceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (!BuiltWithCuda() || CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    if (!comm_->capabilities().device_memory) GTEST_SKIP() << GetParam() << " does not take device buffers";
    device_ = g_ctx->local_rank % CudaDeviceCount();  // several ranks per GPU under MPS
  }

  std::unique_ptr<DeviceExchange> MakeDevice(const SizeFn& bytes, std::string label, uint64_t salt) {
    return DeviceExchange::Make(Make(bytes, std::move(label), salt), device_);
  }

  // Runs `ex` on a stream of `device` (CPU or CUDA) and checks it.
  void RunOn(Device device, DeviceExchange& ex) {
    StreamOptions opts;
    opts.name = "comm";
    auto stream = Stream::Create(device, opts);
    ASSERT_TRUE(stream.ok()) << stream.status();
    Status s = comm_->AlltoallvAsync(ex.Args(), **stream);
    if (s.code() == absl::StatusCode::kFailedPrecondition && device.is_cpu()) {
      GTEST_SKIP() << GetParam() << " needs a CUDA stream: " << s;
    }
    ASSERT_TRUE(s.ok()) << s;
    s = (*stream)->Synchronize();
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(ex.Check(), "");
  }

  // Issues every exchange on one CUDA stream without waiting in between, then synchronizes once and checks each.
  void RunBackToBack(const std::vector<std::unique_ptr<DeviceExchange>>& exs) {
    StreamOptions opts;
    opts.name = "comm";
    auto stream = Stream::Create(Device::Cuda(device_), opts);
    ASSERT_TRUE(stream.ok()) << stream.status();
    for (const auto& ex : exs) ASSERT_TRUE(comm_->AlltoallvAsync(ex->Args(), **stream).ok());
    Status s = (*stream)->Synchronize();
    ASSERT_TRUE(s.ok()) << s;
    for (const auto& ex : exs) EXPECT_EQ(ex->Check(), "");
  }

  int device_ = 0;
};

TEST_P(DeviceMemoryTest, AsyncUnevenSizesOnCudaStream) {
  auto ex = MakeDevice(UnevenSizes(seed_ + 100), "device-uneven", 100);
  ASSERT_NE(ex, nullptr);
  RunOn(Device::Cuda(device_), *ex);
}

TEST_P(DeviceMemoryTest, AsyncUnevenSizesOnCpuStream) {
  auto ex = MakeDevice(UnevenSizes(seed_ + 101), "device-uneven-cpu-stream", 101);
  ASSERT_NE(ex, nullptr);
  RunOn(Device::Cpu(), *ex);
}

TEST_P(DeviceMemoryTest, BlockingUnevenSizes) {
  auto ex = MakeDevice(UnevenSizes(seed_ + 102), "device-blocking", 102);
  ASSERT_NE(ex, nullptr);
  Status s = comm_->Alltoallv(ex->Args());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(ex->Check(), "");
}

TEST_P(DeviceMemoryTest, ZeroSizeBlocks) {
  auto ex = MakeDevice([](int src, int dst) -> size_t { return src == 0 || (src + dst) % 2 == 0 ? 0 : 4097; },
                       "device-zero-blocks", 103);
  ASSERT_NE(ex, nullptr);
  RunOn(Device::Cuda(device_), *ex);
}

// Several staging chunks per block, with a chunk size that does not divide the block: exercises the pipeline.
TEST_P(DeviceMemoryTest, LargeBlocksPipelined) {
  internal::MpiTuning t = internal::GetMpiTuning();
  t.staging_chunk_bytes = (size_t{1} << 20) + 4096;
  t.staging_slots = 2;
  ScopedMpiTuning tuning(t);
  auto ex = MakeDevice([](int src, int dst) -> size_t { return (size_t{8} << 20) + 977 * (src + 1) + dst; },
                       "device-large", 104);
  ASSERT_NE(ex, nullptr);
  RunOn(Device::Cuda(device_), *ex);
}

TEST_P(DeviceMemoryTest, BackToBackOnOneCudaStream) {
  std::vector<std::unique_ptr<DeviceExchange>> exs;
  for (int i = 0; i < 4; ++i) {
    exs.push_back(MakeDevice(UnevenSizes(seed_ + 110 + i), absl::StrCat("device-b2b(", i, ")"), 110 + i));
    ASSERT_NE(exs.back(), nullptr);
  }
  RunBackToBack(exs);
}

// Exchanges that outgrow every earlier one, queued back to back on one CUDA stream, so that the stream already waits
// on the proxy when a larger exchange runs (cuda_ipc grows its receive arena then: a cudaFree there would wait for the
// waiting stream for ever), then a small one into the grown arena.
TEST_P(DeviceMemoryTest, GrowingExchangesOnOneCudaStream) {
  std::vector<std::unique_ptr<DeviceExchange>> exs;
  const size_t kib[] = {64, 2048, 8192, 16};
  for (int i = 0; i < 4; ++i) {
    const size_t base = kib[i] << 10;
    exs.push_back(MakeDevice([base](int src, int dst) -> size_t { return base + 97 * (src + 1) + 13 * dst; },
                             absl::StrCat("device-growing(", kib[i], " KiB)"), 120 + i));
    ASSERT_NE(exs.back(), nullptr);
  }
  RunBackToBack(exs);
}

// Host buffers on a CUDA stream (backends that take host memory): the exchange is the proxy's job too, never a CUDA
// host function that blocks on MPI.
TEST_P(DeviceMemoryTest, HostBuffersOnCudaStream) {
  REQUIRE_HOST_MEMORY();
  StreamOptions opts;
  opts.name = "comm";
  auto stream = Stream::Create(Device::Cuda(device_), opts);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto first = Make(UnevenSizes(seed_ + 130), "host-on-cuda-stream(0)", 130);
  auto second = Make(UnevenSizes(seed_ + 131), "host-on-cuda-stream(1)", 131);
  ASSERT_TRUE(comm_->AlltoallvAsync(first->Args(), **stream).ok());
  ASSERT_TRUE(comm_->AlltoallvAsync(second->Args(), **stream).ok());
  Status s = (*stream)->Synchronize();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*first), "");
  EXPECT_EQ(CheckReceived(*second), "");
}

// Rank 1 sends rank 0 one byte more than rank 0 expects, in device memory: the pair names the disagreement (mpi
// staging: the receiver; cuda_ipc: the sender, which learns the expected size from the control message and copies
// nothing) instead of writing past the block; every rank returns within the short timeout.
TEST_P(DeviceMemoryTest, PeerSendingAnotherSizeIsNamed) {
  if (size_ < 2) GTEST_SKIP() << "needs at least two ranks";
  Options opts;
  opts.timeout = absl::Seconds(2);
  auto c = CreateCommunicator(GetParam(), *g_ctx, opts);
  ASSERT_TRUE(c.ok()) << c.status();
  constexpr size_t kBase = size_t{96} << 10;
  auto host = Make([](int, int) -> size_t { return kBase; }, "device-size-disagrees", 140);
  if (rank_ == 1) host->args.send_bytes[0] = kBase + 1;  // block 0 is followed by kGap bytes of its buffer
  auto ex = DeviceExchange::Make(std::move(host), device_);
  ASSERT_NE(ex, nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  const Status s = (*c)->Alltoallv(ex->Args());
  EXPECT_LT(SecondsSince(t0), 30.0) << s;
  ExpectSizeDisagreementNamed(s, rank_, "device-size-disagrees");
  ASSERT_TRUE(comm_->Barrier().ok());
}

// ---- timeouts: a rank that skips an exchange makes the others fail, not hang ------------------------------------

class TimeoutTest : public CommConformanceTest {
 protected:
  static constexpr absl::Duration kShort = absl::Seconds(2);
  static constexpr size_t kBytes = 256;  // small enough to go eagerly: the late rank's sends complete on their own

  void SetUp() override {
    CommConformanceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (size_ < 2) GTEST_SKIP() << "needs at least two ranks";
    Options opts;
    opts.timeout = kShort;
    auto c = CreateCommunicator(GetParam(), *g_ctx, opts);
    ASSERT_TRUE(c.ok()) << c.status();
    short_ = std::move(c).value();
  }

  // Checks a timeout Status seen by a rank other than 0.
  void ExpectNamesLabelAndPeer(const Status& s, double elapsed_s, absl::string_view label) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), label)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "recv from rank 0")) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("rank ", rank_, "/", size_))) << s;
    EXPECT_GE(elapsed_s, absl::ToDoubleSeconds(kShort) * 0.9);
    EXPECT_LT(elapsed_s, 30.0) << "took the default timeout, not the communicator's";
  }

  // Checks what the late rank 0 sees when it finally issues an exchange the others abandoned (see the tests). On
  // ucx a block moves only while its sender progresses UCX, which the others stopped doing for this exchange: whether
  // their blocks left before they gave up depends on the transport (over TCP they do; over shared memory a block may
  // still wait in the sender's queue). So the late side either completes with their data, or fails within its own
  // timeout naming the exchange — Aborted when the others' abort messages reached it, DeadlineExceeded otherwise —
  // never with wrong data, never hanging.

  // A receive this rank gave up on is never written afterwards (on ucx_put a late sender still holds the
  // clear-to-send and puts: into a quarantined landing buffer, not the caller's block). The caller marks the receive
  // buffer once the exchange failed, and checks after the late side ran and later exchanges progressed the worker.
  static constexpr char kAbandoned = 0x5a;
  static void MarkAbandoned(TestExchange& ex) { std::fill(ex.recv.begin(), ex.recv.end(), kAbandoned); }
  static void ExpectUntouched(const TestExchange& ex) {
    const auto changed = std::find_if(ex.recv.begin(), ex.recv.end(), [](char c) { return c != kAbandoned; });
    EXPECT_EQ(changed, ex.recv.end()) << "the receive buffer of an abandoned exchange was written at byte "
                                      << (changed - ex.recv.begin()) << " after the exchange had failed";
  }

  void ExpectLateSideDrains(const Status& s, absl::string_view label, const TestExchange& ex) {
    if (absl::StartsWith(GetParam(), "ucx") && !s.ok()) {
      EXPECT_TRUE(s.code() == absl::StatusCode::kAborted || s.code() == absl::StatusCode::kDeadlineExceeded) << s;
      EXPECT_TRUE(absl::StrContains(s.message(), label)) << s;
      EXPECT_TRUE(absl::StrContains(s.message(), "gave up on this exchange") ||
                  absl::StrContains(s.message(), "recv from rank"))
          << s;
      return;
    }
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(CheckReceived(ex), "");
  }

  // The blocking exchange `*ex` with rank 0 missing: every other rank times out (checked), then runs
  // `after_giving_up`; once they all have, rank 0 issues its side late (ExpectLateSideDrains). Then a later blocking
  // exchange of `after_bytes` on the short communicator runs and delivers its data (it progresses the worker, so
  // whatever the late side still sent arrives meanwhile).
  void SkipOnRank0Blocking(std::unique_ptr<TestExchange>& ex, const std::function<void()>& after_giving_up,
                           const SizeFn& after_bytes, uint64_t after_salt) {
    const std::string label = ex->args.label;
    if (rank_ != 0) {
      const auto t0 = std::chrono::steady_clock::now();
      Status s = short_->Alltoallv(ex->Args());
      ExpectNamesLabelAndPeer(s, SecondsSince(t0), label);
      after_giving_up();
    }
    ASSERT_TRUE(comm_->Barrier().ok());
    if (rank_ == 0) ExpectLateSideDrains(short_->Alltoallv(ex->Args()), label, *ex);
    ASSERT_TRUE(comm_->Barrier().ok());
    auto after = Make(after_bytes, absl::StrCat(label, ", after"), after_salt);
    Status s = short_->Alltoallv(after->Args());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(CheckReceived(*after), "");
  }

  std::unique_ptr<Communicator> short_;
};

TEST_P(TimeoutTest, AsyncExchangeWithMissingRank) {
  REQUIRE_HOST_MEMORY();
  auto ex = Make([](int, int) -> size_t { return kBytes; }, "skipped-by-rank-0");
  auto stream = NewStream("comm");
  if (rank_ != 0) {
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(short_->AlltoallvAsync(ex->Args(), *stream).ok());
    Status s = stream->Synchronize();
    ExpectNamesLabelAndPeer(s, SecondsSince(t0), "skipped-by-rank-0");
    MarkAbandoned(*ex);
  }
  // Drain: once everyone else has given up, rank 0 issues its side late. mpi: the others' sends to it went eagerly,
  // so it completes with their data; its own sends land unmatched (their receives were cancelled) and are never read.
  // ucx: the late side fails too (see ExpectLateSideDrains).
  ASSERT_TRUE(comm_->Barrier().ok());
  if (rank_ == 0) {
    ASSERT_TRUE(short_->AlltoallvAsync(ex->Args(), *stream).ok());
    ExpectLateSideDrains(stream->Synchronize(), "skipped-by-rank-0", *ex);
  }
  ASSERT_TRUE(comm_->Barrier().ok());
  // The short communicator still works for later exchanges: they use new tags.
  auto after = Make([](int src, int dst) -> size_t { return 100 + src + dst; }, "after-timeout", 5);
  auto stream2 = NewStream("comm2");
  ASSERT_TRUE(short_->AlltoallvAsync(after->Args(), *stream2).ok());
  Status s = stream2->Synchronize();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(CheckReceived(*after), "");
  if (rank_ != 0) ExpectUntouched(*ex);
}

TEST_P(TimeoutTest, BlockingExchangeWithMissingRank) {
  REQUIRE_HOST_MEMORY();
  auto ex = Make([](int, int) -> size_t { return kBytes; }, "blocking-skipped-by-rank-0");
  SkipOnRank0Blocking(
      ex, [&] { MarkAbandoned(*ex); }, [](int src, int dst) -> size_t { return 64 + src + dst; }, 7);
  if (HasFatalFailure()) return;
  if (rank_ != 0) ExpectUntouched(*ex);
}

// Blocks too large to leave at once (16 MiB for rank 0, which skips the exchange): the others give up with those sends
// still in flight, then overwrite and free their send buffers, as a caller may once the exchange failed. What still
// leaves afterwards must not be read from that memory (ucx between hosts: the rest of a block goes from a copy made
// when the exchange gave up; inside a host: from the ring, a copy already), so rank 0's late side either fails (see
// ExpectLateSideDrains) or receives the original data, and later exchanges run. AddressSanitizer reports a read of
// the freed buffer. The ucx backends only: MPI has no way to take back a posted send (MPI_Cancel of a send is
// deprecated in MPI 4.0), so on mpi the caller's buffer must outlive such a send.
TEST_P(TimeoutTest, SendBuffersFreedAfterGivingUp) {
  REQUIRE_HOST_MEMORY();
  if (!absl::StartsWith(GetParam(), "ucx")) GTEST_SKIP() << "a posted MPI send cannot be taken back";
  constexpr size_t kLarge = size_t{16} << 20;
  auto ex = Make([](int src, int dst) -> size_t { return dst == 0 && src != 0 ? kLarge : kBytes; },
                 "large-skipped-by-rank-0", 11);
  SkipOnRank0Blocking(
      ex,
      [&] {
        std::fill(ex->send.begin(), ex->send.end(), char{0x11});
        ex.reset();
      },
      [](int src, int dst) -> size_t { return 300 + src + dst; }, 13);
}

TEST_P(TimeoutTest, BarrierWithMissingRankPoisonsBlockingCalls) {
  // Rank 0 never enters the barrier: the others time out, and since a nonblocking collective cannot be cancelled,
  // their communicator refuses further blocking calls instead of mismatching them. Rank 0 joins late to drain.
  if (rank_ != 0) {
    const auto t0 = std::chrono::steady_clock::now();
    Status s = short_->Barrier();
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "barrier")) << s;
    EXPECT_LT(SecondsSince(t0), 30.0);
    EXPECT_EQ(short_->Barrier().code(), absl::StatusCode::kFailedPrecondition);
  }
  ASSERT_TRUE(comm_->Barrier().ok());
  if (rank_ == 0) {
    Status s = short_->Barrier();  // the others' abandoned barriers are still posted: this completes
    ASSERT_TRUE(s.ok()) << s;
  }
  ASSERT_TRUE(comm_->Barrier().ok());
}

// Rank 1 sends rank 0 one byte more, then one byte fewer, than rank 0 expects, as an eager block and as one above
// every backend's rendezvous threshold. The pair must name the disagreement: the receiver (mpi, ucx: it sees the
// size) or the sender (ucx_put: the clear-to-send carries the size) fails with InvalidArgument naming the other rank;
// neither fails differently, and every rank returns within its short timeout (the others may time out or hear that
// rank 0 or 1 gave up). A fresh communicator per case: a failed exchange may leave a block unmatched.
TEST_P(TimeoutTest, PeerSendingAnotherSizeIsNamed) {
  REQUIRE_HOST_MEMORY();
  for (size_t base : {size_t{300}, size_t{96} << 10}) {
    for (int delta : {+1, -1}) {
      const std::string label = absl::StrCat("size-disagrees-", base, delta > 0 ? "-plus-one" : "-minus-one");
      SCOPED_TRACE(label);
      Options opts;
      opts.timeout = kShort;
      auto c = CreateCommunicator(GetParam(), *g_ctx, opts);
      ASSERT_TRUE(c.ok()) << c.status();
      auto ex = Make([base](int, int) -> size_t { return base; }, label, base + delta);
      if (rank_ == 1) ex->args.send_bytes[0] = base + delta;  // block 0 is followed by kGap bytes of its buffer
      const auto t0 = std::chrono::steady_clock::now();
      const Status s = (*c)->Alltoallv(ex->Args());
      EXPECT_LT(SecondsSince(t0), 30.0) << s;
      ExpectSizeDisagreementNamed(s, rank_, label);
      ASSERT_TRUE(comm_->Barrier().ok());
    }
  }
}

std::string BackendName(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

INSTANTIATE_TEST_SUITE_P(Backends, CommConformanceTest, ::testing::ValuesIn(AvailableBackends()), BackendName);
INSTANTIATE_TEST_SUITE_P(Backends, TimeoutTest, ::testing::ValuesIn(AvailableBackends()), BackendName);
INSTANTIATE_TEST_SUITE_P(Backends, DeviceMemoryTest, ::testing::ValuesIn(AvailableBackends()), BackendName);

}  // namespace
}  // namespace waveep::comm

int main(int argc, char** argv) {
  auto ctx = waveep::InitProcess(&argc, &argv);
  if (!ctx.ok()) {
    std::fprintf(stderr, "InitProcess failed: %s\n", std::string(ctx.status().message()).c_str());
    return 1;
  }
  waveep::comm::g_ctx = &ctx.value();
  // A rank that fails an ASSERT skips its remaining collectives; the others then time out (well inside ctest's limit)
  // instead of hanging.
  waveep::SetDefaultTimeout(absl::Seconds(60));
  ::testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, WorldComm(*ctx));
  waveep::FinalizeProcess();
  return any;
}
