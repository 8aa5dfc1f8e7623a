// Copyright 2026 The waveep Authors.
//
// The wave schedule with fake operations (no MPI): dependency order, double-buffer safety, real overlap, errors.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "ep/ep_internal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace waveep::ep::internal {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Records [start, end) per operation name and simulates the buffers: the double-buffered receive slots (w % 2) and
// the per-wave return slots. A write into a slot still holding an unconsumed wave, or a read of a slot holding the
// wrong wave, is a schedule bug.
class FakeLayer {
 public:
  explicit FakeLayer(int waves, int sleep_ms) : waves_(waves), sleep_ms_(sleep_ms) {}

  WaveOps Ops() {
    // Each fake operation is a host task that sleeps and checks the simulated buffers.
    auto task = [this](const char* what, std::function<Status(int)> body) {
      return [this, what, body](int w, Stream& s) {
        return s.Enqueue(
            [this, what, body, w] { return Op(absl::StrCat(what, "(", w, ")"), [&] { return body(w); }); });
      };
    };
    WaveOps ops;
    ops.pack = task("pack", [](int) { return absl::OkStatus(); });
    ops.dispatch = task("dispatch", [this](int w) { return Write(recv_, w, "recv"); });
    ops.gemm = task("gemm", [this](int w) {
      if (fail_gemm_ == w) return absl::InternalError("injected gemm failure");
      return Consume(recv_, w, "recv");
    });
    ops.unpack = task("unpack", [this](int w) { return WriteReturn(w); });
    ops.combine = task("combine", [this](int w) { return ConsumeReturn(w); });
    ops.head = [this](Stream& s) { return s.Enqueue([this] { return Op("head", [] { return absl::OkStatus(); }); }); };
    ops.tail = [this](Stream& s) { return s.Enqueue([this] { return Op("tail", [] { return absl::OkStatus(); }); }); };
    ops.finish = [this](Stream& s) {
      return s.Enqueue([this] { return Op("finish", [] { return absl::OkStatus(); }); });
    };
    return ops;
  }

