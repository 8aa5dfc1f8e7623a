// Copyright 2026 The waveep Authors.
//
// bench/comm_bench.cc — all-to-all-v bandwidth of comm backends next to plain MPI_Alltoallv, same buffers and sizes.
//
//   mpirun -np 4 --oversubscribe build/bench/waveep_comm_bench --benchmark_counters_tabular=true
//   mpirun -np 4 ... waveep_comm_bench --comm_bench_backend=mpi,ucx --comm_bench_max_bytes=16777216
//   mpirun -np 4 ... waveep_comm_bench --comm_bench_backend=mpi,ucx --comm_bench_rounds=7   # interleaved rounds
//   # the mpi backend's polling knobs (comm/mpi_transport.h, MpiTuning):
//   mpirun -np 4 ... waveep_comm_bench --comm_bench_busy_us=10 --comm_bench_spin_us=50
//   --comm_bench_spin_per_mib_us=1000 ...
//                                      ... --comm_bench_poll_sleep_us=20
//   # the ucx backends' (comm/ucx_transport.h, UcxTuning; "ucx_put" is the put data path):
//   mpirun -np 4 ... waveep_comm_bench --comm_bench_backend=mpi,ucx,ucx_put --comm_bench_ucx_busy_us=20
//       --comm_bench_ucx_spin_us=200 --comm_bench_ucx_min_sleep_us=20 --comm_bench_ucx_max_sleep_us=1000
//   # the ucx backend's same-host rings: on (default) or off (UCX tagged messages), and their geometry:
//   mpirun -np 2 ... waveep_comm_bench --comm_bench_backend=mpi,ucx --comm_bench_ucx_shm=1
//       --comm_bench_ucx_shm_chunk_bytes=65536 --comm_bench_ucx_shm_slots=4
//
// For each per-peer block size (1 KiB .. 64 MiB, x4 steps) it runs, side by side, for every backend in
// --comm_bench_backend (a comma-separated list, default "mpi"):
//   BM_AlltoallvWaveep/<backend>/<size>          Communicator::AlltoallvAsync + Stream::Synchronize (what the wave
//                                                scheduler does: the exchange plus the hand-off to the stream's
//                                                thread and back)
//   BM_AlltoallvWaveepBlocking/<backend>/<size>  Communicator::Alltoallv on the calling thread (like for like with the
//                                                baseline)
//   BM_AlltoallvMpi/<size>                       MPI_Alltoallv on the same buffers, counts and displacements (the
//                                                baseline)
// --comm_bench_rounds=N (default 1) runs all of that N times per size, round after round, so that every backend is
// measured next to the others at N moments (a 2-core machine running 4 ranks drifts by 2x between seconds); the
// benchmarks are then named .../<size>/round:<r>.
// After the run, rank 0 prints one summary line per size: each backend's async busbw beside MPI_Alltoallv's (medians
// over the rounds), and with several backends, each one's ratio to the first, async and blocking (the median of the
// rounds' ratios, with the lowest and highest round).
// Each iteration starts after a barrier; its time is the slowest rank's (manual time), so all ranks agree. Counters
// follow nccl-tests: algbw = bytes each rank sends (size x block, self included) / time; busbw = algbw x (n-1)/n.
// bytes_per_second is algbw. Every rank runs fixed iteration counts so that the ranks stay in lockstep; only rank 0
// prints (and writes --benchmark_out). The received data is checked after each benchmark.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "benchmark/benchmark.h"
#include "comm/comm.h"
#include "comm/mpi_transport.h"  // tuning knobs of the mpi backend (this is the comm module's own bench)
#include "comm/ucx_transport.h"  // and of the ucx backend
#include "runtime/mpi_context.h"
#include "runtime/runtime.h"

