// Copyright 2026 The waveep Authors.
//
// CPU Stream/Event semantics the wave scheduler relies on: in-order execution, cross-stream waits that bind to the
// latest record, sticky errors that propagate through events, and timeouts that name what was waited for.
#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/runtime.h"

namespace waveep {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Stream> MakeStream(const char* name, absl::Duration timeout = absl::Seconds(10)) {
  StreamOptions o;
  o.name = name;
  o.timeout = timeout;
  auto s = Stream::Create(Device::Cpu(), o);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

std::unique_ptr<Event> MakeEvent(const char* name) {
  auto e = Event::Create(Device::Cpu(), name);
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

TEST(CpuStream, RunsTasksInEnqueueOrderOnOneThread) {
  auto s = MakeStream("s");
  std::vector<int> order;
  std::thread::id first_thread;
  std::atomic<bool> same_thread{true};
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(s->Enqueue([&, i] {
                   if (i == 0)
                     first_thread = std::this_thread::get_id();
                   else if (std::this_thread::get_id() != first_thread)
                     same_thread = false;
                   // Random tiny sleeps would expose reordering if the queue were not FIFO.
                   if (i % 97 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
                   order.push_back(i);
                   return absl::OkStatus();
                 }).ok());
  }
  ASSERT_TRUE(s->Synchronize().ok());
  ASSERT_EQ(order.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(order[i], i);
  EXPECT_TRUE(same_thread);
  EXPECT_NE(first_thread, std::this_thread::get_id());  // not the caller's thread
}

TEST(CpuStream, EnqueueIsNonBlocking) {
  auto s = MakeStream("s");
  std::atomic<bool> release{false};
  ASSERT_TRUE(s->Enqueue([&] {
                 while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                 return absl::OkStatus();
               }).ok());
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(s->Enqueue([] { return absl::OkStatus(); }).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  release = true;
  EXPECT_TRUE(s->Synchronize().ok());
}

TEST(CpuStream, WaitOrdersWorkAcrossStreams) {
  auto producer = MakeStream("producer");
  auto consumer = MakeStream("consumer");
  auto ready = MakeEvent("ready");
  std::atomic<int> value{0};
  int seen = -1;
  ASSERT_TRUE(producer
                  ->Enqueue([&] {
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // consumer would win without the wait
                    value = 42;
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE(producer->Record(*ready).ok());
  ASSERT_TRUE(consumer->Wait(*ready).ok());
  ASSERT_TRUE(consumer
                  ->Enqueue([&] {
                    seen = value;
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE(consumer->Synchronize().ok());
  EXPECT_EQ(seen, 42);
  EXPECT_TRUE(ready->Query());
  EXPECT_TRUE(ready->CompletionTimeUs().ok());
}

TEST(CpuStream, WaitBindsToLatestRecordAtCallTime) {
  auto a = MakeStream("a");
  auto b = MakeStream("b");
  auto ev = MakeEvent("ev");
  std::atomic<bool> gate1{false}, gate2{false};
  std::vector<std::string> log;
  std::mutex mu;
  auto note = [&](const char* s) {
    std::lock_guard<std::mutex> l(mu);
    log.push_back(s);
  };
  ASSERT_TRUE(a->Enqueue([&] {
                 while (!gate1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                 note("a1");
                 return absl::OkStatus();
               }).ok());
  ASSERT_TRUE(a->Record(*ev).ok());  // record #1
  ASSERT_TRUE(b->Wait(*ev).ok());    // binds to #1
  ASSERT_TRUE(b->Enqueue([&] {
                 note("b");
                 return absl::OkStatus();
               }).ok());
  ASSERT_TRUE(a->Enqueue([&] {
                 while (!gate2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                 note("a2");
                 return absl::OkStatus();
               }).ok());
  ASSERT_TRUE(a->Record(*ev).ok());  // record #2 must not delay b
  gate1 = true;
  ASSERT_TRUE(b->Synchronize(absl::Seconds(5)).ok());
  {
    std::lock_guard<std::mutex> l(mu);
    EXPECT_THAT(log, ::testing::ElementsAre("a1", "b"));
  }
  EXPECT_FALSE(ev->Query());  // record #2 still pending
  gate2 = true;
  ASSERT_TRUE(a->Synchronize().ok());
  EXPECT_TRUE(ev->Query());
}

TEST(CpuStream, UnrecordedEventDoesNotBlock) {
  auto s = MakeStream("s");
  auto ev = MakeEvent("never");
  ASSERT_TRUE(s->Wait(*ev).ok());
  EXPECT_TRUE(s->Synchronize(absl::Seconds(2)).ok());
  EXPECT_TRUE(ev->Synchronize(absl::Seconds(1)).ok());
}

// The error contract on any device: a task fails on `a`; the failure travels a -> b -> c through two events, every
// later task is skipped (ran_after stays 0), every stream and event reports it, and no waiting stream hangs.
void ExpectErrorsPropagateTwoHops(Stream& a, Stream& b, Stream& c, Event& ev, Event& ev2) {
  std::atomic<int> ran_after{0};
  auto bump = [&] {
    ++ran_after;
    return absl::OkStatus();
  };
  ASSERT_TRUE(a.Enqueue([] { return absl::DataLossError("boom"); }).ok());
  ASSERT_TRUE(a.Enqueue(bump).ok());
  ASSERT_TRUE(a.Record(ev).ok());
  ASSERT_TRUE(b.Wait(ev).ok());
  ASSERT_TRUE(b.Enqueue(bump).ok());
  ASSERT_TRUE(b.Record(ev2).ok());
  ASSERT_TRUE(c.Wait(ev2).ok());  // two hops: a -> b -> c
  EXPECT_EQ(a.Synchronize().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(b.Synchronize().code(), absl::StatusCode::kDataLoss);  // the waiting stream fails too instead of hanging
  EXPECT_EQ(c.Synchronize().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ran_after, 0);
  EXPECT_EQ(ev.Synchronize(absl::Seconds(1)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ev2.Synchronize(absl::Seconds(1)).code(), absl::StatusCode::kDataLoss);
}

TEST(CpuStream, ErrorsAreStickyAndPropagateThroughEvents) {
  auto a = MakeStream("a");
  auto b = MakeStream("b");
  auto c = MakeStream("c");
  auto ev = MakeEvent("after_error");
  auto ev2 = MakeEvent("b_done");
  ExpectErrorsPropagateTwoHops(*a, *b, *c, *ev, *ev2);
}

TEST(CpuStream, WaitTimesOutWithDiagnostic) {
  SetDiagnosticPrefix("rank 3/4");
  auto a = MakeStream("comm");
  auto b = MakeStream("compute", absl::Milliseconds(100));
  auto ev = MakeEvent("dispatch_done(2)");
  std::atomic<bool> release{false};
  ASSERT_TRUE(a->Enqueue([&] {
                 while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                 return absl::OkStatus();
               }).ok());
  ASSERT_TRUE(a->Record(*ev).ok());
  ASSERT_TRUE(b->Wait(*ev).ok());
  auto t0 = std::chrono::steady_clock::now();
  Status s = b->Synchronize(absl::Seconds(10));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank 3/4"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("compute"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("dispatch_done(2)"));
  release = true;
  EXPECT_TRUE(a->Synchronize().ok());
  SetDiagnosticPrefix("");
}

TEST(CpuStream, SynchronizeTimesOut) {
  auto s = MakeStream("slow");
  std::atomic<bool> release{false};
  ASSERT_TRUE(s->Enqueue([&] {
                 while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                 return absl::OkStatus();
               }).ok());
  Status st = s->Synchronize(absl::Milliseconds(50));
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(st.message()), HasSubstr("slow"));
  release = true;
  EXPECT_TRUE(s->Synchronize().ok());
}

// The wave schedule's shape: two streams alternating through events, re-recorded every round. Enqueues 200 rounds
// on `a` and `b`, then (after `before_sync`, e.g. destroying an event) checks that the tasks ran in strict turns.
void PingPong(Stream& a, Stream& b, std::unique_ptr<Event>& ea, std::unique_ptr<Event>& eb,
              const std::function<void()>& before_sync = nullptr) {
  std::vector<int> trace;
  std::mutex mu;
  auto step = [&](int v) {
    return [&trace, &mu, v] {
      std::lock_guard<std::mutex> l(mu);
      trace.push_back(v);
      return absl::OkStatus();
    };
  };
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(a.Wait(*eb).ok());
    ASSERT_TRUE(a.Enqueue(step(2 * i)).ok());
    ASSERT_TRUE(a.Record(*ea).ok());
    ASSERT_TRUE(b.Wait(*ea).ok());
    ASSERT_TRUE(b.Enqueue(step(2 * i + 1)).ok());
    ASSERT_TRUE(b.Record(*eb).ok());
  }
  if (before_sync) before_sync();
  ASSERT_TRUE(a.Synchronize().ok());
  ASSERT_TRUE(b.Synchronize().ok());
  ASSERT_EQ(trace.size(), 400u);
  for (int i = 0; i < 400; ++i) EXPECT_EQ(trace[i], i);
}

TEST(CpuStream, PingPongBetweenStreamsManyRounds) {
  auto a = MakeStream("a");
  auto b = MakeStream("b");
  auto ea = MakeEvent("ea");
  auto eb = MakeEvent("eb");
  PingPong(*a, *b, ea, eb);
}

TEST(CpuStream, EventMayBeDestroyedBeforeStreamsReachIt) {
  // A Record() and a Wait() still queued behind a blocked task when the Event object is destroyed: the streams keep
  // its state and complete normally (was a use-after-free; ASan/TSan builds see it).
  StreamOptions o;
  o.name = "a";
  auto a = Stream::Create(Device::Cpu(), o);
  o.name = "b";
  auto b = Stream::Create(Device::Cpu(), o);
  ASSERT_TRUE(a.ok() && b.ok());
  std::atomic<bool> release{false};
  ASSERT_TRUE((*a)->Enqueue([&] {
                    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                    return absl::OkStatus();
                  })
                  .ok());
  {
    auto ev = Event::Create(Device::Cpu(), "short-lived");
    ASSERT_TRUE(ev.ok());
    ASSERT_TRUE((*a)->Record(**ev).ok());
    ASSERT_TRUE((*b)->Wait(**ev).ok());
  }  // destroyed here, before stream a ran the marker
  std::atomic<bool> ran{false};
  ASSERT_TRUE((*b)->Enqueue([&] {
                    ran = true;
                    return absl::OkStatus();
                  })
                  .ok());
  release = true;
  EXPECT_TRUE((*a)->Synchronize().ok());
  EXPECT_TRUE((*b)->Synchronize().ok());
  EXPECT_TRUE(ran.load());
}

TEST(CpuStream, DestructorDrainsQueue) {
  std::atomic<int> n{0};
  {
    auto s = MakeStream("s");
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE(s->Enqueue([&] {
                     ++n;
                     return absl::OkStatus();
                   }).ok());
    }
  }
  EXPECT_EQ(n, 100);
}

TEST(CudaStream, CreateFailsCleanlyWithoutGpu) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a GPU is present; covered by the GPU suite";
  auto s = Stream::Create(Device::Cuda(0), StreamOptions{});
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
}

TEST(CudaStream, OrdersWorkWhenGpuPresent) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible (built with CUDA: " << BuiltWithCuda() << ")";
  StreamOptions o;
  o.name = "cuda";
  auto a = Stream::Create(Device::Cuda(0), o);
  auto b = Stream::Create(Device::Cuda(0), o);
  auto ev = Event::Create(Device::Cuda(0), "ev");
  ASSERT_TRUE(a.ok() && b.ok() && ev.ok());
  std::atomic<int> v{0};
  int seen = -1;
  ASSERT_TRUE((*a)->Enqueue([&] {
                    std::this_thread::sleep_for(std::chrono::milliseconds(20));
                    v = 7;
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE((*a)->Record(**ev).ok());
  ASSERT_TRUE((*b)->Wait(**ev).ok());
  ASSERT_TRUE((*b)->Enqueue([&] {
                    seen = v;
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE((*b)->Synchronize().ok());
  EXPECT_EQ(seen, 7);
}

// ---- the CUDA Stream/Event keep the CPU contract (run on a GPU machine; skipped without a device) ---------------

std::unique_ptr<Stream> MakeCudaStream(const char* name, absl::Duration timeout = absl::Seconds(10)) {
  StreamOptions o;
  o.name = name;
  o.timeout = timeout;
  auto s = Stream::Create(Device::Cuda(0), o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

std::unique_ptr<Event> MakeCudaEvent(const char* name) {
  auto e = Event::Create(Device::Cuda(0), name);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? *std::move(e) : nullptr;
}

#define REQUIRE_GPU() \
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible (built with CUDA: " << BuiltWithCuda() << ")"

// (a) An event recorded after an error completes with it; one recorded before the error does not carry it.
TEST(CudaStream, EventRecordedAfterAnErrorCarriesIt) {
  REQUIRE_GPU();
  auto a = MakeCudaStream("a");
  auto before = MakeCudaEvent("before");
  auto after = MakeCudaEvent("after_error");
  ASSERT_TRUE(a && before && after);
  ASSERT_TRUE(a->Record(*before).ok());
  ASSERT_TRUE(a->Enqueue([] { return absl::DataLossError("boom"); }).ok());
  ASSERT_TRUE(a->Record(*after).ok());
  EXPECT_EQ(a->Synchronize().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(before->Synchronize(absl::Seconds(5)).ok());
  Status s = after->Synchronize(absl::Seconds(5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("boom"));
}

// (b) The CPU test ErrorsAreStickyAndPropagateThroughEvents, on CUDA streams: the waiting stream fails too and
// skips its later tasks.
TEST(CudaStream, ErrorsPropagateThroughEventsToWaitingStreams) {
  REQUIRE_GPU();
  auto a = MakeCudaStream("a");
  auto b = MakeCudaStream("b");
  auto c = MakeCudaStream("c");
  auto ev = MakeCudaEvent("after_error");
  auto ev2 = MakeCudaEvent("b_done");
  ASSERT_TRUE(a && b && c && ev && ev2);
  ExpectErrorsPropagateTwoHops(*a, *b, *c, *ev, *ev2);
}

// (b) A wait on a record made before the error does not fail the waiting stream.
TEST(CudaStream, WaitBindsToTheRecordAsOfTheCall) {
  REQUIRE_GPU();
  auto a = MakeCudaStream("a");
  auto b = MakeCudaStream("b");
  auto ev = MakeCudaEvent("ev");
  ASSERT_TRUE(a && b && ev);
  ASSERT_TRUE(a->Record(*ev).ok());
  ASSERT_TRUE(b->Wait(*ev).ok());
  ASSERT_TRUE(a->Enqueue([] { return absl::DataLossError("later"); }).ok());
  ASSERT_TRUE(a->Record(*ev).ok());
  EXPECT_TRUE(b->Synchronize().ok());
  EXPECT_EQ(a->Synchronize().code(), absl::StatusCode::kDataLoss);
}

// (c) A stream stuck behind an event names it when Synchronize times out.
TEST(CudaStream, SynchronizeTimeoutNamesTheEventStillPending) {
  REQUIRE_GPU();
  SetDiagnosticPrefix("rank 3/4");
  auto a = MakeCudaStream("comm");
  auto b = MakeCudaStream("compute");
  auto ev = MakeCudaEvent("dispatch_done(2)");
  ASSERT_TRUE(a && b && ev);
  std::atomic<bool> release{false};
  // Test only: a host task that waits on host state holds stream a (never on other CUDA work).
  ASSERT_TRUE(a->Enqueue([&] {
                 const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
                 while (!release && std::chrono::steady_clock::now() < deadline) {
                   std::this_thread::sleep_for(std::chrono::milliseconds(1));
                 }
                 return absl::OkStatus();
               }).ok());
  ASSERT_TRUE(a->Record(*ev).ok());
  ASSERT_TRUE(b->Wait(*ev).ok());
  Status s = b->Synchronize(absl::Milliseconds(200));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank 3/4"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("compute"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("dispatch_done(2)"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("comm"));
  Status e = ev->Synchronize(absl::Milliseconds(50));
  EXPECT_EQ(e.code(), absl::StatusCode::kDeadlineExceeded) << e;
  EXPECT_THAT(std::string(e.message()), HasSubstr("dispatch_done(2)"));
  release = true;
  EXPECT_TRUE(a->Synchronize().ok());
  EXPECT_TRUE(b->Synchronize().ok());
  SetDiagnosticPrefix("");
}

// The wave schedule's shape on CUDA streams, with events re-recorded every round and waits that outlive the events.
TEST(CudaStream, PingPongManyRoundsAndEventsDestroyedWhileWaitedOn) {
  REQUIRE_GPU();
  auto a = MakeCudaStream("a");
  auto b = MakeCudaStream("b");
  auto ea = MakeCudaEvent("ea");
  auto eb = MakeCudaEvent("eb");
  ASSERT_TRUE(a && b && ea && eb);
  // b still lists ea among its waits when it is destroyed: must not touch a destroyed event.
  PingPong(*a, *b, ea, eb, [&] { ea.reset(); });
}

}  // namespace
}  // namespace waveep
