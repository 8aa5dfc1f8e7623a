// Copyright 2026 The waveep Authors.
//
// The proxy thread's state machine (comm/device_proxy_internal.h) on the CPU: FIFO order, the deadline on a job's
// start, errors stored before the release and surfaced as the stream's sticky error, exactly one release per job
// whatever happens, cancellation by a waiting host thread, shutdown with jobs pending, and the join. The GPU half
// (CUDA stream gate) is replaced by fakes and by the host gate on CPU streams; no MPI, no GPU.
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "comm/device_proxy_internal.h"
#include "gtest/gtest.h"
#include "runtime/runtime.h"

namespace waveep::comm::internal {
namespace {

using Clock = std::chrono::steady_clock;

std::unique_ptr<Stream> MakeStream(const char* name) {
  StreamOptions o;
  o.name = name;
  o.timeout = absl::Seconds(10);
  auto s = Stream::Create(Device::Cpu(), o);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Polls until `proxy` finished at least `n` jobs (true) or 10 s passed (false).
bool WaitFinished(const DeviceProxy& proxy, uint64_t n) {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (proxy.jobs_finished() < n && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return proxy.jobs_finished() >= n;
}

// A gate whose start markers the test opens by hand and whose releases it counts, per job in Arm order. Like the
// CUDA gate's flag wait, a task holds the stream until the release (unless hold_stream is off).
class FakeGate final : public StreamGate {
 public:
  struct Job {
    std::atomic<bool> reached{false};
    std::atomic<int> releases{0};
    Status ready_error;
  };

  StatusOr<Armed> Arm(Stream& stream, absl::Duration /*timeout*/) override {
    if (!arm_error.ok()) return arm_error;
    auto job = std::make_shared<Job>();
    if (hold_stream) {
      WAVEEP_RETURN_IF_ERROR(stream.Enqueue([job]() -> Status {
        const auto deadline = Clock::now() + std::chrono::seconds(30);
        while (job->releases == 0) {
          if (Clock::now() >= deadline) return absl::DeadlineExceededError("fake gate never released");
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        return absl::OkStatus();
      }));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(job);
    }
    Armed armed;
    armed.ready = [job]() -> StatusOr<bool> {
      if (!job->ready_error.ok()) return job->ready_error;
      return job->reached.load();
    };
    armed.release = [this, job]() {
      job->releases.fetch_add(1);
      std::lock_guard<std::mutex> lock(mu_);
      release_order_.push_back(job.get());
    };
    return armed;
  }

  std::shared_ptr<Job> job(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return jobs_.at(i);
  }
  size_t num_jobs() {
    std::lock_guard<std::mutex> lock(mu_);
    return jobs_.size();
  }
  std::vector<Job*> release_order() {
    std::lock_guard<std::mutex> lock(mu_);
    return release_order_;
  }

  Status arm_error;
  bool hold_stream = true;

 private:
  std::mutex mu_;
  std::vector<std::shared_ptr<Job>> jobs_;
  std::vector<Job*> release_order_;
};

// A stream that accepts nothing: the report task cannot be enqueued.
class RefusingStream final : public Stream {
 public:
  absl::string_view name() const override { return "refusing"; }
  Device device() const override { return Device::Cpu(); }
  StreamHandle native() const override { return nullptr; }
  Status Enqueue(std::function<Status()>) override { return absl::ResourceExhaustedError("queue full"); }
  Status Record(Event&) override { return absl::OkStatus(); }
  Status Wait(Event&) override { return absl::OkStatus(); }
  Status Synchronize(absl::Duration) override { return absl::OkStatus(); }
  Status status() const override { return absl::OkStatus(); }
};

// Looks like a CUDA stream to the proxy (native() != nullptr) without being one.
class FakeDeviceStream final : public Stream {
 public:
  absl::string_view name() const override { return "fake-cuda"; }
  Device device() const override { return Device::Cuda(0); }
  StreamHandle native() const override { return const_cast<FakeDeviceStream*>(this); }
  Status Enqueue(std::function<Status()> task) override {
    tasks.push_back(std::move(task));
    return absl::OkStatus();
  }
  Status Record(Event&) override { return absl::OkStatus(); }
  Status Wait(Event&) override { return absl::OkStatus(); }
  Status Synchronize(absl::Duration) override { return absl::OkStatus(); }
  Status status() const override { return absl::OkStatus(); }
  std::vector<std::function<Status()>> tasks;
};

ProxyJob HostJob(std::string what, std::function<Status()> run) {
  ProxyJob job;
  job.what = std::move(what);
  job.timeout = absl::Seconds(5);
  job.run = std::move(run);
  return job;
}

TEST(DeviceProxy, RunsJobsInSubmissionOrderOnItsOwnThread) {
  DeviceProxy proxy("test", nullptr);
  std::vector<int> order;  // only the proxy thread writes it
  std::thread::id runner;
  std::atomic<bool> one_thread{true};
  std::vector<std::shared_ptr<ProxyTicket>> tickets;
  for (int i = 0; i < 200; ++i) {
    auto t = proxy.Submit(HostJob(absl::StrCat("job ", i), [&, i] {
      if (i == 0) {
        runner = std::this_thread::get_id();
      } else if (std::this_thread::get_id() != runner) {
        one_thread = false;
      }
      if (i % 37 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
      order.push_back(i);
      return absl::OkStatus();
    }));
    ASSERT_TRUE(t.ok()) << t.status();
    tickets.push_back(*t);
  }
  for (auto& t : tickets) ASSERT_TRUE(t->Wait(absl::Seconds(10), absl::Seconds(1)).ok());
  ASSERT_EQ(order.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(order[i], i);
  EXPECT_TRUE(one_thread);
  EXPECT_NE(runner, std::this_thread::get_id());
  // The count moves after a ticket's Status is stored and its release ran, so a finished ticket may be seen first.
  ASSERT_TRUE(WaitFinished(proxy, 200));
  EXPECT_EQ(proxy.jobs_finished(), 200u);
}

TEST(DeviceProxy, StreamNeverReachingTheJobFailsItAtTheDeadlineAndStillReleases) {
  SetDiagnosticPrefix("rank 1/2");
  auto gate = std::make_unique<FakeGate>();
  FakeGate* fake = gate.get();
  DeviceProxy proxy("test", nullptr, std::move(gate));
  auto stream = MakeStream("comm");
  std::atomic<int> ran{0};
  const auto t0 = Clock::now();
  ASSERT_TRUE(proxy
                  .Enqueue(*stream, "alltoallv 'dispatch(3)'", absl::Milliseconds(100),
                           [&] {
                             ++ran;
                             return absl::OkStatus();
                           })
                  .ok());
  // The fake never marks the start: the proxy gives up after the job's timeout, the report task fails the stream.
  Status s = stream->Synchronize(absl::Seconds(10));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "rank 1/2")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "alltoallv 'dispatch(3)'")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "never reached")) << s;
  EXPECT_GE(SecondsSince(t0), 0.09);
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_EQ(ran, 0);
  ASSERT_EQ(fake->num_jobs(), 1u);
  EXPECT_EQ(fake->job(0)->releases, 1);
  SetDiagnosticPrefix("");
}

TEST(DeviceProxy, WaitsForTheStreamToReachTheJobAndHoldsWorkQueuedAfterIt) {
  DeviceProxy proxy("test", nullptr);  // default host gate on CPU streams
  auto stream = MakeStream("comm");
  std::atomic<int> produced{0}, exchanged{0}, consumed_saw{-1};
  ASSERT_TRUE(stream
                  ->Enqueue([&] {
                    std::this_thread::sleep_for(std::chrono::milliseconds(50));
                    produced = 1;
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE(proxy
                  .Enqueue(*stream, "exchange", absl::Seconds(5),
                           [&] {
                             EXPECT_EQ(produced, 1) << "ran before the stream reached it";
                             std::this_thread::sleep_for(std::chrono::milliseconds(30));
                             exchanged = 1;
                             return absl::OkStatus();
                           })
                  .ok());
  ASSERT_TRUE(stream
                  ->Enqueue([&] {
                    consumed_saw = exchanged.load();
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(consumed_saw, 1) << "work after the exchange ran before the release";
}

TEST(DeviceProxy, JobErrorBecomesTheStreamsStickyErrorAndFailsAWaitingStream) {
  DeviceProxy proxy("test", nullptr);
  auto comm = MakeStream("comm");
  auto compute = MakeStream("compute");
  auto done = Event::Create(Device::Cpu(), "dispatch_done(0)");
  ASSERT_TRUE(done.ok());
  std::atomic<int> ran_after{0};
  ASSERT_TRUE(
      proxy.Enqueue(*comm, "exchange", absl::Seconds(5), [] { return absl::DataLossError("peer 3 sent garbage"); })
          .ok());
  ASSERT_TRUE(comm->Record(**done).ok());
  ASSERT_TRUE(compute->Wait(**done).ok());
  ASSERT_TRUE(compute
                  ->Enqueue([&] {
                    ++ran_after;
                    return absl::OkStatus();
                  })
                  .ok());
  Status a = comm->Synchronize();
  Status b = compute->Synchronize();
  EXPECT_EQ(a.code(), absl::StatusCode::kDataLoss) << a;
  EXPECT_TRUE(absl::StrContains(a.message(), "peer 3 sent garbage")) << a;
  EXPECT_EQ(b.code(), absl::StatusCode::kDataLoss) << b;
  EXPECT_EQ(ran_after, 0);
}

TEST(DeviceProxy, StatusIsStoredBeforeEveryRelease) {
  // With the host gate the report task runs right after the release: had the release come first it would read a
  // job that is not finished (FailedPrecondition) instead of the job's own error.
  DeviceProxy proxy("test", nullptr);
  for (int i = 0; i < 50; ++i) {
    auto stream = MakeStream("s");
    ASSERT_TRUE(proxy
                    .Enqueue(*stream, absl::StrCat("job ", i), absl::Seconds(5),
                             [i] { return absl::AbortedError(absl::StrCat("job ", i, " failed")); })
                    .ok());
    Status s = stream->Synchronize();
    EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  }
}

TEST(DeviceProxy, EveryJobIsReleasedExactlyOnceInOrderWhateverItsOutcome) {
  auto gate = std::make_unique<FakeGate>();
  FakeGate* fake = gate.get();
  DeviceProxy proxy("test", nullptr, std::move(gate));
  auto stream = MakeStream("comm");
  // ok, error, ready error, ready timeout, ok
  ASSERT_TRUE(proxy.Enqueue(*stream, "ok", absl::Seconds(5), [] { return absl::OkStatus(); }).ok());
  ASSERT_TRUE(proxy.Enqueue(*stream, "fails", absl::Seconds(5), [] { return absl::InternalError("x"); }).ok());
  ASSERT_TRUE(proxy.Enqueue(*stream, "ready error", absl::Seconds(5), [] { return absl::OkStatus(); }).ok());
  ASSERT_TRUE(proxy.Enqueue(*stream, "never ready", absl::Milliseconds(50), [] { return absl::OkStatus(); }).ok());
  ASSERT_TRUE(proxy.Enqueue(*stream, "ok again", absl::Seconds(5), [] { return absl::OkStatus(); }).ok());
  ASSERT_EQ(fake->num_jobs(), 5u);
  fake->job(2)->ready_error = absl::UnavailableError("event query failed");
  for (size_t i : {0, 1, 4}) fake->job(i)->reached = true;
  ASSERT_TRUE(WaitFinished(proxy, 5));
  ASSERT_EQ(proxy.jobs_finished(), 5u);
  const std::vector<FakeGate::Job*> order = fake->release_order();
  ASSERT_EQ(order.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(fake->job(i)->releases, 1) << i;
    EXPECT_EQ(order[i], fake->job(i).get()) << "released out of order at " << i;
  }
}

TEST(DeviceProxy, ReadyErrorFailsTheJobWithoutRunningIt) {
  auto gate = std::make_unique<FakeGate>();
  FakeGate* fake = gate.get();
  DeviceProxy proxy("test", nullptr, std::move(gate));
  auto stream = MakeStream("comm");
  std::atomic<int> ran{0};
  // Block the proxy first so that the ready error is in place before it looks.
  std::atomic<bool> go{false};
  auto blocker = proxy.Submit(HostJob("blocker", [&] {
    while (!go) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return absl::OkStatus();
  }));
  ASSERT_TRUE(blocker.ok());
  ASSERT_TRUE(proxy
                  .Enqueue(*stream, "exchange", absl::Seconds(5),
                           [&] {
                             ++ran;
                             return absl::OkStatus();
                           })
                  .ok());
  fake->job(0)->ready_error = absl::InternalError("cudaEventQuery: illegal address");
  go = true;
  ASSERT_TRUE(WaitFinished(proxy, 2));
  EXPECT_EQ(ran, 0);
  EXPECT_EQ(fake->job(0)->releases, 1);
}

TEST(DeviceProxy, ArmFailureQueuesNothing) {
  auto gate = std::make_unique<FakeGate>();
  gate->arm_error = absl::InternalError("cuStreamWaitValue32 failed");
  DeviceProxy proxy("test", nullptr, std::move(gate));
  auto stream = MakeStream("comm");
  Status s = proxy.Enqueue(*stream, "exchange", absl::Seconds(1), [] { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_TRUE(stream->Synchronize().ok());
  EXPECT_EQ(proxy.jobs_finished(), 0u);
}

TEST(DeviceProxy, ReportTaskRefusedFailsTheJobButStillReleasesIt) {
  auto gate = std::make_unique<FakeGate>();
  gate->hold_stream = false;  // the stream refuses every task; the flag wait of a CUDA gate is no task
  FakeGate* fake = gate.get();
  DeviceProxy proxy("test", nullptr, std::move(gate));
  RefusingStream stream;
  std::atomic<int> ran{0};
  Status s = proxy.Enqueue(stream, "exchange", absl::Seconds(1), [&] {
    ++ran;
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  ASSERT_TRUE(WaitFinished(proxy, 1));
  EXPECT_EQ(ran, 0);
  ASSERT_EQ(fake->num_jobs(), 1u);
  EXPECT_EQ(fake->job(0)->releases, 1);
}

TEST(DeviceProxy, DeviceStreamWithoutDeviceGateIsRefused) {
  DeviceProxy proxy("test", nullptr);
  FakeDeviceStream stream;
  Status s = proxy.Enqueue(stream, "exchange", absl::Seconds(1), [] { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "CUDA")) << s;
  EXPECT_TRUE(stream.tasks.empty());
}

TEST(DeviceProxy, DeviceGateIsUsedForDeviceStreams) {
  auto device_gate = std::make_unique<FakeGate>();
  device_gate->hold_stream = false;  // as the CUDA gate: the stream waits on a flag, not in a task
  FakeGate* fake = device_gate.get();
  DeviceProxy proxy("test", std::move(device_gate));
  FakeDeviceStream stream;
  std::atomic<int> ran{0};
  ASSERT_TRUE(proxy
                  .Enqueue(stream, "exchange", absl::Seconds(5),
                           [&] {
                             ++ran;
                             return absl::UnknownError("from the job");
                           })
                  .ok());
  ASSERT_EQ(fake->num_jobs(), 1u);
  ASSERT_EQ(stream.tasks.size(), 1u);  // the report task, and nothing that blocks
  fake->job(0)->reached = true;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (fake->job(0)->releases == 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(ran, 1);
  // What the CUDA stream's host function does once the flag let the stream through: non-blocking, the job's Status.
  EXPECT_EQ(stream.tasks[0]().code(), absl::StatusCode::kUnknown);
}

TEST(DeviceProxy, WaitingHostThreadCancelsAJobThatDidNotStart) {
  DeviceProxy proxy("test", nullptr);
  std::atomic<bool> go{false};
  std::atomic<int> second_ran{0};
  auto first = proxy.Submit(HostJob("slow", [&] {
    while (!go) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return absl::OkStatus();
  }));
  auto second = proxy.Submit(HostJob("alltoallv 'x' (blocking)", [&] {
    ++second_ran;
    return absl::OkStatus();
  }));
  ASSERT_TRUE(first.ok() && second.ok());
  Status s = (*second)->Wait(absl::Milliseconds(50), absl::Seconds(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "alltoallv 'x' (blocking)")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "will not run")) << s;
  go = true;
  EXPECT_TRUE((*first)->Wait(absl::Seconds(10), absl::Seconds(1)).ok());
  ASSERT_TRUE(WaitFinished(proxy, 2));
  EXPECT_EQ(second_ran, 0);
}

TEST(DeviceProxy, WaitOnARunningJobWaitsForItWithinTheGrace) {
  DeviceProxy proxy("test", nullptr);
  std::atomic<bool> started{false};
  auto t = proxy.Submit(HostJob("running", [&] {
    started = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    return absl::OkStatus();
  }));
  ASSERT_TRUE(t.ok());
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE((*t)->Wait(absl::Milliseconds(10), absl::Seconds(5)).ok());
}

TEST(DeviceProxy, ShutdownFailsPendingJobsReleasesEachAndJoins) {
  auto gate = std::make_unique<FakeGate>();
  FakeGate* fake = gate.get();
  auto proxy = std::make_unique<DeviceProxy>("test", nullptr, std::move(gate));
  auto stream = MakeStream("comm");
  std::atomic<int> ran{0};
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(proxy
                    ->Enqueue(*stream, absl::StrCat("pending ", i), absl::Seconds(60),
                              [&] {
                                ++ran;
                                return absl::OkStatus();
                              })
                    .ok());
  }
  auto host = proxy->Submit(HostJob("host job", [&] {
    ++ran;
    return absl::OkStatus();
  }));
  ASSERT_TRUE(host.ok());
  std::vector<std::shared_ptr<FakeGate::Job>> jobs;  // the gate goes away with the proxy
  for (size_t i = 0; i < 5; ++i) jobs.push_back(fake->job(i));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the proxy now polls job 0's start
  const auto t0 = Clock::now();
  proxy.reset();  // job 0's start never comes (60 s timeout): shutdown must not wait for it
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_EQ(ran, 0);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(jobs[i]->releases, 1) << i;
  Status hs = (*host)->status();
  EXPECT_EQ(hs.code(), absl::StatusCode::kCancelled) << hs;
  EXPECT_TRUE(absl::StrContains(hs.message(), "host job")) << hs;
  Status s = stream->Synchronize();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "pending 0")) << s;
}

TEST(DeviceProxy, SubmitAfterShutdownIsRefused) {
  DeviceProxy proxy("test", nullptr);
  proxy.Shutdown();
  proxy.Shutdown();  // idempotent
  auto t = proxy.Submit(HostJob("late", [] { return absl::OkStatus(); }));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  auto stream = MakeStream("comm");
  EXPECT_EQ(proxy.Enqueue(*stream, "late", absl::Seconds(1), [] { return absl::OkStatus(); }).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(stream->Synchronize().ok());
}

TEST(DeviceProxy, ManyStreamsInterleavedKeepIssueOrder) {
  // The cuda_ipc shape: exchanges issued round-robin onto several streams still run in issue order.
  DeviceProxy proxy("test", nullptr);
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < 3; ++i) streams.push_back(MakeStream("s"));
  std::vector<int> order;
  for (int i = 0; i < 60; ++i) {
    Stream& s = *streams[i % 3];
    if (i % 7 == 0) {
      ASSERT_TRUE(s.Enqueue([] {
                     std::this_thread::sleep_for(std::chrono::milliseconds(2));
                     return absl::OkStatus();
                   }).ok());
    }
    ASSERT_TRUE(proxy
                    .Enqueue(s, absl::StrCat("x", i), absl::Seconds(10),
                             [&order, i] {
                               order.push_back(i);
                               return absl::OkStatus();
                             })
                    .ok());
  }
  for (auto& s : streams) ASSERT_TRUE(s->Synchronize().ok());
  ASSERT_EQ(order.size(), 60u);
  for (int i = 0; i < 60; ++i) EXPECT_EQ(order[i], i);
}

TEST(CudaStreamGate, UnavailableWithoutADevice) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a GPU is present; the device suite covers the gate";
  auto gate = NewCudaStreamGate(0);
  EXPECT_EQ(gate.status().code(), absl::StatusCode::kUnavailable) << gate.status();
}

TEST(CudaStreamGate, ReleasesACudaStreamWithoutHostFunctionsThatWait) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible (built with CUDA: " << BuiltWithCuda() << ")";
  auto gate = NewCudaStreamGate(0);
  ASSERT_TRUE(gate.ok()) << gate.status();
  DeviceProxy proxy("gpu", std::move(gate).value());
  StreamOptions o;
  o.name = "cuda-comm";
  auto stream = Stream::Create(Device::Cuda(0), o);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::atomic<int> ran{0}, after_saw{-1};
  // More jobs than a few ring laps would need is slow; 64 exercise event reuse and ordering.
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(proxy
                    .Enqueue(**stream, absl::StrCat("gpu job ", i), absl::Seconds(10),
                             [&] {
                               ++ran;
                               return absl::OkStatus();
                             })
                    .ok());
  }
  ASSERT_TRUE((*stream)
                  ->Enqueue([&] {
                    after_saw = ran.load();
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE((*stream)->Synchronize(absl::Seconds(30)).ok());
  EXPECT_EQ(ran, 64);
  EXPECT_EQ(after_saw, 64);
  // An error in a job becomes the CUDA stream's sticky error.
  ASSERT_TRUE(
      proxy.Enqueue(**stream, "failing gpu job", absl::Seconds(10), [] { return absl::DataLossError("bad"); }).ok());
  Status s = (*stream)->Synchronize(absl::Seconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST(CudaStreamGate, ShutdownReleasesAStreamThatNeverGotThere) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible (built with CUDA: " << BuiltWithCuda() << ")";
  auto gate = NewCudaStreamGate(0);
  ASSERT_TRUE(gate.ok()) << gate.status();
  auto proxy = std::make_unique<DeviceProxy>("gpu", std::move(gate).value());
  StreamOptions o;
  o.name = "cuda-comm";
  auto stream = Stream::Create(Device::Cuda(0), o);
  ASSERT_TRUE(stream.ok()) << stream.status();
  // Hold the stream with a host task until the proxy is gone: the job's start is never reached meanwhile.
  std::atomic<bool> go{false};
  ASSERT_TRUE((*stream)
                  ->Enqueue([&] {
                    const auto deadline = Clock::now() + std::chrono::seconds(20);
                    while (!go && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                    return absl::OkStatus();
                  })
                  .ok());
  ASSERT_TRUE(proxy->Enqueue(**stream, "never started", absl::Seconds(60), [] { return absl::OkStatus(); }).ok());
  proxy.reset();
  go = true;
  Status s = (*stream)->Synchronize(absl::Seconds(30));
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
}

}  // namespace
}  // namespace waveep::comm::internal
