// Copyright 2026 The waveep Authors.
//
// `waveep topo probe`: measures the job's ranks and links and writes them as a Cluster. Every rank runs every step
// in the same order (the comm backend's exchanges are matched by call order); per-rank numbers are combined with
// MPI reductions so that every rank returns the same Cluster.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "kernels/kernels.h"
#include "runtime/mpi_context.h"
#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double Median(std::vector<double> v) { return Summarize(std::move(v)).median; }

// Median over ranks of entry `idx` of an AllgatherVector result with `stride` entries per rank.
double MedianOverRanks(const std::vector<double>& gathered, int ranks, size_t stride, size_t idx) {
  std::vector<double> v;
  for (int r = 0; r < ranks; ++r) v.push_back(gathered[r * stride + idx]);
  return Median(v);
}

// Median of one field (latency, bandwidth) over a set of measured pairs.
double MedianOverPairs(const std::vector<const PairMeasurement*>& pairs, double PairMeasurement::*field) {
  std::vector<double> v;
  for (const PairMeasurement* m : pairs) v.push_back(m->*field);
  return Median(v);
}

// Every rank's `v`, concatenated in rank order.
StatusOr<std::vector<double>> AllgatherVector(const ProcessContext& ctx, const std::vector<double>& v) {
  std::vector<double> all(v.size() * ctx.world_size);
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allgather(v.data(), static_cast<int>(v.size()), MPI_DOUBLE, all.data(),
                                           static_cast<int>(v.size()), MPI_DOUBLE, WorldComm(ctx)));
  return all;
}

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "host CPU";
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double NodeMemoryGib() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * page / (1024.0 * 1024.0 * 1024.0) : 0.0;
}

// Repeats `fn` until at least `min_s` seconds passed (and at least twice); returns seconds per call.
template <typename Fn>
double TimePerCall(Fn&& fn, double min_s) {
  fn();  // warm-up (page faults, BLAS buffers)
  int n = 0;
  const Clock::time_point t0 = Clock::now();
  double el = 0;
  do {
    fn();
    ++n;
    el = SecondsSince(t0);
  } while (el < min_s || n < 2);
  return el / n;
}

// An all-to-all-v with `bytes` from `src` to `dst` only; every other block is empty. Every rank builds the same
// call shape so they all issue it (the backend posts nothing for empty blocks).
comm::AlltoallvArgs PairArgs(int me, int size, int src, int dst, size_t bytes, const char* send, char* recv) {
  comm::AlltoallvArgs a;
  a.send = send;
  a.recv = recv;
  a.send_bytes.assign(size, 0);
  a.send_offsets.assign(size, 0);
  a.recv_bytes.assign(size, 0);
  a.recv_offsets.assign(size, 0);
  if (me == src) a.send_bytes[dst] = bytes;
  if (me == dst) a.recv_bytes[src] = bytes;
  a.label = "probe pair";
  return a;
}

// An all-to-all-v with `bytes` in every block (to and from every rank), block p at offset p * bytes.
comm::AlltoallvArgs UniformArgs(int size, int64_t bytes, const char* send, char* recv, std::string label) {
  comm::AlltoallvArgs a;
  a.send = send;
  a.recv = recv;
  a.label = std::move(label);
  for (int p = 0; p < size; ++p) {
    a.send_bytes.push_back(static_cast<size_t>(bytes));
    a.recv_bytes.push_back(static_cast<size_t>(bytes));
    a.send_offsets.push_back(static_cast<size_t>(p) * bytes);
    a.recv_offsets.push_back(static_cast<size_t>(p) * bytes);
  }
  return a;
}

struct PairResult {
  double latency_us = 0, uni_gbps = 0, bidir_gbps = 0;
};

// Ping-pong latency and uni/bidirectional bandwidth between ranks a < b, measured on rank a (others pass through).
StatusOr<PairResult> MeasurePair(const ProcessContext& ctx, comm::Communicator& comm, int a, int b,
                                 const ProbeOptions& opt, std::vector<char>& sbuf, std::vector<char>& rbuf) {
  const int me = ctx.world_rank, n = ctx.world_size;
  const size_t big = static_cast<size_t>(opt.pair_bytes);
  PairResult res;
  const comm::AlltoallvArgs ping = PairArgs(me, n, a, b, 8, sbuf.data(), rbuf.data());
  const comm::AlltoallvArgs pong = PairArgs(me, n, b, a, 8, sbuf.data(), rbuf.data());
  const comm::AlltoallvArgs uni = PairArgs(me, n, a, b, big, sbuf.data(), rbuf.data());
  comm::AlltoallvArgs bidir = PairArgs(me, n, a, b, big, sbuf.data(), rbuf.data());
  if (me == b) bidir.send_bytes[a] = big;
  if (me == a) bidir.recv_bytes[b] = big;
  const int lat_iters = std::max(10, 10 * opt.pair_iters / 3);

  for (int i = 0; i < 2; ++i) {  // warm-up: connections, registration
    WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(ping));
    WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(pong));
  }
  // Best of a few batches: a rank descheduled by a neighbour (2 cores, oversubscribed) inflates one batch, not
  // the link. Each batch starts after a barrier so the pair starts together.
  constexpr int kBatches = 3;
  res.latency_us = std::numeric_limits<double>::infinity();
  for (int batch = 0; batch < kBatches; ++batch) {
    WAVEEP_RETURN_IF_ERROR(comm.Barrier());
    const Clock::time_point t0 = Clock::now();
    for (int i = 0; i < lat_iters; ++i) {
      WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(ping));
      WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(pong));
    }
    res.latency_us = std::min(res.latency_us, SecondsSince(t0) * 1e6 / (2.0 * lat_iters));
  }

  WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(uni));  // warm-up of the large path
  WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(pong));
  for (int batch = 0; batch < kBatches; ++batch) {
    WAVEEP_RETURN_IF_ERROR(comm.Barrier());
    const Clock::time_point t0 = Clock::now();
    for (int i = 0; i < opt.pair_iters; ++i) WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(uni));
    WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(pong));  // a knows b has everything
    res.uni_gbps = std::max(res.uni_gbps, static_cast<double>(big) * opt.pair_iters / SecondsSince(t0) / 1e9);
  }

  WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(bidir));
  for (int batch = 0; batch < kBatches; ++batch) {
    WAVEEP_RETURN_IF_ERROR(comm.Barrier());
    const Clock::time_point t0 = Clock::now();
    for (int i = 0; i < opt.pair_iters; ++i) WAVEEP_RETURN_IF_ERROR(comm.Alltoallv(bidir));
    res.bidir_gbps = std::max(res.bidir_gbps, 2.0 * static_cast<double>(big) * opt.pair_iters / SecondsSince(t0) / 1e9);
  }
  return res;
}

