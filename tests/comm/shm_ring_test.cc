// Copyright 2026 The waveep Authors.
//
// The same-host shared-memory rings of the ucx backend (comm/shm_ring_internal.h), in one process: a sender thread
// and receiver threads on one mapped segment (two mappings of it, as two processes have). Blocks of random sizes
// (fresh random bytes, never zeros) across chunk boundaries, exchanges received in another order than sent, blocks
// that come before their receive begins, abandoned receives whose rest is dropped, and senders that disagree on a
// block's size. The multi-process path runs in comm_conformance_test (ucx at np 2 and 4).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/shm_ring_internal.h"
#include "gtest/gtest.h"

namespace waveep::comm::internal {
namespace {

std::string Name(const char* what) {
  static std::atomic<int> n{0};
  return absl::StrCat("/waveep-test-", getpid(), "-", what, "-", n.fetch_add(1));
}

std::vector<char> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<char> v(n);
  for (char& c : v) c = static_cast<char>(rng() | 1);  // never zero
  return v;
}

// Creates a segment under a known name so that the pair can open it again (a second mapping, as a peer would).
struct TwoMappings {
  explicit TwoMappings(ShmGeometry g) {
    const std::string name = Name("ring");
    auto own = ShmSegment::Create(name, g.RingBytes());
    EXPECT_TRUE(own.ok()) << own.status();
    receiver_seg = std::move(*own);
    auto peer = ShmSegment::Open(name, g.RingBytes());
    EXPECT_TRUE(peer.ok()) << peer.status();
    sender_seg = std::move(*peer);
    receiver_seg.Unlink();
    out = ShmRing(sender_seg.base(), g);
    in.Attach(ShmRing(receiver_seg.base(), g));
  }
  ShmSegment receiver_seg, sender_seg;
  ShmRing out;
  ShmInbox in;
};

// Sends `blocks` in order on one thread while the caller receives them in `recv_order`; every block lands intact.
void RoundTrip(ShmGeometry g, const std::vector<size_t>& sizes, const std::vector<int>& recv_order, uint64_t seed) {
  TwoMappings m(g);
  std::vector<std::vector<char>> src;
  for (size_t i = 0; i < sizes.size(); ++i) src.push_back(RandomBytes(sizes[i], seed + i));
  std::thread sender([&] {
    for (size_t i = 0; i < sizes.size(); ++i) {
      ShmRing::Send s{i, src[i].data(), sizes[i]};
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!s.done && std::chrono::steady_clock::now() < deadline) {
        if (!m.out.PushSend(s)) std::this_thread::yield();
      }
      ASSERT_TRUE(s.done) << "block " << i << " never fit into the ring";
    }
  });
  for (int i : recv_order) {
    std::vector<char> dst(sizes[i], 0);
    ShmInbox::Recv r{static_cast<uint64_t>(i), dst.data(), sizes[i]};
    m.in.Begin(&r);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!r.done() && r.other_total == 0 && std::chrono::steady_clock::now() < deadline) {
      if (!m.in.Poll()) std::this_thread::yield();
    }
    m.in.End(&r, !r.done());
    ASSERT_EQ(r.other_total, 0u) << "block " << i;
    ASSERT_TRUE(r.done()) << "block " << i << ": " << r.received << " of " << sizes[i] << " bytes";
    EXPECT_EQ(0, std::memcmp(dst.data(), src[i].data(), sizes[i])) << "block " << i;
  }
  sender.join();
  EXPECT_EQ(m.in.early_bytes(), 0u);
}

TEST(ShmRing, BlocksOfEverySizeAcrossChunkBoundariesInOrder) {
  const ShmGeometry g{4, 4096};
  RoundTrip(g, {1, 4095, 4096, 4097, 3 * 4096, 5 * 4096 + 7, 100000, 2}, {0, 1, 2, 3, 4, 5, 6, 7}, 11);
}

TEST(ShmRing, ReceivesInAnotherOrderThanSentLandEarlyBlocks) {
  // Async exchanges on two streams: a later block may be received first; the earlier ones are kept until theirs
  // begins (each is larger than the whole ring, so the ring must keep moving meanwhile).
  const ShmGeometry g{2, 4096};
  RoundTrip(g, {30000, 20000, 4096, 50000, 1}, {3, 1, 0, 4, 2}, 23);
}