namespace {

using waveep::Status;
using waveep::comm::AlltoallvArgs;

const waveep::ProcessContext* g_ctx = nullptr;
std::vector<std::unique_ptr<waveep::comm::Communicator>> g_comms;  // in --comm_bench_backend order
std::unique_ptr<waveep::Stream> g_stream;
// busbw (GB/s) per (benchmark family, per-peer bytes), one entry per round, for the summary.
std::map<std::pair<std::string, size_t>, std::vector<double>> g_busbw;

// Payload byte i of the block src -> dst: cheap to generate and check, never zero.
inline char Pattern(int src, int dst, size_t i) {
  return static_cast<char>(1 + (static_cast<size_t>(src) * 131 + static_cast<size_t>(dst) * 31 + i * 7) % 251);
}

// Buffers for one block size, shared by both benchmarks of that size (the last size used stays allocated).
struct Buffers {
  size_t per_peer = 0;
  std::vector<char> send;
  std::vector<char> recv;
  AlltoallvArgs args;
  std::vector<int> counts;  // MPI_Alltoallv's int counts/displacements; empty when they would overflow
  std::vector<int> displs;
};

Buffers& BuffersFor(size_t per_peer) {
  static Buffers b;
  if (b.per_peer == per_peer) return b;
  const int n = g_ctx->world_size, me = g_ctx->world_rank;
  b = Buffers{};
  b.per_peer = per_peer;
  b.send.resize(per_peer * n);
  b.recv.resize(per_peer * n);
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < per_peer; ++i) b.send[p * per_peer + i] = Pattern(me, p, i);
  }
  b.args.send = b.send.data();
  b.args.recv = b.recv.data();
  b.args.label = absl::StrCat("bench ", per_peer, " B/peer");
  for (int p = 0; p < n; ++p) {
    b.args.send_bytes.push_back(per_peer);
    b.args.send_offsets.push_back(p * per_peer);
    b.args.recv_bytes.push_back(per_peer);
    b.args.recv_offsets.push_back(p * per_peer);
  }
  if (per_peer * n <= static_cast<size_t>(INT_MAX)) {
    for (int p = 0; p < n; ++p) {
      b.counts.push_back(static_cast<int>(per_peer));
      b.displs.push_back(static_cast<int>(p * per_peer));
    }
  }
  return b;
}

bool Received(const Buffers& b) {
  const int n = g_ctx->world_size, me = g_ctx->world_rank;
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < b.per_peer; ++i) {
      if (b.recv[p * b.per_peer + i] != Pattern(p, me, i)) return false;
    }
  }
  return true;
}

// Same on every rank, so the ranks run the same number of collective iterations: about 256 MiB per rank per
// benchmark, between 5 and 500 iterations.
int64_t IterationsFor(size_t per_peer, int n) {
  const double bytes = static_cast<double>(per_peer) * n;
  return std::clamp<int64_t>(static_cast<int64_t>((256.0 * (1 << 20)) / bytes), 5, 500);
}

// Times `op` per iteration as the slowest rank's time; every rank leaves the loop together on any rank's error.
void RunTimed(benchmark::State& state, const std::string& family, size_t per_peer,
              const std::function<Status(Buffers&)>& op) {
  Buffers& b = BuffersFor(per_peer);
  std::fill(b.recv.begin(), b.recv.end(), 0);
  const int n = g_ctx->world_size;
  double total_s = 0;
  std::string error;
  for (auto _ : state) {
    MPI_Barrier(WorldComm(*g_ctx));
    const double t0 = MPI_Wtime();
    Status s = op(b);
    double v[2] = {MPI_Wtime() - t0, s.ok() ? 0.0 : 1.0};
    MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_DOUBLE, MPI_MAX, WorldComm(*g_ctx));
    if (!s.ok()) error = std::string(s.message());
    if (v[1] != 0) {
      state.SkipWithError(error.empty() ? "another rank failed" : error.c_str());
      break;
    }
    state.SetIterationTime(v[0]);
    total_s += v[0];
  }
  if (!error.empty() || total_s <= 0) return;
  int ok = Received(b) ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, WorldComm(*g_ctx));
  if (!ok) {
    state.SkipWithError("received data differs from what was sent");
    return;
  }
  const double bytes = static_cast<double>(per_peer) * n;  // sent by each rank per iteration, self included
  const double algbw = bytes * static_cast<double>(state.iterations()) / total_s / 1e9;
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
  state.counters["algbw_GBps"] = algbw;
  state.counters["busbw_GBps"] = algbw * (n - 1) / n;
  state.counters["ranks"] = n;
  g_busbw[{family, per_peer}].push_back(algbw * (n - 1) / n);
}