// Runs `body` `iters` times after a barrier; returns this rank's elapsed seconds.
template <typename Body>
StatusOr<double> TimeLocal(comm::Communicator& comm, int iters, Body&& body) {
  WAVEEP_RETURN_IF_ERROR(comm.Barrier());
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < iters; ++i) WAVEEP_RETURN_IF_ERROR(body());
  return SecondsSince(t0);
}

// avg / min / max over ranks of one rank's mean microseconds per iteration (the OSU convention).
struct Spread {
  double avg_us = 0, min_us = 0, max_us = 0;
};
StatusOr<Spread> ReduceSpread(const ProcessContext& ctx, double mine_us) {
  Spread s;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&mine_us, &s.avg_us, 1, MPI_DOUBLE, MPI_SUM, WorldComm(ctx)));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&mine_us, &s.min_us, 1, MPI_DOUBLE, MPI_MIN, WorldComm(ctx)));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&mine_us, &s.max_us, 1, MPI_DOUBLE, MPI_MAX, WorldComm(ctx)));
  s.avg_us /= ctx.world_size;
  return s;
}

Status ValidateOptions(const ProbeOptions& o) {
  if (o.min_bytes < 1 || o.min_bytes > (int64_t{1} << 30))
    return absl::InvalidArgumentError(absl::StrCat("--probe_min_bytes=", o.min_bytes, " must be in [1, 2^30]"));
  if (o.max_bytes < o.min_bytes)
    return absl::InvalidArgumentError(
        absl::StrCat("--probe_max_bytes=", o.max_bytes, " is below --probe_min_bytes=", o.min_bytes));
  // Upper bounds keep the loops and buffers finite (iters * 5, pair_iters * 10 and the doubling GEMM rows are ints).
  if (o.iters < 1 || o.iters > 1000000)
    return absl::InvalidArgumentError(absl::StrCat("--probe_iters=", o.iters, " must be in [1, 1000000]"));
  if (o.warmup < 0) return absl::InvalidArgumentError("--probe_warmup must be >= 0");
  if (!(o.round_min_ms >= 0 && o.round_min_ms <= 60e3)) {
    return absl::InvalidArgumentError(absl::StrCat("--probe_round_ms=", o.round_min_ms, " must be in [0, 60000]"));
  }
  if (o.pair_bytes < 1 || o.pair_bytes > (int64_t{1} << 30))
    return absl::InvalidArgumentError(absl::StrCat("--probe_pair_bytes=", o.pair_bytes, " must be in [1, 2^30]"));
  if (o.pair_iters < 1 || o.pair_iters > 100000)
    return absl::InvalidArgumentError(absl::StrCat("--probe_pair_iters=", o.pair_iters, " must be in [1, 100000]"));
  if (o.gemm_max_rows < 1 || o.gemm_max_rows > 65536)
    return absl::InvalidArgumentError(
        absl::StrCat("--probe_gemm_max_rows=", o.gemm_max_rows, " must be in [1, 65536]"));
  if (!(o.gemm_min_ms > 0 && o.gemm_min_ms <= 60e3))
    return absl::InvalidArgumentError(absl::StrCat("--probe_gemm_min_ms=", o.gemm_min_ms, " must be in (0, 60000]"));
  if (o.blas_threads < 1) return absl::InvalidArgumentError("--blas_threads must be >= 1");
  if (!(o.timeout > absl::ZeroDuration()))
    return absl::InvalidArgumentError(absl::StrCat("--timeout_s must be > 0, got ", absl::ToDoubleSeconds(o.timeout)));
  for (size_t i = 0; i < o.compare_backends.size(); ++i) {
    const std::string& name = o.compare_backends[i];
    // The probed backend itself may be listed (a second communicator of it: the run's own noise floor).
    if (std::find(o.compare_backends.begin(), o.compare_backends.begin() + i, name) != o.compare_backends.begin() + i) {
      return absl::InvalidArgumentError(absl::StrCat("--probe_compare names '", name, "' twice"));
    }
  }
  return absl::OkStatus();
}

// The expert FFN (gate/up GEMM, SwiGLU, down GEMM) of `groups` experts with up to `max_rows` rows each, FP32
// through kernels::GroupedGemmNT — what MoeLayer computes on the CPU — on fixed random inputs.
class FfnProbe {
 public:
  FfnProbe(const ModelConfig& model, int groups, int max_rows)
      : flops_per_pair_(model.FlopsPerPair()),
        groups_(groups),
        h_(model.hidden_size),
        inter_(model.moe_intermediate_size) {
    w13_.resize(static_cast<size_t>(groups) * 2 * inter_ * h_);
    w2_.resize(static_cast<size_t>(groups) * h_ * inter_);
    for (size_t i = 0; i < w13_.size(); ++i) w13_[i] = 0.05f * UniformSym(7, RngStream::kW1, i);
    for (size_t i = 0; i < w2_.size(); ++i) w2_[i] = 0.05f * UniformSym(7, RngStream::kW2, i);
    const size_t rows = static_cast<size_t>(max_rows) * groups;
    a_.resize(rows * h_);
    gate_up_.resize(rows * 2 * inter_);
    act_.resize(rows * inter_);
    y_.resize(rows * h_);
    for (size_t i = 0; i < a_.size(); ++i) a_[i] = UniformSym(7, RngStream::kHidden, i);
    for (int g = 0; g < groups; ++g) {
      b13_.push_back(w13_.data() + static_cast<size_t>(g) * 2 * inter_ * h_);
      b2_.push_back(w2_.data() + static_cast<size_t>(g) * h_ * inter_);
    }
  }
  // One call with m (<= max_rows) rows per expert.
  Status Run(int m) {
    std::vector<int64_t> off(groups_ + 1);
    for (int g = 0; g <= groups_; ++g) off[g] = static_cast<int64_t>(g) * m;
    WAVEEP_RETURN_IF_ERROR(
        kernels::GroupedGemmNT(a_.data(), off.data(), groups_, h_, b13_.data(), 2 * inter_, gate_up_.data()));
    kernels::SwiGLU(gate_up_.data(), off[groups_], inter_, act_.data());
    return kernels::GroupedGemmNT(act_.data(), off.data(), groups_, inter_, b2_.data(), h_, y_.data());
  }
  double Flops(int m) const { return static_cast<double>(groups_) * m * flops_per_pair_; }