TEST(ShmRing, RandomSizesRandomOrder) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const ShmGeometry g{static_cast<uint32_t>(2 + rng() % 4), static_cast<uint32_t>(4096 << (rng() % 3))};
    std::vector<size_t> sizes;
    std::vector<int> order;
    for (int i = 0; i < 6; ++i) {
      sizes.push_back(1 + rng() % 70000);
      order.push_back(i);
    }
    std::shuffle(order.begin(), order.end(), rng);
    RoundTrip(g, sizes, order, 100 + trial);
  }
}

TEST(ShmRing, AbandonedReceiveDropsTheRestOfItsBlock) {
  TwoMappings m(ShmGeometry{2, 4096});
  const std::vector<char> a = RandomBytes(5 * 4096, 1), b = RandomBytes(3000, 2);
  std::vector<char> dst(a.size(), 0);
  ShmInbox::Recv r{0, dst.data(), a.size()};
  m.in.Begin(&r);
  ShmRing::Send s{0, a.data(), a.size()};
  ASSERT_TRUE(m.out.PushSend(s));  // the ring's two slots
  ASSERT_TRUE(m.in.Poll());
  EXPECT_EQ(r.received, 2 * 4096u);
  m.in.End(&r, /*abandoned=*/true);  // gave up: the rest must not land anywhere
  while (!s.done) {
    m.out.PushSend(s);
    m.in.Poll();
  }
  ShmRing::Send s2{1, b.data(), b.size()};
  ASSERT_TRUE(m.out.PushSend(s2));
  std::vector<char> dst2(b.size(), 0);
  ShmInbox::Recv r2{1, dst2.data(), b.size()};
  m.in.Begin(&r2);
  m.in.Poll();
  EXPECT_TRUE(r2.done());
  EXPECT_EQ(0, std::memcmp(dst2.data(), b.data(), b.size()));
  EXPECT_EQ(m.in.early_bytes(), 0u) << "the abandoned block's rest was kept";
  EXPECT_EQ(0, std::memcmp(dst.data() + 2 * 4096, std::vector<char>(3 * 4096, 0).data(), 3 * 4096))
      << "the abandoned block's rest landed after End";
  m.in.End(&r2, false);
}

TEST(ShmRing, SenderOfAnotherSizeIsReportedWithItsSize) {
  for (bool early : {false, true}) {
    TwoMappings m(ShmGeometry{4, 4096});
    const std::vector<char> a = RandomBytes(10000, 3);
    ShmRing::Send s{5, a.data(), a.size()};
    std::vector<char> dst(9999, 0);
    ShmInbox::Recv r{5, dst.data(), dst.size()};
    if (early) {
      ASSERT_TRUE(m.out.PushSend(s));
      m.in.Poll();  // kept for a receive that has not begun
      m.in.Begin(&r);
    } else {
      m.in.Begin(&r);
      ASSERT_TRUE(m.out.PushSend(s));
      m.in.Poll();
    }
    EXPECT_EQ(r.other_total, 10000u) << (early ? "early" : "posted");
    EXPECT_FALSE(r.done());
    m.in.End(&r, true);
  }
}

TEST(ShmRing, GeometryOutOfRangeIsNamed) {
  EXPECT_TRUE((ShmGeometry{2, 4096}.Check().ok()));
  for (const auto& [g, field] : std::vector<std::pair<ShmGeometry, std::string>>{
           {{1, 65536}, "slots"}, {{5000, 65536}, "slots"}, {{4, 4095}, "chunk"}, {{4, (1u << 30) + 1}, "chunk"}}) {
    const Status s = g.Check();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(field), absl::string_view::npos) << s;
  }
}

TEST(ShmRing, OpenRefusesASegmentOfAnotherSize) {
  const std::string name = Name("size");
  auto own = ShmSegment::Create(name, 8192);
  ASSERT_TRUE(own.ok()) << own.status();
  auto other = ShmSegment::Open(name, 4096);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  EXPECT_NE(other.status().message().find(name), absl::string_view::npos) << other.status();
  auto again = ShmSegment::Create(name, 8192);
  EXPECT_FALSE(again.ok()) << "a second Create of one name must fail (O_EXCL)";
  own->Unlink();
  EXPECT_FALSE(ShmSegment::Open(name, 8192).ok()) << "the name stayed after Unlink";
}

}  // namespace
}  // namespace waveep::comm::internal