void BM_AlltoallvWaveep(benchmark::State& state, size_t comm_index, size_t per_peer) {
  waveep::comm::Communicator* comm = g_comms[comm_index].get();
  RunTimed(state, std::string(comm->name()), per_peer, [comm](Buffers& b) -> Status {
    WAVEEP_RETURN_IF_ERROR(comm->AlltoallvAsync(b.args, *g_stream));
    return g_stream->Synchronize();
  });
}

void BM_AlltoallvWaveepBlocking(benchmark::State& state, size_t comm_index, size_t per_peer) {
  waveep::comm::Communicator* comm = g_comms[comm_index].get();
  RunTimed(state, absl::StrCat(comm->name(), " blocking"), per_peer,
           [comm](Buffers& b) { return comm->Alltoallv(b.args); });
}

void BM_AlltoallvMpi(benchmark::State& state, size_t per_peer) {
  // The ranks decide this identically (sizes are the same everywhere), so they skip together.
  if (BuffersFor(per_peer).counts.empty()) {
    state.SkipWithError("MPI_Alltoallv: displacements exceed INT_MAX at this size");
    return;
  }
  RunTimed(state, "MPI_Alltoallv", per_peer, [](Buffers& b) -> Status {
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Alltoallv(b.send.data(), b.counts.data(), b.displs.data(), MPI_BYTE, b.recv.data(),
                                             b.counts.data(), b.displs.data(), MPI_BYTE, WorldComm(*g_ctx)));
    return absl::OkStatus();
  });
}

// Swallows everything: ranks other than 0 run the same benchmarks but print nothing.
class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

std::string SizeName(size_t bytes) {
  if (bytes >= (size_t{1} << 20)) return absl::StrCat(bytes >> 20, "MiB");
  return absl::StrCat(bytes >> 10, "KiB");
}