 private:
  const double flops_per_pair_;
  const int groups_;
  const int64_t h_, inter_;
  std::vector<float> w13_, w2_, a_, gate_up_, act_, y_;
  std::vector<const float*> b13_, b2_;
};

// The GEMM-rate probe: FfnProbe at each M. Returns FLOP/s per m.
StatusOr<std::vector<double>> GemmRates(comm::Communicator& comm, const ModelConfig& model, const std::vector<int>& ms,
                                        int groups, double min_s) {
  FfnProbe ffn(model, groups, ms.back());
  std::vector<double> rates;
  for (int m : ms) {
    Status st;
    // Every rank computes at once (as in a step); best of three runs filters out neighbours' bursts.
    WAVEEP_RETURN_IF_ERROR(comm.Barrier());
    double s = std::numeric_limits<double>::infinity();
    for (int rep = 0; rep < 3; ++rep) {
      s = std::min(s, TimePerCall(
                          [&] {
                            Status x = ffn.Run(m);
                            if (st.ok()) st = x;
                          },
                          min_s));
    }
    WAVEEP_RETURN_IF_ERROR(st);
    rates.push_back(ffn.Flops(m) / s);
  }
  return rates;
}

// FP32 GB/s of the four conversions the CPU layer does per row: to/from BF16 (combine, BF16 dispatch) and to/from
// FP8 with block scales (FP8 dispatch).
StatusOr<std::vector<double>> ConvertRates(const ModelConfig& model, double min_s) {
  const int64_t h = model.hidden_size;
  const int64_t rows = std::max<int64_t>(1, (4 << 20) / (4 * h));
  const int64_t n = rows * h;
  std::vector<float> x(n), back(n);
  for (int64_t i = 0; i < n; ++i) x[i] = UniformSym(3, RngStream::kTest, i);
  std::vector<uint16_t> bf(n);
  std::vector<uint8_t> q(n);
  const int block = model.fp8_block_size;
  const bool fp8_ok = h % block == 0;
  std::vector<float> scales(fp8_ok ? n / block : 1);
  Status st;
  const double bytes = 4.0 * n;
  std::vector<double> out;
  out.push_back(bytes / TimePerCall([&] { kernels::ConvertF32ToBf16(x.data(), bf.data(), n); }, min_s) / 1e9);
  out.push_back(bytes / TimePerCall([&] { kernels::ConvertBf16ToF32(bf.data(), back.data(), n); }, min_s) / 1e9);
  if (fp8_ok) {
    // Row by row, as MoeLayer packs and unpacks one row at a time.
    out.push_back(bytes /
                  TimePerCall(
                      [&] {
                        for (int64_t r = 0; r < rows && st.ok(); ++r)
                          st = kernels::QuantizeFp8Blockwise(x.data() + r * h, 1, h, block, q.data() + r * h,
                                                             scales.data() + r * (h / block));
                      },
                      min_s) /
                  1e9);
    out.push_back(bytes /
                  TimePerCall(
                      [&] {
                        for (int64_t r = 0; r < rows && st.ok(); ++r)
                          st = kernels::DequantizeFp8Blockwise(q.data() + r * h, scales.data() + r * (h / block), 1, h,
                                                               block, back.data() + r * h);
                      },
                      min_s) /
                  1e9);
  } else {
    out.push_back(0);
    out.push_back(0);
  }
  WAVEEP_RETURN_IF_ERROR(st);
  return out;
}

// Where the ranks run: node and local rank of every rank, one hostname per node (node order). Ranks per node must be
// equal (a cluster's devices_per_node).
struct RankMap {
  int ranks = 0, per_node = 0, nodes = 0;
  std::vector<int> node_of, local_of;
  std::vector<std::string> node_hosts;  // rank 0 only (gathered there)
};

StatusOr<RankMap> LocateRanks(const ProcessContext& ctx) {
  const int n = ctx.world_size;
  RankMap m;
  m.ranks = n;
  m.nodes = ctx.num_nodes;
  std::vector<int> local_sizes(n);
  m.node_of.resize(n);
  m.local_of.resize(n);
  WAVEEP_MPI_RETURN_IF_ERROR(
      MPI_Allgather(&ctx.local_size, 1, MPI_INT, local_sizes.data(), 1, MPI_INT, WorldComm(ctx)));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allgather(&ctx.node_id, 1, MPI_INT, m.node_of.data(), 1, MPI_INT, WorldComm(ctx)));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allgather(&ctx.local_rank, 1, MPI_INT, m.local_of.data(), 1, MPI_INT, WorldComm(ctx)));
  for (int r = 0; r < n; ++r) {
    if (local_sizes[r] != local_sizes[0]) {
      return absl::FailedPreconditionError(
          absl::StrCat("topo probe needs the same number of ranks on every node: rank 0's node has ", local_sizes[0],
                       ", rank ", r, "'s has ", local_sizes[r], " (use --map-by ppr:N:node)"));
    }
  }
  m.per_node = local_sizes[0];
  WAVEEP_ASSIGN_OR_RETURN(std::vector<std::string> hosts, GatherStrings(ctx, ctx.hostname));
  if (ctx.world_rank == 0) {
    m.node_hosts.assign(m.nodes, "");
    for (int r = 0; r < n; ++r) {
      if (m.local_of[r] == 0 && m.node_of[r] >= 0 && m.node_of[r] < m.nodes) m.node_hosts[m.node_of[r]] = hosts[r];
    }
  }
  return m;
}

// Pairs the probe measures: every pair of ranks inside a node (shm), and the first ranks of every pair of nodes
// (net): a host's NIC is what limits its ranks' traffic to other hosts, and one pair per pair of hosts measures it.
std::vector<std::pair<int, int>> PairsToMeasure(const RankMap& m) {
  std::vector<std::pair<int, int>> pairs;
  for (int a = 0; a < m.ranks; ++a) {
    for (int b = a + 1; b < m.ranks; ++b) {
      const bool same = m.node_of[a] == m.node_of[b];
      if (same || (m.local_of[a] == 0 && m.local_of[b] == 0)) pairs.emplace_back(a, b);
    }
  }
  return pairs;
}