  std::pair<double, double> At(const std::string& name) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = log_.find(name);
    EXPECT_NE(it, log_.end()) << name;
    return it == log_.end() ? std::make_pair(0.0, 0.0) : it->second;
  }
  bool Ran(const std::string& name) {
    std::lock_guard<std::mutex> l(mu_);
    return log_.count(name) > 0;
  }
  int fail_gemm_ = -1;
  // Operation -> another operation that must have *started* before it may finish: the first waits (up to 5 s) for
  // the second, so two operations that the schedule runs side by side meet, and a schedule that serialises them fails
  // with a message instead of depending on timings.
  std::map<std::string, std::string> meet_;

 private:
  Status Op(std::string name, const std::function<Status()>& body) {
    double b = NowUs();
    {
      std::unique_lock<std::mutex> l(mu_);
      started_.insert(name);
      cv_.notify_all();
      if (auto it = meet_.find(name); it != meet_.end()) {
        const std::string other = it->second;
        if (!cv_.wait_for(l, std::chrono::seconds(5), [&] { return started_.count(other) > 0; })) {
          return absl::InternalError(absl::StrCat(name, " ran to its end without ", other, " starting beside it"));
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    Status s = body();
    double e = NowUs();
    std::lock_guard<std::mutex> l(mu_);
    log_[name] = {b, e};
    return s;
  }
  Status Write(int* slots, int w, const char* what) {
    std::lock_guard<std::mutex> l(mu_);
    if (slots[w % 2] != -1)
      return absl::InternalError(absl::StrCat(what, " slot ", w % 2, " overwritten by wave ", w, " while wave ",
                                              slots[w % 2], " was unconsumed"));
    slots[w % 2] = w;
    return absl::OkStatus();
  }
  Status WriteReturn(int w) {
    std::lock_guard<std::mutex> l(mu_);
    if (!ret_.insert(w).second) return absl::InternalError(absl::StrCat("return slot of wave ", w, " written twice"));
    return absl::OkStatus();
  }
  Status ConsumeReturn(int w) {
    std::lock_guard<std::mutex> l(mu_);
    if (ret_.erase(w) == 0) return absl::InternalError(absl::StrCat("combine(", w, ") before unpack(", w, ")"));
    return absl::OkStatus();
  }
  Status Consume(int* slots, int w, const char* what) {
    std::lock_guard<std::mutex> l(mu_);
    if (slots[w % 2] != w)
      return absl::InternalError(absl::StrCat(what, " slot ", w % 2, " holds wave ", slots[w % 2], ", not ", w));
    slots[w % 2] = -1;
    return absl::OkStatus();
  }

  int waves_, sleep_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> started_;
  std::map<std::string, std::pair<double, double>> log_;
  int recv_[2] = {-1, -1};
  std::set<int> ret_;  // waves unpacked and not yet combined
};

std::unique_ptr<WaveScheduler> MakeScheduler() {
  auto s = WaveScheduler::Create(Device::Cpu(), absl::Seconds(20));
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

// Runs `waves` waves (1 expert each) where every pair (a, b) of `meet` must overlap: a may finish only once b started
// (FakeLayer::meet_). OK only for a schedule that runs each pair side by side.
Status RunRequiringOverlap(int waves, const std::map<std::string, std::string>& meet) {
  auto sched = MakeScheduler();
  FakeLayer fake(waves, 1);
  fake.meet_ = meet;
  return sched->Run(waves, fake.Ops(), nullptr);
}

class WaveSchedulerTest : public ::testing::TestWithParam<int> {};

TEST_P(WaveSchedulerTest, RespectsEveryDependencyAndBuffer) {
  const int waves = GetParam();
  auto sched = MakeScheduler();
  FakeLayer fake(waves, 3);
  std::vector<SpanRecord> spans;
  ASSERT_TRUE(sched->Run(waves, fake.Ops(), &spans).ok());
  auto n = [](const char* op, int w) { return absl::StrCat(op, "(", w, ")"); };
  for (int w = 0; w < waves; ++w) {
    EXPECT_GE(fake.At(n("gemm", w)).first, fake.At(n("dispatch", w)).second) << w;
    EXPECT_GE(fake.At(n("dispatch", w)).first, fake.At(n("pack", w)).second) << w;
    EXPECT_GE(fake.At(n("combine", w)).first, fake.At(n("unpack", w)).second) << w;
    EXPECT_GE(fake.At(n("unpack", w)).first, fake.At(n("gemm", w)).second) << w;
    if (w >= 2) {
      EXPECT_GE(fake.At(n("pack", w)).first, fake.At(n("gemm", w - 2)).second) << w;
    }
  }
  for (int w = 0; w < waves; ++w) EXPECT_GE(fake.At("finish").first, fake.At(n("combine", w)).second) << w;
  EXPECT_LE(fake.At("head").second, fake.At(n("gemm", 0)).first);
  EXPECT_GE(fake.At("tail").first, fake.At(n("unpack", waves - 1)).second);
  // One span per task: pack, dispatch, gemm, unpack, combine per wave; head, tail, finish.
  EXPECT_EQ(static_cast<int>(spans.size()), 5 * waves + 3);
}

INSTANTIATE_TEST_SUITE_P(Waves, WaveSchedulerTest, ::testing::Values(1, 2, 3, 4, 8));

TEST(WaveScheduler, OneWaveIsSequential) {
  auto sched = MakeScheduler();
  FakeLayer fake(1, 2);
  ASSERT_TRUE(sched->Run(1, fake.Ops(), nullptr).ok());
  const char* order[] = {"pack(0)", "dispatch(0)", "gemm(0)", "unpack(0)", "combine(0)", "finish"};
  for (int i = 1; i < 6; ++i) EXPECT_GE(fake.At(order[i]).first, fake.At(order[i - 1]).second) << order[i];
}

TEST(WaveScheduler, SharedExpertFillsThePipelinesFillAndDrain) {
  // The head runs beside the first dispatch (the compute stream has nothing else to do then) and the tail beside the
  // last combine; a schedule that runs either alone fails here instead of being merely slower.
  Status s = RunRequiringOverlap(3, {{"head", "dispatch(0)"}, {"tail", "combine(2)"}});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(WaveScheduler, UnpackNeverWaitsForAnEarlierCombine) {
  // Return slots are per wave: unpack(2) may run while combine(0) is still in flight (with two shared return buffers
  // it had to wait for it, and a slow link stalled the compute stream).
  Status s = RunRequiringOverlap(4, {{"combine(0)", "unpack(2)"}});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(WaveScheduler, CommOfNextWaveOverlapsCurrentGemm) {
  // Operations sleep (no CPU needed), so the two streams really run side by side: dispatch(1) must run during
  // gemm(0) — the point of the schedule.
  // Ordering, not timing: gemm(0) finishes only once pack(1) started (so they overlap), and, as the comm stream issues
  // dispatch(w+1) before combine(w-1) (docs/architecture.md), gemm(2) only once combine(0) started. A serial schedule
  // fails.
  Status s = RunRequiringOverlap(4, {{"gemm(0)", "pack(1)"}, {"gemm(2)", "combine(0)"}});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(WaveScheduler, FailureStopsBothStreamsAndSchedulerRecovers) {
  auto sched = MakeScheduler();
  FakeLayer fake(4, 1);
  fake.fail_gemm_ = 1;
  Status s = sched->Run(4, fake.Ops(), nullptr);  // a hang would end in the scheduler's own timeout (20 s)
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("timed out")));
  EXPECT_THAT(std::string(s.message()), HasSubstr("injected gemm failure"));
  EXPECT_FALSE(fake.Ran("gemm(2)"));     // compute stopped at the error
  EXPECT_FALSE(fake.Ran("combine(1)"));  // comm stopped at the event carrying the error
  EXPECT_FALSE(fake.Ran("finish"));
  FakeLayer again(3, 1);
  EXPECT_TRUE(sched->Run(3, again.Ops(), nullptr).ok());
}

TEST(WaveScheduler, RejectsZeroWaves) {
  auto sched = MakeScheduler();
  FakeLayer fake(1, 1);
  EXPECT_EQ(sched->Run(0, fake.Ops(), nullptr).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace waveep::ep::internal