// One line per block size: every backend's async busbw (and blocking, in brackets) beside MPI_Alltoallv's, each the
// median over the rounds. Each backend's ratio to the first is the median of the per-round ratios (round r of both
// ran back to back, so the machine's drift cancels in the pair), with the lowest and highest round in brackets.
void PrintSummary(size_t max_bytes, int rounds) {
  std::printf(
      "\nsummary: busbw GB/s per block size (async [blocking]), median of %d round(s); ratio = backend / first "
      "backend, median of the rounds' ratios%s\n",
      rounds, rounds > 1 ? " [lowest, highest round]" : "");
  std::printf("%-8s", "block");
  for (const auto& c : g_comms) std::printf(" %22s", std::string(c->name()).c_str());
  std::printf(" %14s", "MPI_Alltoallv");
  for (size_t i = 1; i < g_comms.size(); ++i) {
    const std::string r = absl::StrCat(g_comms[i]->name(), "/", g_comms[0]->name());
    std::printf(" %*s %*s", rounds > 1 ? 20 : 10, r.c_str(), rounds > 1 ? 20 : 10, absl::StrCat(r, " blk").c_str());
  }
  std::printf("\n");
  auto rounds_of = [](const std::string& family, size_t bytes) {
    auto it = g_busbw.find({family, bytes});
    return it == g_busbw.end() ? std::vector<double>() : it->second;
  };
  auto get = [&](const std::string& family, size_t bytes) {
    const std::vector<double> v = rounds_of(family, bytes);
    return v.empty() ? -1.0 : waveep::Summarize(v).median;
  };
  // "-" where a benchmark did not run (--benchmark_filter): nothing is printed that was not measured.
  auto cell = [](double v, int width, int decimals) {
    return v < 0 ? absl::StrFormat("%*s", width, "-") : absl::StrFormat("%*.*f", width, decimals, v);
  };
  // Median, lowest and highest of the per-round ratios family / base.
  auto ratio = [&](const std::string& family, const std::string& base, size_t bytes) {
    const std::vector<double> a = rounds_of(family, bytes), b = rounds_of(base, bytes);
    std::vector<double> r;
    for (size_t k = 0; k < std::min(a.size(), b.size()); ++k) {
      if (a[k] > 0 && b[k] > 0) r.push_back(a[k] / b[k]);
    }
    if (r.empty()) return absl::StrFormat("%*s", rounds > 1 ? 20 : 10, "-");
    if (rounds == 1) return absl::StrFormat("%10.3f", r[0]);
    const waveep::Summary sum = waveep::Summarize(r);
    return absl::StrFormat("%20s", absl::StrFormat("%.3f [%.2f, %.2f]", sum.median, sum.min, sum.max));
  };
  for (size_t per_peer = 1024; per_peer <= max_bytes; per_peer *= 4) {
    std::string line = absl::StrFormat("%-8s", SizeName(per_peer));
    bool any = false;
    for (const auto& c : g_comms) {
      const std::string name(c->name());
      const double a = get(name, per_peer), b = get(name + " blocking", per_peer);
      any = any || a >= 0 || b >= 0;
      absl::StrAppend(&line, " ", cell(a, 10, 4), " [", cell(b, 9, 4), "]");
    }
    const double m = get("MPI_Alltoallv", per_peer);
    any = any || m >= 0;
    absl::StrAppend(&line, " ", cell(m, 14, 4));
    const std::string first(g_comms[0]->name());
    for (size_t i = 1; i < g_comms.size(); ++i) {
      const std::string name(g_comms[i]->name());
      absl::StrAppend(&line, " ", ratio(name, first, per_peer), " ",
                      ratio(name + " blocking", first + " blocking", per_peer));
    }
    if (any) std::printf("%s\n", line.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  auto ctx = waveep::InitProcess(&argc, &argv);
  if (!ctx.ok()) {
    std::fprintf(stderr, "InitProcess failed: %s\n", std::string(ctx.status().message()).c_str());
    return 1;
  }
  g_ctx = &ctx.value();
  const bool root = ctx->world_rank == 0;

  // Our flags, then Google Benchmark's. Non-root ranks drop --benchmark_out* so that only rank 0 writes the file.
  std::string backend = "mpi";
  size_t max_bytes = size_t{64} << 20;
  int rounds = 1;
  std::vector<char*> args = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--comm_bench_backend=")) {
      backend = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--comm_bench_max_bytes=")) {
      if (!absl::SimpleAtoi(a, &max_bytes) || max_bytes < 1024) {
        if (root) std::fprintf(stderr, "--comm_bench_max_bytes wants an integer >= 1024, got '%s'\n", argv[i]);
        waveep::FinalizeProcess();
        return 2;
      }
    } else if (absl::ConsumePrefix(&a, "--comm_bench_rounds=")) {
      if (!absl::SimpleAtoi(a, &rounds) || rounds < 1 || rounds > 100) {
        if (root) std::fprintf(stderr, "--comm_bench_rounds wants an integer in [1, 100], got '%s'\n", argv[i]);
        waveep::FinalizeProcess();
        return 2;
      }
    } else if (absl::ConsumePrefix(&a, "--comm_bench_busy_us=") || absl::ConsumePrefix(&a, "--comm_bench_spin_us=") ||
               absl::ConsumePrefix(&a, "--comm_bench_spin_per_mib_us=") ||
               absl::ConsumePrefix(&a, "--comm_bench_poll_sleep_us=")) {
      waveep::comm::internal::MpiTuning t = waveep::comm::internal::GetMpiTuning();
      int64_t us = 0;
      const absl::Duration d = absl::Microseconds(absl::SimpleAtoi(a, &us) ? us : -1);
      if (absl::StartsWith(argv[i], "--comm_bench_busy_us=")) {
        t.busy_poll = d;
      } else if (absl::StartsWith(argv[i], "--comm_bench_spin_us=")) {
        t.spin = d;
      } else if (absl::StartsWith(argv[i], "--comm_bench_spin_per_mib_us=")) {
        t.spin_per_mib = d;
      } else {
        t.poll_sleep = d;
      }
      if (Status s = waveep::comm::internal::SetMpiTuning(t); !s.ok()) {
        if (root) std::fprintf(stderr, "%s: %s\n", argv[i], std::string(s.message()).c_str());
        waveep::FinalizeProcess();
        return 2;
      }
    } else if (absl::ConsumePrefix(&a, "--comm_bench_ucx_busy_us=") ||
               absl::ConsumePrefix(&a, "--comm_bench_ucx_spin_us=") ||
               absl::ConsumePrefix(&a, "--comm_bench_ucx_min_sleep_us=") ||
               absl::ConsumePrefix(&a, "--comm_bench_ucx_max_sleep_us=")) {
      waveep::comm::internal::UcxTuning t = waveep::comm::internal::GetUcxTuning();
      int64_t v = 0;
      const bool parsed = absl::SimpleAtoi(a, &v);
      const absl::Duration d = absl::Microseconds(parsed ? v : -1);
      if (absl::StartsWith(argv[i], "--comm_bench_ucx_busy_us=")) {
        t.busy_poll = d;
        t.no_busy_poll_when_oversubscribed = false;  // the value given applies, oversubscribed or not
      } else if (absl::StartsWith(argv[i], "--comm_bench_ucx_spin_us=")) {
        t.spin = d;
      } else if (absl::StartsWith(argv[i], "--comm_bench_ucx_min_sleep_us=")) {
        t.min_sleep = d;
      } else {
        t.max_sleep = d;
      }
      if (Status s = waveep::comm::internal::SetUcxTuning(t); !s.ok() || !parsed) {
        if (root)
          std::fprintf(stderr, "%s: %s\n", argv[i], parsed ? std::string(s.message()).c_str() : "not an integer");
        waveep::FinalizeProcess();
        return 2;
      }
    } else if (absl::ConsumePrefix(&a, "--comm_bench_ucx_shm=") ||
               absl::ConsumePrefix(&a, "--comm_bench_ucx_shm_chunk_bytes=") ||
               absl::ConsumePrefix(&a, "--comm_bench_ucx_shm_slots=")) {
      waveep::comm::internal::UcxTuning t = waveep::comm::internal::GetUcxTuning();
      const bool on_off = absl::StartsWith(argv[i], "--comm_bench_ucx_shm=");
      uint64_t v = 0;
      const bool parsed = absl::SimpleAtoi(a, &v) && v <= (on_off ? 1 : uint64_t{UINT32_MAX});
      if (on_off) {
        t.shm_rings = v == 1;
      } else {
        (absl::StartsWith(argv[i], "--comm_bench_ucx_shm_slots=") ? t.shm_slots : t.shm_chunk_bytes) =
            static_cast<uint32_t>(v);
      }
      if (Status s = waveep::comm::internal::SetUcxTuning(t); !s.ok() || !parsed) {
        const std::string why =
            !parsed ? (on_off ? "want 0 or 1" : "want an unsigned 32-bit integer") : std::string(s.message());
        if (root) std::fprintf(stderr, "%s: %s\n", argv[i], why.c_str());
        waveep::FinalizeProcess();
        return 2;
      }
    } else if (root || !absl::StartsWith(a, "--benchmark_out")) {
      args.push_back(argv[i]);
    }
  }
  int bench_argc = static_cast<int>(args.size());
  benchmark::Initialize(&bench_argc, args.data());
  if (benchmark::ReportUnrecognizedArguments(bench_argc, args.data())) {
    waveep::FinalizeProcess();
    return 2;
  }

  waveep::StreamOptions stream_opts;
  stream_opts.name = "comm";
  auto stream = waveep::Stream::Create(waveep::Device::Cpu(), stream_opts);
  Status setup = stream.status();
  for (absl::string_view name : absl::StrSplit(backend, ',', absl::SkipEmpty())) {
    if (!setup.ok()) break;
    for (const auto& made : g_comms) {
      if (made->name() == name) {
        setup = absl::InvalidArgumentError(absl::StrCat("--comm_bench_backend names '", name, "' twice"));
      }
    }
    if (!setup.ok()) break;
    auto comm = waveep::comm::CreateCommunicator(name, *ctx);
    if (!comm.ok()) {
      setup = comm.status();
      break;
    }
    g_comms.push_back(std::move(comm).value());
  }
  if (setup.ok() && g_comms.empty()) setup = absl::InvalidArgumentError("--comm_bench_backend names no backend");
  if (!setup.ok()) {
    if (root) std::fprintf(stderr, "setup failed: %s\n", std::string(setup.message()).c_str());
    g_comms.clear();
    waveep::FinalizeProcess();
    return 1;
  }
  g_stream = std::move(stream).value();

  benchmark::AddCustomContext("waveep_backend", backend);
  benchmark::AddCustomContext("waveep_ranks", absl::StrCat(ctx->world_size, " on ", ctx->num_nodes, " node(s)"));
  benchmark::AddCustomContext("waveep_link_to_next_rank",
                              g_comms[0]->Estimate((ctx->world_rank + 1) % ctx->world_size).kind);
  // Round-major within a size: round r runs every backend and the baseline back to back before round r + 1 starts.
  // Every benchmark times itself (manual time) for a fixed iteration count, in microseconds.
  auto add = [](benchmark::internal::Benchmark* b, int64_t iters) {
    b->UseManualTime()->Iterations(iters)->Unit(benchmark::kMicrosecond);
  };
  for (size_t per_peer = 1024; per_peer <= max_bytes; per_peer *= 4) {
    const int64_t iters = IterationsFor(per_peer, ctx->world_size);
    for (int r = 0; r < rounds; ++r) {
      const std::string suffix = rounds > 1 ? absl::StrCat(SizeName(per_peer), "/round:", r) : SizeName(per_peer);
      for (size_t c = 0; c < g_comms.size(); ++c) {
        const std::string name(g_comms[c]->name());
        add(benchmark::RegisterBenchmark(absl::StrCat("BM_AlltoallvWaveep/", name, "/", suffix).c_str(),
                                         BM_AlltoallvWaveep, c, per_peer),
            iters);
        add(benchmark::RegisterBenchmark(absl::StrCat("BM_AlltoallvWaveepBlocking/", name, "/", suffix).c_str(),
                                         BM_AlltoallvWaveepBlocking, c, per_peer),
            iters);
      }
      add(benchmark::RegisterBenchmark(absl::StrCat("BM_AlltoallvMpi/", suffix).c_str(), BM_AlltoallvMpi, per_peer),
          iters);
    }
  }

  if (root) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    NullReporter quiet;
    benchmark::RunSpecifiedBenchmarks(&quiet);
  }
  if (root) PrintSummary(max_bytes, rounds);
  benchmark::Shutdown();
  g_stream.reset();
  g_comms.clear();
  waveep::FinalizeProcess();
  return 0;
}