using Say = std::function<void(const std::string&)>;

StatusOr<std::vector<PairMeasurement>> MeasurePairs(const ProcessContext& ctx, comm::Communicator& comm,
                                                    const RankMap& map, const ProbeOptions& opt, const Say& say) {
  std::vector<char> sbuf(std::max<int64_t>(opt.pair_bytes, 8), 1), rbuf(std::max<int64_t>(opt.pair_bytes, 8));
  const std::vector<std::pair<int, int>> pairs = PairsToMeasure(map);
  const int num_pairs = static_cast<int>(pairs.size());
  std::vector<double> mine(3 * num_pairs, 0.0), all(3 * num_pairs, 0.0);
  for (int k = 0; k < num_pairs; ++k) {
    const auto [a, b] = pairs[k];
    auto res = MeasurePair(ctx, comm, a, b, opt, sbuf, rbuf);
    WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, res.status()));
    if (ctx.world_rank == a) {
      mine[3 * k] = res->latency_us;
      mine[3 * k + 1] = res->uni_gbps;
      mine[3 * k + 2] = res->bidir_gbps;
    }
  }
  if (num_pairs > 0) {
    WAVEEP_MPI_RETURN_IF_ERROR(
        MPI_Allreduce(mine.data(), all.data(), 3 * num_pairs, MPI_DOUBLE, MPI_MAX, WorldComm(ctx)));
  }
  std::vector<PairMeasurement> out;
  for (int k = 0; k < num_pairs; ++k) {
    PairMeasurement m;
    m.a = pairs[k].first;
    m.b = pairs[k].second;
    m.kind = map.node_of[m.a] == map.node_of[m.b] ? "shm" : "net";
    m.latency_us = all[3 * k];
    m.uni_gbps = all[3 * k + 1];
    m.bidir_gbps = all[3 * k + 2];
    out.push_back(m);
    say(absl::StrFormat("[topo probe] pair %d<->%d (%s, n%d-n%d): latency %.2f us, uni %.3f GB/s, bidir %.3f GB/s", m.a,
                        m.b, m.kind, map.node_of[m.a], map.node_of[m.b], m.latency_us, m.uni_gbps, m.bidir_gbps));
  }
  return out;
}

// Per-rank host figures, every rank at once, median over ranks: memcpy, the stream's task cost, the four
// conversions, and the expert FFN's GEMM rate at each M in `ms`.
struct HostFigures {
  double memcpy_gbps = 0, op_overhead_us = 0;
  double convert_gbps[4] = {0, 0, 0, 0};  // to_bf16, from_bf16, to_fp8, from_fp8
  std::vector<int> ms;
  std::vector<double> gemm_rates;  // FLOP/s per rank at ms[i]
  double peak = 0;
  int groups = 1;  // experts per GEMM call
};

StatusOr<HostFigures> MeasureHost(const ProcessContext& ctx, comm::Communicator& comm, const ModelConfig& model,
                                  const ProbeOptions& opt, const Say& say) {
  const int n = ctx.world_size;
  HostFigures f;
  for (int m = 1; m < opt.gemm_max_rows; m *= 2) f.ms.push_back(m);
  f.ms.push_back(opt.gemm_max_rows);
  const int64_t expert_bytes = 3 * model.hidden_size * model.moe_intermediate_size * 4;
  const int local_experts = std::max(1, model.num_experts / n);
  f.groups = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(local_experts, (int64_t{256} << 20) / std::max<int64_t>(1, expert_bytes))));
  std::vector<double> local;  // memcpy GB/s, op overhead us, 4 convert rates, then one rate per m
  WAVEEP_RETURN_IF_ERROR(comm.Barrier());
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(opt.pair_bytes, 1 << 20));
  std::vector<char> src(bytes, 3), dst(bytes);
  const double s = TimePerCall([&] { std::memcpy(dst.data(), src.data(), bytes); }, 0.02);
  local.push_back(static_cast<double>(bytes) / s / 1e9);

  WAVEEP_ASSIGN_OR_RETURN(auto stream, Stream::Create(Device::Cpu(), StreamOptions{"probe", opt.timeout}));
  constexpr int kTasks = 200;
  const double per_batch = TimePerCall(
      [&] {
        for (int i = 0; i < kTasks; ++i) (void)stream->Enqueue([] { return absl::OkStatus(); });
        (void)stream->Synchronize();
      },
      0.01);
  local.push_back(per_batch / kTasks * 1e6);
  WAVEEP_RETURN_IF_ERROR(stream->status());

  WAVEEP_RETURN_IF_ERROR(comm.Barrier());
  say(absl::StrFormat("[topo probe] conversions (FP32 <-> BF16 / FP8, H=%d) on every rank at once...",
                      static_cast<int>(model.hidden_size)));
  auto conv = ConvertRates(model, 0.01);
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, conv.status()));
  local.insert(local.end(), conv->begin(), conv->end());

  WAVEEP_RETURN_IF_ERROR(comm.Barrier());
  say(
      absl::StrFormat("[topo probe] expert FFN GEMM rate (%s: H=%d I=%d, %d expert(s) per call, M=1..%d) on "
                      "every rank at once...",
                      model.name, static_cast<int>(model.hidden_size), static_cast<int>(model.moe_intermediate_size),
                      f.groups, opt.gemm_max_rows));
  auto rates = GemmRates(comm, model, f.ms, f.groups, opt.gemm_min_ms / 1e3);
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, rates.status()));
  local.insert(local.end(), rates->begin(), rates->end());

  WAVEEP_ASSIGN_OR_RETURN(std::vector<double> gathered, AllgatherVector(ctx, local));
  auto median_of = [&](size_t idx) { return MedianOverRanks(gathered, n, local.size(), idx); };
  f.memcpy_gbps = median_of(0);
  f.op_overhead_us = median_of(1);
  for (int i = 0; i < 4; ++i) f.convert_gbps[i] = median_of(2 + i);
  for (size_t i = 0; i < f.ms.size(); ++i) f.gemm_rates.push_back(median_of(6 + i));
  f.peak = *std::max_element(f.gemm_rates.begin(), f.gemm_rates.end());
  for (size_t i = 0; i < f.ms.size(); ++i) {
    say(absl::StrFormat("[topo probe]   M=%-5d %8.2f GFLOP/s per rank (%.2f of the best)", f.ms[i],
                        f.gemm_rates[i] / 1e9, f.gemm_rates[i] / f.peak));
  }
  return f;
}

// The all-to-all-v sweep: the comm backend (blocking, and async on a stream) and plain MPI_Alltoallv on the same
// buffers, interleaved. Appends how it was measured to `notes`.
StatusOr<AlltoallCurve> MeasureAlltoall(const ProcessContext& ctx, comm::Communicator& comm,
                                        const std::vector<comm::Communicator*>& others, const ProbeOptions& opt,
                                        const Say& say, std::vector<std::string>* notes) {
  const int n = ctx.world_size;
  AlltoallCurve curve;
  curve.ranks = n;
  curve.backend = opt.backend;
  {
    // Buffers hold one block per rank; keep them to 1 GiB per side whatever the rank count.
    int64_t max_bytes = opt.max_bytes;
    const int64_t cap = (int64_t{1} << 30) / n;
    if (max_bytes > cap) {
      max_bytes = std::max<int64_t>(opt.min_bytes, cap);
      notes->push_back(absl::StrCat("all-to-all sweep capped at ", max_bytes, " bytes per block (1 GiB buffers)"));
    }
    std::vector<char> sbuf(static_cast<size_t>(max_bytes) * n), rbuf(static_cast<size_t>(max_bytes) * n);
    for (size_t i = 0; i < sbuf.size(); ++i) sbuf[i] = static_cast<char>((i * 131 + ctx.world_rank) & 0xff);
    MPI_Comm mpi_comm = MPI_COMM_NULL;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_dup(WorldComm(ctx), &mpi_comm));
    struct FreeComm {
      MPI_Comm* c;
      ~FreeComm() { MPI_Comm_free(c); }
    } free_comm{&mpi_comm};
    WAVEEP_ASSIGN_OR_RETURN(auto stream, Stream::Create(Device::Cpu(), StreamOptions{"probe-comm", opt.timeout}));
    // What the async column adds to the blocking one: one task handed to the stream's thread and its completion
    // handed back (an empty task, Enqueue + Synchronize), median over ranks.
    {
      WAVEEP_RETURN_IF_ERROR(comm.Barrier());
      const double handoff_s = TimePerCall(
          [&] {
            (void)stream->Enqueue([] { return absl::OkStatus(); });
            (void)stream->Synchronize();
          },
          0.01);
      WAVEEP_RETURN_IF_ERROR(stream->status());
      WAVEEP_ASSIGN_OR_RETURN(std::vector<double> all, AllgatherVector(ctx, {handoff_s * 1e6}));
      const double handoff_us = Median(all);
      notes->push_back(absl::StrFormat(
          "async all-to-all = blocking exchange + the stream hand-off (an empty task enqueued and synchronized: "
          "%.2f us, median over ranks)",
          handoff_us));
      say(absl::StrFormat("[topo probe] stream hand-off (empty task, Enqueue + Synchronize): %.2f us", handoff_us));
    }
    std::string versus = "MPI_Alltoallv";
    for (const comm::Communicator* o : others) absl::StrAppend(&versus, ", ", o->name());
    say(absl::StrFormat("[topo probe] all-to-all-v sweep %d .. %d bytes per block (%s vs %s)",
                        static_cast<int>(opt.min_bytes), static_cast<int>(max_bytes), opt.backend, versus));
    std::vector<int64_t> sizes;
    for (int64_t s = opt.min_bytes; s < max_bytes; s *= 2) sizes.push_back(s);
    sizes.push_back(max_bytes);
    for (int64_t s : sizes) {
      const comm::AlltoallvArgs args = UniformArgs(n, s, sbuf.data(), rbuf.data(), absl::StrCat("probe alltoallv ", s));
      std::vector<int> counts(n, static_cast<int>(std::min<int64_t>(s, INT_MAX))), displs(n);
      for (int p = 0; p < n; ++p) displs[p] = static_cast<int>(std::min<int64_t>(static_cast<int64_t>(p) * s, INT_MAX));
      const bool mpi_ok = s * n <= INT_MAX;
      // Small exchanges are cheap and noisy: more iterations, as the OSU benchmarks do (and see round_min_ms below).
      const int iters = s <= (64 << 10) ? opt.iters * 5 : opt.iters;
      AlltoallPoint pt;
      pt.bytes = s;
      // The methods on the same buffers, interleaved in rotating order over five rounds so that drift and
      // neighbours' noise spread over all of them instead of biasing the one that ran last: 0 the backend, 1
      // MPI_Alltoallv, 2 the backend async on a stream, 3.. the other backends (blocking).
      std::vector<std::function<Status()>> bodies = {
          [&] { return comm.Alltoallv(args); },
          [&]() -> Status {
            WAVEEP_MPI_RETURN_IF_ERROR(MPI_Alltoallv(sbuf.data(), counts.data(), displs.data(), MPI_BYTE, rbuf.data(),
                                                     counts.data(), displs.data(), MPI_BYTE, mpi_comm));
            return absl::OkStatus();
          },
          [&]() -> Status {
            WAVEEP_RETURN_IF_ERROR(comm.AlltoallvAsync(args, *stream));
            return stream->Synchronize();
          }};
      for (comm::Communicator* o : others) bodies.push_back([o, &args] { return o->Alltoallv(args); });
      const int methods = static_cast<int>(bodies.size());
      std::vector<double> total_s(methods, 0);
      std::vector<int> done_iters(methods, 0);
      constexpr int kRounds = 5;
      // Warm-up, timed: it sets each method's iterations per round, the same on every rank (the loops are
      // collective): iters / kRounds, or more where a round would last less than round_min_ms on the slowest rank.
      std::vector<double> warm_us(methods, 0);
      for (int m = 0; m < methods; ++m) {
        if (m == 1 && !mpi_ok) continue;
        const int w = std::max(1, opt.warmup);
        WAVEEP_ASSIGN_OR_RETURN(double sec, TimeLocal(comm, w, bodies[m]));
        warm_us[m] = sec * 1e6 / w;
      }
      WAVEEP_MPI_RETURN_IF_ERROR(
          MPI_Allreduce(MPI_IN_PLACE, warm_us.data(), methods, MPI_DOUBLE, MPI_MAX, WorldComm(ctx)));
      std::vector<int> round_iters(methods);
      for (int m = 0; m < methods; ++m) {
        const double want = opt.round_min_ms * 1e3 / std::max(warm_us[m], 1e-3);
        round_iters[m] = static_cast<int>(
            std::clamp<double>(std::ceil(want), std::max(1, (iters + kRounds - 1) / kRounds), 1 << 20));
      }
      std::vector<double> round_us(methods * kRounds, 0);  // [method][round]: this rank's per-iteration mean
      for (int round = 0; round < kRounds; ++round) {
        for (int k = 0; k < methods; ++k) {
          const int m = (round + k) % methods;
          if (m == 1 && !mpi_ok) continue;
          const int n_it = round_iters[m];
          WAVEEP_ASSIGN_OR_RETURN(double sec, TimeLocal(comm, n_it, bodies[m]));
          total_s[m] += sec;
          done_iters[m] += n_it;
          round_us[m * kRounds + round] = sec * 1e6 / n_it;
        }
      }
      // Round-to-round spread of each method, each round averaged over ranks: the noise the verdict allows for.
      WAVEEP_MPI_RETURN_IF_ERROR(
          MPI_Allreduce(MPI_IN_PLACE, round_us.data(), methods * kRounds, MPI_DOUBLE, MPI_SUM, WorldComm(ctx)));
      auto spread = [&](int m) {
        const double* r = round_us.data() + m * kRounds;
        const auto [lo, hi] = std::minmax_element(r, r + kRounds);
        double sum = 0;
        for (int i = 0; i < kRounds; ++i) sum += r[i];
        return sum > 0 ? (*hi - *lo) / (sum / kRounds) : 0.0;
      };
      auto median = [&](int m) {
        return Median(std::vector<double>(round_us.data() + m * kRounds, round_us.data() + (m + 1) * kRounds)) / n;
      };
      pt.comm_spread = spread(0);
      pt.comm_median_us = median(0);
      if (mpi_ok) {
        pt.mpi_spread = spread(1);
        pt.mpi_median_us = median(1);
      }
      WAVEEP_ASSIGN_OR_RETURN(Spread cs, ReduceSpread(ctx, total_s[0] * 1e6 / done_iters[0]));
      WAVEEP_ASSIGN_OR_RETURN(Spread as, ReduceSpread(ctx, total_s[2] * 1e6 / done_iters[2]));
      if (mpi_ok) {
        WAVEEP_ASSIGN_OR_RETURN(Spread mp, ReduceSpread(ctx, total_s[1] * 1e6 / done_iters[1]));
        pt.mpi_avg_us = mp.avg_us;
        pt.mpi_min_us = mp.min_us;
        pt.mpi_max_us = mp.max_us;
      }
      pt.comm_avg_us = cs.avg_us;
      pt.comm_min_us = cs.min_us;
      pt.comm_max_us = cs.max_us;
      pt.async_avg_us = as.avg_us;
      std::string beside;
      for (size_t k = 0; k < others.size(); ++k) {
        const int m = 3 + static_cast<int>(k);
        pt.others.push_back({std::string(others[k]->name()), median(m), spread(m)});
        // "(ucx 0.90x)": the backend's speed relative to this one's, on the median rounds.
        absl::StrAppend(&beside, absl::StrFormat("  %s %9.2f us (%s %.2fx)", others[k]->name(), median(m), opt.backend,
                                                 median(m) / std::max(pt.comm_median_us, 1e-9)));
      }
      curve.points.push_back(pt);
      const double moved = static_cast<double>(s) * (n - 1);
      say(absl::StrFormat("[topo probe]   %9d B  %s %9.2f us  MPI %9.2f us  async %9.2f us  (%.3f GB/s)%s%s",
                          static_cast<int>(s), opt.backend, pt.comm_avg_us, pt.mpi_avg_us, pt.async_avg_us,
                          moved / (pt.comm_avg_us * 1e3), beside,
                          pt.CompareWithMpi() == AlltoallPoint::VersusMpi::kSlower ? "  SLOWER than MPI" : ""));
    }
  }
  return curve;
}

// How much a rank's exchange and its GEMMs slow each other down when they run at once, as in a wave step: the
// comm backend's async all-to-all (pair_bytes per peer, pair_iters of them back to back) on a stream while the host
// thread runs the expert FFN at the largest M, against each alone. Speeds in (0, 1], median over three rounds and
// then over ranks. What it holds that a core count cannot: the network stack's CPU time, ranks of several hosts
// sharing cores (emulated clusters), memory bandwidth. Zeros (not measured) with one rank.
struct Interference {
  double compute_speed = 0, comm_speed = 0;
};

StatusOr<Interference> MeasureInterference(const ProcessContext& ctx, comm::Communicator& comm,
                                           const ModelConfig& model, const ProbeOptions& opt, const HostFigures& host,
                                           const Say& say) {
  const int n = ctx.world_size;
  Interference out;
  if (n < 2) return out;
  const int64_t block = std::min<int64_t>(opt.pair_bytes, (int64_t{1} << 30) / n);
  const int iters = std::max(3, std::min(opt.pair_iters, 50));
  const int m = host.ms.back();
  say(
      absl::StrFormat("[topo probe] interference: %d all-to-alls of %d bytes per block beside the expert FFN (M=%d), "
                      "against each alone...",
                      iters, static_cast<int>(block), m));
  std::vector<char> sbuf(static_cast<size_t>(block) * n), rbuf(static_cast<size_t>(block) * n);
  for (size_t i = 0; i < sbuf.size(); ++i) sbuf[i] = static_cast<char>((i * 131 + ctx.world_rank) & 0xff);
  const comm::AlltoallvArgs args = UniformArgs(n, block, sbuf.data(), rbuf.data(), "probe interference");
  WAVEEP_ASSIGN_OR_RETURN(auto stream, Stream::Create(Device::Cpu(), StreamOptions{"probe-comm", opt.timeout}));
  WAVEEP_ASSIGN_OR_RETURN(auto done, Event::Create(Device::Cpu(), "probe exchanges done"));
  FfnProbe ffn(model, host.groups, m);
  Status st = ffn.Run(m);  // warm
  auto enqueue_exchanges = [&]() -> Status {
    for (int i = 0; i < iters; ++i) WAVEEP_RETURN_IF_ERROR(comm.AlltoallvAsync(args, *stream));
    return stream->Record(*done);
  };
  std::vector<double> compute_speed, comm_speed;
  for (int round = 0; round < 3 && st.ok(); ++round) {
    // The exchanges alone.
    WAVEEP_RETURN_IF_ERROR(comm.Barrier());
    double t0 = NowUs();
    WAVEEP_RETURN_IF_ERROR(enqueue_exchanges());
    WAVEEP_RETURN_IF_ERROR(stream->Synchronize());
    const double comm_alone_us = NowUs() - t0;
    // The FFN alone, for about as long.
    WAVEEP_RETURN_IF_ERROR(comm.Barrier());
    const double ffn_alone_s = TimePerCall(
        [&] {
          if (st.ok()) st = ffn.Run(m);
        },
        std::max(0.01, comm_alone_us / 1e6));
    // Both at once: the FFN runs until the exchanges are done (so they run under load throughout).
    WAVEEP_RETURN_IF_ERROR(comm.Barrier());
    t0 = NowUs();
    WAVEEP_RETURN_IF_ERROR(enqueue_exchanges());
    int calls = 0;
    do {
      if (st.ok()) st = ffn.Run(m);
      ++calls;
    } while (!done->Query());
    const double loop_us = NowUs() - t0;
    WAVEEP_RETURN_IF_ERROR(stream->Synchronize());
    WAVEEP_ASSIGN_OR_RETURN(const double comm_end_us, done->CompletionTimeUs());
    compute_speed.push_back(ffn_alone_s * 1e6 * calls / loop_us);
    comm_speed.push_back(comm_alone_us / std::max(1.0, comm_end_us - t0));
  }
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, st));
  WAVEEP_ASSIGN_OR_RETURN(std::vector<double> all, AllgatherVector(ctx, {Median(compute_speed), Median(comm_speed)}));
  // Clamped into (0, 1]: noise can make a loaded run look a little faster than the solo one.
  out.compute_speed = std::clamp(MedianOverRanks(all, n, 2, 0), 0.01, 1.0);
  out.comm_speed = std::clamp(MedianOverRanks(all, n, 2, 1), 0.01, 1.0);
  say(
      absl::StrFormat("[topo probe]   side by side: the FFN at %.2fx and the all-to-all at %.2fx of their speed alone "
                      "(median over ranks)",
                      out.compute_speed, out.comm_speed));
  return out;
}

// The cluster the measurements describe. Links: "shm" inside a node (when a node runs several ranks), each node's
// NIC into one "net" switch (when there are several nodes) with the rate measured for that node, and loopback.
Cluster DescribeCluster(const ProcessContext& ctx, const RankMap& map, const ModelConfig& model,
                        const ProbeOptions& opt, const HostFigures& host, const Interference& interference,
                        ProbeInfo info) {
  const int n = map.ranks, dpn = map.per_node;
  Cluster c;
  c.name = absl::StrCat("probed-", ctx.hostname, "-np", n);
  c.description = absl::StrFormat(
      "Measured by `waveep topo probe` with %d ranks (%d per node, %d node(s)); a device is one rank's share of the "
      "host (FP32 BLAS, %d thread(s)); links are the %s backend between ranks%s.",
      n, dpn, map.nodes, opt.blas_threads, opt.backend,
      map.nodes > 1 ? "; each node's NIC carries all of its ranks' traffic to other nodes" : "");
  c.sources.push_back(absl::StrCat("measured on ", info.hostnames, " at ", info.date));
  c.num_nodes = map.nodes;
  c.devices_per_node = dpn;
  DeviceSpec& d = c.device;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  d.model = absl::StrFormat("%s (1 of %d ranks on %u cores)", CpuModelName(), dpn, hw);
  d.kind = "cpu";
  d.compute_tflops["f32"] = host.peak / 1e12;
  d.gemm_dtype = "f32";
  d.max_gemm_efficiency = 1.0;
  d.memory_bw_gbps = 2.0 * host.memcpy_gbps;
  d.memory_gib = NodeMemoryGib() / dpn;
  d.cores = static_cast<int>(hw);
  d.overlap_compute_speed = interference.compute_speed;
  d.overlap_comm_speed = interference.comm_speed;
  d.op_overhead_us = host.op_overhead_us;
  for (size_t i = 0; i < host.ms.size(); ++i) {
    d.gemm_efficiency.rows.push_back(host.ms[i]);
    d.gemm_efficiency.efficiency.push_back(std::max(1e-4, host.gemm_rates[i] / host.peak));
  }
  const char* conv_keys[] = {"to_bf16", "from_bf16", "to_fp8", "from_fp8"};
  for (int i = 0; i < 4; ++i) {
    if (host.convert_gbps[i] > 0) d.convert_gbps[conv_keys[i]] = host.convert_gbps[i];
  }
  info.notes.push_back(absl::StrFormat(
      "device.compute_tflops.f32 = best per-rank rate of the expert FFN (%s, %d expert(s) per call) with all %d "
      "ranks computing at once; gemm_efficiency = rate(M) / best",
      model.name, host.groups, n));
  info.notes.push_back(absl::StrFormat(
      "device.memory_bw_gbps = 2 x memcpy rate (read + write), median over ranks copying at once: %.2f GB/s copied",
      host.memcpy_gbps));
  info.notes.push_back(
      absl::StrFormat("device.op_overhead_us = cost of one empty stream task: %.2f us", host.op_overhead_us));

  auto pairs_of = [&](const std::string& kind) {
    std::vector<const PairMeasurement*> v;
    for (const PairMeasurement& m : info.pairs) {
      if (m.kind == kind) v.push_back(&m);
    }
    return v;
  };
  // Full duplex if both directions together move clearly more than one alone.
  auto duplex = [&](const std::vector<const PairMeasurement*>& v) {
    return MedianOverPairs(v, &PairMeasurement::bidir_gbps) >= 1.5 * MedianOverPairs(v, &PairMeasurement::uni_gbps);
  };
  const std::vector<const PairMeasurement*> shm = pairs_of("shm"), net = pairs_of("net");
  double shm_latency_us = 0;
  if (dpn > 1 && !shm.empty()) {
    c.switches.push_back(SwitchSpec{"shm", 0, "node", 0});
    LinkSpec l;
    l.name = "shm";
    l.kind = LinkKind::kShm;
    l.from = "device";
    l.to = "shm";
    l.bw_gbps = MedianOverPairs(shm, &PairMeasurement::uni_gbps);
    shm_latency_us = MedianOverPairs(shm, &PairMeasurement::latency_us) / 2;  // a pair's path crosses two such links
    l.latency_us = shm_latency_us;
    l.duplex = duplex(shm);
    c.link_specs.push_back(l);
    info.notes.push_back(absl::StrFormat(
        "links \"shm\": bw_gbps = median unidirectional bandwidth of the %d pairs inside a node (%d-byte messages); "
        "latency_us = half their median latency (two hops per pair); duplex = bidirectional sum %.3f GB/s >= 1.5 x "
        "%.3f",
        static_cast<int>(shm.size()), static_cast<int>(opt.pair_bytes),
        MedianOverPairs(shm, &PairMeasurement::bidir_gbps), l.bw_gbps));
  }
  if (map.nodes > 1 && !net.empty()) {
    c.switches.push_back(SwitchSpec{"net", 0, "cluster", 0});
    // A node's NIC rate: the best pair it is part of. A pair moves at the slower of its two NICs, so the best pair
    // of a node is one whose other end is at least as fast; with only two nodes both get the pair's rate.
    std::vector<double> nic(map.nodes, 0.0);
    for (const PairMeasurement* m : net) {
      for (int node : {map.node_of[m->a], map.node_of[m->b]}) nic[node] = std::max(nic[node], m->uni_gbps);
    }
    LinkSpec l;
    l.name = "nic";
    l.kind = LinkKind::kNet;
    // With several ranks per node the NIC hangs off the node's shared memory, so the node's ranks share it.
    l.from = dpn > 1 && !shm.empty() ? "shm" : "device";
    l.to = "net";
    l.bw_gbps = Median(nic);
    for (int node = 0; node < map.nodes; ++node) l.node_bw_gbps[node] = nic[node];
    // A pair crosses two NICs (and, with several ranks per node, two shm hops).
    l.latency_us = std::max(0.0, MedianOverPairs(net, &PairMeasurement::latency_us) / 2 - shm_latency_us);
    l.duplex = duplex(net);
    c.link_specs.push_back(l);
    std::vector<std::string> per_node;
    for (int node = 0; node < map.nodes; ++node) {
      per_node.push_back(absl::StrFormat("n%d%s%s %.4f", node, map.node_hosts.empty() ? "" : "=",
                                         map.node_hosts.empty() ? "" : map.node_hosts[node], nic[node]));
    }
    info.notes.push_back(absl::StrFormat(
        "links \"nic\": one per node, node_bw_gbps = the best unidirectional bandwidth of the %d pairs (first ranks "
        "of two nodes, %d-byte messages) the node is part of, GB/s: %s; a pair moves at its slower NIC, so with 2 "
        "nodes a slow NIC cannot be told from its peer; latency_us = half the median pair latency%s; duplex = "
        "bidirectional sum %.3f GB/s >= 1.5 x %.3f",
        static_cast<int>(net.size()), static_cast<int>(opt.pair_bytes), absl::StrJoin(per_node, ", "),
        dpn > 1 ? " less the shm hops" : "", MedianOverPairs(net, &PairMeasurement::bidir_gbps),
        MedianOverPairs(net, &PairMeasurement::uni_gbps)));
  }
  LinkSpec lb;
  lb.name = "loopback";
  lb.kind = LinkKind::kLoopback;
  lb.duplex = false;
  lb.bw_gbps = host.memcpy_gbps;
  lb.latency_us = 0;
  c.loopback = lb;
  c.probe = std::move(info);
  return c;
}

}  // namespace

StatusOr<Cluster> ProbeCluster(const ProcessContext& ctx, const ModelConfig& model, const ProbeOptions& opt) {
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, ValidateOptions(opt)));
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, ValidateModelConfig(model)));
  const bool root = ctx.world_rank == 0;
  const Say say = [&](const std::string& line) {
    if (root && opt.progress) opt.progress(line);
  };
  WAVEEP_ASSIGN_OR_RETURN(RankMap map, LocateRanks(ctx));

  // The probe runs BLAS with the thread count the layer will use; the caller's setting comes back on every exit.
  struct BlasThreadsGuard {
    int previous;
    ~BlasThreadsGuard() {
      if (previous > 0) kernels::SetBlasThreads(previous);
    }
  } blas_guard{kernels::SetBlasThreads(opt.blas_threads)};
  comm::Options copt;
  copt.timeout = opt.timeout;
  auto comm_or = comm::CreateCommunicator(opt.backend, ctx, copt);
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, comm_or.status()));
  std::unique_ptr<comm::Communicator> comm = *std::move(comm_or);
  // The backends timed beside it in the all-to-all sweep only; made now, so that a name that cannot be built fails
  // before anything is measured.
  std::vector<std::unique_ptr<comm::Communicator>> compare;
  std::vector<comm::Communicator*> compare_ptrs;
  for (const std::string& name : opt.compare_backends) {
    auto c = comm::CreateCommunicator(name, ctx, copt);
    WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(ctx, Annotate(c.status(), "--probe_compare")));
    compare.push_back(*std::move(c));
    compare_ptrs.push_back(compare.back().get());
  }
  say(absl::StrFormat("[topo probe] %d ranks on %d node(s) (%d per node%s%s), backend %s, %d BLAS thread(s) per rank",
                      map.ranks, map.nodes, map.per_node, root ? ": " : "",
                      root ? absl::StrJoin(map.node_hosts, ", ") : "", opt.backend, opt.blas_threads));

  ProbeInfo info;
  info.date = UtcNow();
  info.backend = opt.backend;
  info.ranks = map.ranks;
  info.model = model.name;
  info.blas_threads = opt.blas_threads;
  info.hostnames = root ? absl::StrJoin(map.node_hosts, ",") : ctx.hostname;
  WAVEEP_ASSIGN_OR_RETURN(info.pairs, MeasurePairs(ctx, *comm, map, opt, say));
  WAVEEP_ASSIGN_OR_RETURN(HostFigures host, MeasureHost(ctx, *comm, model, opt, say));
  WAVEEP_ASSIGN_OR_RETURN(AlltoallCurve curve, MeasureAlltoall(ctx, *comm, compare_ptrs, opt, say, &info.notes));
  compare_ptrs.clear();
  compare.clear();
  info.alltoall = std::move(curve);
  WAVEEP_ASSIGN_OR_RETURN(Interference interference, MeasureInterference(ctx, *comm, model, opt, host, say));
  // Every rank has the same numbers except hostnames/date strings; only rank 0's are written by the CLI.
  Cluster c = DescribeCluster(ctx, map, model, opt, host, interference, std::move(info));
  WAVEEP_RETURN_IF_ERROR(ExpandCluster(&c));
  return c;
}

}  // namespace waveep::topology
