// Copyright 2026 The waveep Authors.
//
// The MoE layer under real mpirun (np 1, 2, 4): correctness against the dense reference, bitwise determinism over
// waves / runs / rank counts, skewed and empty inputs, and errors that reach every rank instead of hanging.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/str_join.h"
#include "comm/comm.h"
#include "ep/ep.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/mpi_context.h"
#include "tests/common/mpi_test_main.h"

namespace waveep::ep {
namespace {

using ::testing::HasSubstr;
using waveep::testing::MpiTestContext;

ModelConfig Tiny() {
  auto m = LoadModelConfig("tiny");
  WAVEEP_CHECK(m.ok()) << m.status();
  return *m;
}

struct Run {
  std::vector<float> out;
  StepStats stats;
};

// Runs one layer step on `ctx` for tokens [first, first + n) with the given settings.
// `nodes` (optional): LayerConfig::node_of_rank, to emulate ranks on several nodes.
StatusOr<Run> RunLayer(const ProcessContext& ctx, const ModelConfig& m, int waves, DType dtype, RoutingMode routing,
                       int64_t first, int64_t n, uint64_t seed = 5, int steps = 1, Device device = Device::Cpu(),
                       bool dedup = true, std::vector<int> nodes = {}, bool dedup_hosts = true) {
  WAVEEP_ASSIGN_OR_RETURN(auto comm, comm::CreateCommunicator("mpi", ctx));
  LayerConfig cfg;
  cfg.device = device;
  cfg.model = m;
  cfg.num_waves = waves;
  cfg.dispatch_dtype = dtype;
  cfg.dedup = dedup;
  cfg.dedup_hosts = dedup_hosts;
  cfg.node_of_rank = std::move(nodes);
  cfg.timeout = absl::Seconds(60);
  auto weights = MakeSyntheticWeights(m, seed);
  WAVEEP_ASSIGN_OR_RETURN(auto layer, MoeLayer::Create(ctx, comm.get(), cfg, *weights));
  WAVEEP_ASSIGN_OR_RETURN(TokenBatch batch, MakeSyntheticBatch(m, routing, seed, first, n));
  Run r;
  r.out.assign(static_cast<size_t>(n * m.hidden_size), std::nanf(""));
  for (int s = 0; s < steps; ++s) WAVEEP_RETURN_IF_ERROR(layer->Forward(batch, r.out.data(), &r.stats));
  return r;
}

// A one-rank context over MPI_COMM_SELF: the np = 1 computation inside a multi-rank job.
ProcessContext SelfContext() {
  ProcessContext c;
  c.mpi = std::make_shared<MpiComms>();
  MPI_Comm_dup(MPI_COMM_SELF, &c.mpi->world);
  MPI_Comm_dup(MPI_COMM_SELF, &c.mpi->node);
  c.thread_level = MPI_THREAD_MULTIPLE;
  return c;
}

// Gathers every rank's rows to rank 0 in rank order (equal row counts per rank).
std::vector<float> GatherToRoot(const ProcessContext& ctx, const std::vector<float>& mine) {
  std::vector<float> all(ctx.world_rank == 0 ? mine.size() * ctx.world_size : 0);
  MPI_Gather(mine.data(), static_cast<int>(mine.size()), MPI_FLOAT, all.data(), static_cast<int>(mine.size()),
             MPI_FLOAT, 0, WorldComm(ctx));
  return all;
}

struct Case {
  const char* dtype;
  RoutingMode routing;
};

class LayerTest : public ::testing::TestWithParam<Case> {};

TEST_P(LayerTest, MatchesDenseReference) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  DType dt = *ParseDType(GetParam().dtype);
  const int64_t t = 48;
  auto run = RunLayer(ctx, m, 2, dt, GetParam().routing, ctx.world_rank * t, t);
  ASSERT_TRUE(run.ok()) << run.status();
  LayerConfig cfg;
  cfg.model = m;
  cfg.dispatch_dtype = dt;
  auto batch = MakeSyntheticBatch(m, GetParam().routing, 5, ctx.world_rank * t, t);
  ASSERT_TRUE(batch.ok());
  auto weights = MakeSyntheticWeights(m, 5);
  auto v = VerifyAgainstReference(cfg, *weights, *batch, run->out.data());
  ASSERT_TRUE(v.ok()) << v.status();
  // Tolerance 2^-8 of the per-token error scale: combine travels as BF16 (unit roundoff 2^-9); see ep.h.
  EXPECT_TRUE(v->passed) << "max normalized error " << v->max_normalized << " > " << v->tolerance << " at token "
                         << v->worst_token;
  EXPECT_LT(v->max_rel_l2, 0.02);
  // A wrong output must fail: perturb one token's output by 1% of its norm.
  std::vector<float> bad = run->out;
  for (int64_t c = 0; c < m.hidden_size; ++c) bad[c] *= 1.05f;
  auto vb = VerifyAgainstReference(cfg, *weights, *batch, bad.data());
  ASSERT_TRUE(vb.ok());
  EXPECT_FALSE(vb->passed);
}

TEST_P(LayerTest, BitwiseIdenticalForEveryWaveCountAndRun) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  DType dt = *ParseDType(GetParam().dtype);
  const int64_t t = 40;
  const int local = m.num_experts / ctx.world_size;
  auto base = RunLayer(ctx, m, 1, dt, GetParam().routing, ctx.world_rank * t, t);
  ASSERT_TRUE(base.ok()) << base.status();
  for (int w : {1, 2, 3, 4, 8}) {
    if (w > local) continue;
    auto r = RunLayer(ctx, m, w, dt, GetParam().routing, ctx.world_rank * t, t, 5, /*steps=*/2);
    ASSERT_TRUE(r.ok()) << "waves " << w << ": " << r.status();
    ASSERT_EQ(0, std::memcmp(base->out.data(), r->out.data(), base->out.size() * sizeof(float))) << "waves " << w;
  }
}

TEST_P(LayerTest, BitwiseIdenticalToOneRank) {
  // The same global tokens computed by one rank over MPI_COMM_SELF (np = 1) give the same bits.
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  DType dt = *ParseDType(GetParam().dtype);
  const int64_t t = 24;
  auto dist = RunLayer(ctx, m, 2, dt, GetParam().routing, ctx.world_rank * t, t);
  ASSERT_TRUE(dist.ok()) << dist.status();
  std::vector<float> gathered = GatherToRoot(ctx, dist->out);
  if (ctx.world_rank == 0) {
    ProcessContext self = SelfContext();
    auto one = RunLayer(self, m, 3, dt, GetParam().routing, 0, t * ctx.world_size);
    ASSERT_TRUE(one.ok()) << one.status();
    ASSERT_EQ(gathered.size(), one->out.size());
    EXPECT_EQ(0, std::memcmp(gathered.data(), one->out.data(), gathered.size() * sizeof(float)));
    MPI_Comm_free(&self.mpi->world);
    MPI_Comm_free(&self.mpi->node);
  }
  MPI_Barrier(WorldComm(ctx));
}

// Dispatch deduplication moves data only: the output is the same bits with it on and off, for every W; each
// (wave, peer) block carries exactly the distinct tokens that have an expert in that wave of that peer (counted here
// from the routing, independently of the layout code), and the layer reports those bytes.
TEST_P(LayerTest, DedupSendsEachTokenOncePerRankAndWaveAndChangesNoBit) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  DType dt = *ParseDType(GetParam().dtype);
  const int64_t t = 40;
  const int r_count = ctx.world_size, local = m.num_experts / r_count;
  auto batch = MakeSyntheticBatch(m, GetParam().routing, 5, ctx.world_rank * t, t);
  ASSERT_TRUE(batch.ok());
  auto comm = comm::CreateCommunicator("mpi", ctx);
  ASSERT_TRUE(comm.ok());
  auto placement = Placement::Contiguous(m.num_experts, r_count);
  ASSERT_TRUE(placement.ok());
  for (int w : {1, 2, 4}) {
    if (w > local) continue;
    auto on = RunLayer(ctx, m, w, dt, GetParam().routing, ctx.world_rank * t, t, 5, 1, Device::Cpu(), true);
    auto off = RunLayer(ctx, m, w, dt, GetParam().routing, ctx.world_rank * t, t, 5, 1, Device::Cpu(), false);
    ASSERT_TRUE(on.ok()) << on.status();
    ASSERT_TRUE(off.ok()) << off.status();
    ASSERT_EQ(0, std::memcmp(on->out.data(), off->out.data(), on->out.size() * sizeof(float))) << "waves " << w;
    EXPECT_EQ(on->stats.bytes_sent - on->stats.bytes_sent_dispatch,
              off->stats.bytes_sent - off->stats.bytes_sent_dispatch);  // the combine is unchanged

    auto lay = BuildDispatchLayout(**comm, *placement, *batch, w, /*dedup=*/true);
    ASSERT_TRUE(lay.ok()) << lay.status();
    ASSERT_TRUE(lay->dedup);
    double expect_bytes = 0, pair_bytes = 0;
    for (int p = 0; p < r_count; ++p) {
      for (int wv = 0; wv < w; ++wv) {
        const int lo = lay->wave_begin[p * (w + 1) + wv], hi = lay->wave_begin[p * (w + 1) + wv + 1];
        std::set<int64_t> tokens;
        int64_t pairs = 0;
        for (int64_t i = 0; i < t * m.top_k; ++i) {
          const int e = batch->topk_idx[i];
          if (e / local != p || e % local < lo || e % local >= hi) continue;
          tokens.insert(i / m.top_k);
          ++pairs;
        }
        EXPECT_EQ(lay->dsend_rows[wv * r_count + p], static_cast<int64_t>(tokens.size())) << p << " " << wv;
        EXPECT_EQ(lay->send_rows[wv * r_count + p], pairs);
        if (p != ctx.world_rank) {
          expect_bytes += static_cast<double>(tokens.size()) * m.DispatchRowBytes(dt);
          pair_bytes += static_cast<double>(pairs) * m.DispatchRowBytes(dt);
        }
      }
    }
    EXPECT_EQ(on->stats.bytes_sent_dispatch, expect_bytes) << "waves " << w;
    EXPECT_EQ(off->stats.bytes_sent_dispatch, pair_bytes) << "waves " << w;
  }
}

// Per-node dispatch (hierarchical) moves the same rows by another road: the output is the same bits as per-rank
// deduplication and as none, for every W and for two ways of grouping the ranks into emulated nodes (blocks and
// interleaved). What crosses between nodes is exactly one row per (token, other node, wave) that any rank of that
// node needs (counted here from the routing and the allgathered wave boundaries, independently of the layout code),
// and never more than per-rank deduplication sends between nodes.
TEST_P(LayerTest, PerNodeDispatchCrossesEachNodeOncePerTokenAndChangesNoBit) {
  const ProcessContext& ctx = MpiTestContext();
  if (ctx.world_size < 2) GTEST_SKIP() << "needs 2 ranks (emulated as 2 nodes)";
  ModelConfig m = Tiny();
  DType dt = *ParseDType(GetParam().dtype);
  const int64_t t = 40;
  const int r_count = ctx.world_size, local = m.num_experts / r_count, me = ctx.world_rank;
  auto batch = MakeSyntheticBatch(m, GetParam().routing, 5, me * t, t);
  ASSERT_TRUE(batch.ok());
  auto comm = comm::CreateCommunicator("mpi", ctx);
  ASSERT_TRUE(comm.ok());
  auto placement = Placement::Contiguous(m.num_experts, r_count);
  ASSERT_TRUE(placement.ok());
  std::vector<std::vector<int>> groupings;
  std::vector<int> blocks(r_count), interleaved(r_count);
  for (int r = 0; r < r_count; ++r) {
    blocks[r] = r / std::max(1, r_count / 2);
    interleaved[r] = r % 2;
  }
  groupings.push_back(blocks);
  if (interleaved != blocks) groupings.push_back(interleaved);
  for (const std::vector<int>& nodes : groupings) {
    for (int w : {1, 2, 4}) {
      if (w > local) continue;
      const std::string what = absl::StrCat("waves ", w, " nodes ", absl::StrJoin(nodes, ","));
      auto host = RunLayer(ctx, m, w, dt, GetParam().routing, me * t, t, 5, 1, Device::Cpu(), true, nodes, true);
      auto rank = RunLayer(ctx, m, w, dt, GetParam().routing, me * t, t, 5, 1, Device::Cpu(), true, nodes, false);
      auto off = RunLayer(ctx, m, w, dt, GetParam().routing, me * t, t, 5, 1, Device::Cpu(), false, nodes, true);
      ASSERT_TRUE(host.ok()) << host.status();
      ASSERT_TRUE(rank.ok()) << rank.status();
      ASSERT_TRUE(off.ok()) << off.status();
      ASSERT_EQ(0, std::memcmp(host->out.data(), rank->out.data(), host->out.size() * sizeof(float))) << what;
      ASSERT_EQ(0, std::memcmp(host->out.data(), off->out.data(), host->out.size() * sizeof(float))) << what;

      auto lay = BuildDispatchLayout(**comm, *placement, *batch, w, /*dedup=*/true, &nodes);
      ASSERT_TRUE(lay.ok()) << lay.status();
      ASSERT_TRUE(lay->hierarchical) << what;
      // Distinct (token, wave) per other node, from the routing.
      int64_t expect_rows = 0;
      std::set<int> node_ids(nodes.begin(), nodes.end());
      for (int b : node_ids) {
        if (b == nodes[me]) continue;
        for (int wv = 0; wv < w; ++wv) {
          std::set<int64_t> tokens;
          for (int64_t i = 0; i < t * m.top_k; ++i) {
            const int e = batch->topk_idx[i], p = e / local;
            const int lo = lay->wave_begin[p * (w + 1) + wv], hi = lay->wave_begin[p * (w + 1) + wv + 1];
            if (nodes[p] == b && e % local >= lo && e % local < hi) tokens.insert(i / m.top_k);
          }
          expect_rows += static_cast<int64_t>(tokens.size());
        }
      }
      const double row = static_cast<double>(m.DispatchRowBytes(dt));
      int64_t x1_rows = 0;
      for (int64_t n : lay->x1_send_rows) x1_rows += n;
      EXPECT_EQ(x1_rows, expect_rows) << what;
      const double combine_internode_host = host->stats.bytes_sent_internode;
      double combine_internode = 0;
      for (int p = 0; p < r_count; ++p)
        if (nodes[p] != nodes[me])
          for (int wv = 0; wv < w; ++wv) combine_internode += lay->recv_rows[wv * r_count + p] * 2.0 * m.hidden_size;
      EXPECT_EQ(combine_internode_host, expect_rows * row + combine_internode) << what;
      EXPECT_LE(host->stats.bytes_sent_internode, rank->stats.bytes_sent_internode) << what;
    }
  }
}

// Bad node maps are refused before anything is exchanged, naming the field.
TEST(Layer, NodeOfRankIsValidated) {
  const ProcessContext& ctx = MpiTestContext();
  std::vector<int> wrong_size(ctx.world_size + 1, 0), out_of_range(ctx.world_size, 0);
  out_of_range.back() = ctx.world_size;
  for (const auto& nodes : {wrong_size, out_of_range}) {
    auto r = RunLayer(ctx, Tiny(), 1, DType::kBF16, RoutingMode::kGate, ctx.world_rank * 8, 8, 5, 1, Device::Cpu(),
                      true, nodes);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("node_of_rank"));
  }
}

INSTANTIATE_TEST_SUITE_P(DtypesAndRouting, LayerTest,
                         ::testing::Values(Case{"bf16", RoutingMode::kGate}, Case{"fp8", RoutingMode::kGate},
                                           Case{"bf16", RoutingMode::kUniform}, Case{"bf16", RoutingMode::kSkewed},
                                           Case{"fp8", RoutingMode::kSkewed}),
                         [](const ::testing::TestParamInfo<Case>& p) {
                           return absl::StrCat(p.param.dtype, "_", RoutingModeName(p.param.routing));
                         });

// ---- CUDA: the same schedule with device operations ---------------------------------------------------------------

// This rank's GPU, as `--device=cuda` picks it (local rank modulo the visible GPUs; ranks share a GPU under MPS).
Device MyGpu(const ProcessContext& ctx) { return Device::Cuda(ctx.local_rank % std::max(1, CudaDeviceCount())); }

TEST(CudaLayer, WithoutGpuFailsOnEveryRankNamingTheDevice) {
  const ProcessContext& ctx = MpiTestContext();
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a GPU is visible; covered by the CudaLayer GPU tests";
  auto r = RunLayer(ctx, Tiny(), 1, DType::kBF16, RoutingMode::kGate, ctx.world_rank * 8, 8, 5, 1, Device::Cuda(0));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--device=cuda:0"));
}

TEST(CudaLayer, OrdinalOutOfRangeIsRejected) {
  const ProcessContext& ctx = MpiTestContext();
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible";
  auto r = RunLayer(ctx, Tiny(), 1, DType::kBF16, RoutingMode::kGate, ctx.world_rank * 8, 8, 5, 1,
                    Device::Cuda(CudaDeviceCount()));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("CUDA device(s) visible"));
}

// Correct against the dense reference with the CPU layer's tolerance (the device's extra BF16 roundings are
// independent 2^-9 terms next to the combine rows' 2^-9: see ep/cuda_layer_ops.cc), and bitwise identical for every
// W and run (the GEMM backend is pinned per shape).
class CudaLayerTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaLayerTest, MatchesReferenceAndIsBitwiseIdenticalForEveryWaveCount) {
  const ProcessContext& ctx = MpiTestContext();
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible";
  ModelConfig m = Tiny();
  const DType dt = *ParseDType(GetParam());
  const int64_t t = 96;
  const int local = m.num_experts / ctx.world_size;
  LayerConfig cfg;
  cfg.model = m;
  cfg.dispatch_dtype = dt;
  auto batch = MakeSyntheticBatch(m, RoutingMode::kGate, 5, ctx.world_rank * t, t);
  ASSERT_TRUE(batch.ok()) << batch.status();
  auto weights = MakeSyntheticWeights(m, 5);
  std::vector<float> base;
  for (int w : {1, 2, 4, 8}) {
    if (w > local) continue;
    auto r = RunLayer(ctx, m, w, dt, RoutingMode::kGate, ctx.world_rank * t, t, 5, /*steps=*/2, MyGpu(ctx));
    ASSERT_TRUE(r.ok()) << "waves " << w << ": " << r.status();
    auto v = VerifyAgainstReference(cfg, *weights, *batch, r->out.data());
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(v->passed) << "waves " << w << ": max normalized error " << v->max_normalized << " > " << v->tolerance
                           << " at token " << v->worst_token;
    if (base.empty()) {
      base = r->out;
    } else {
      EXPECT_EQ(0, std::memcmp(base.data(), r->out.data(), base.size() * sizeof(float))) << "waves " << w;
    }
  }
  // Every CPU output element is within the same scale of the device's: a loose sanity bound that names the first bad
  // element (the reference check above is the real criterion).
  auto cpu = RunLayer(ctx, m, 1, dt, RoutingMode::kGate, ctx.world_rank * t, t);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  double num = 0, den = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    num += (base[i] - cpu->out[i]) * (base[i] - cpu->out[i]);
    den += cpu->out[i] * cpu->out[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-2) << "relative L2 distance between the CUDA and CPU layers";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaLayerTest, ::testing::Values("bf16", "fp8"));

TEST(Layer, SkewedRoutingLeavesExpertsAndRanksEmpty) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  auto batch = MakeSyntheticBatch(m, RoutingMode::kSkewed, 5, 0, 64);
  ASSERT_TRUE(batch.ok());
  std::vector<int> count(m.num_experts, 0);
  for (int32_t e : batch->topk_idx) count[e]++;
  EXPECT_GE(count[0], 32);                                                         // half the tokens on expert 0
  for (int e = m.num_experts / 2; e < m.num_experts; ++e) EXPECT_EQ(count[e], 0);  // upper half unused
  // With >= 2 ranks the upper ranks receive nothing at all, and the layer still computes the right output.
  const int64_t t = 64;
  auto run = RunLayer(ctx, m, 2, DType::kBF16, RoutingMode::kSkewed, ctx.world_rank * t, t);
  ASSERT_TRUE(run.ok()) << run.status();
  auto mine = MakeSyntheticBatch(m, RoutingMode::kSkewed, 5, ctx.world_rank * t, t);
  ASSERT_TRUE(mine.ok());
  LayerConfig cfg;
  cfg.model = m;
  auto v = VerifyAgainstReference(cfg, *MakeSyntheticWeights(m, 5), *mine, run->out.data());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->passed) << v->max_normalized << " > " << v->tolerance;
  if (ctx.world_size >= 2 && ctx.world_rank == ctx.world_size - 1) {
    EXPECT_EQ(run->stats.recv_rows, 0);
  }
}

TEST(Layer, ZeroTokensOnSomeRanks) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  // Odd ranks have no tokens; even ranks have 16.
  const int64_t t = ctx.world_rank % 2 ? 0 : 16;
  int64_t first = 0;
  for (int r = 0; r < ctx.world_rank; ++r) first += r % 2 ? 0 : 16;
  auto run = RunLayer(ctx, m, 2, DType::kBF16, RoutingMode::kUniform, first, t);
  ASSERT_TRUE(run.ok()) << run.status();
  LayerConfig cfg;
  cfg.model = m;
  auto batch = MakeSyntheticBatch(m, RoutingMode::kUniform, 5, first, t);
  auto v = VerifyAgainstReference(cfg, *MakeSyntheticWeights(m, 5), *batch, run->out.data());
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->passed);
}

// A tiny layer on the mpi backend (20 s timeout), this rank's 8 tokens and room for their output, for the bad-batch
// tests; the last rank is the one that spoils its batch.
struct SmallStep {
  std::unique_ptr<comm::Communicator> comm;
  std::unique_ptr<MoeLayer> layer;
  TokenBatch batch;
  std::vector<float> out;
  int bad_rank = 0;
};
StatusOr<SmallStep> MakeSmallStep(const ProcessContext& ctx, const ModelConfig& m) {
  SmallStep step;
  WAVEEP_ASSIGN_OR_RETURN(step.comm, comm::CreateCommunicator("mpi", ctx));
  LayerConfig cfg;
  cfg.model = m;
  cfg.timeout = absl::Seconds(20);
  auto weights = MakeSyntheticWeights(m, 5);
  WAVEEP_ASSIGN_OR_RETURN(step.layer, MoeLayer::Create(ctx, step.comm.get(), cfg, *weights));
  WAVEEP_ASSIGN_OR_RETURN(step.batch, MakeSyntheticBatch(m, RoutingMode::kUniform, 5, ctx.world_rank * 8, 8));
  step.out.resize(8 * m.hidden_size);
  step.bad_rank = ctx.world_size - 1;
  return step;
}

TEST(Layer, OutOfRangeExpertFailsOnEveryRank) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  auto step = MakeSmallStep(ctx, m);
  ASSERT_TRUE(step.ok()) << step.status();
  const int bad_rank = step->bad_rank;
  if (ctx.world_rank == bad_rank) step->batch.topk_idx[5] = m.num_experts + 3;
  Status s = step->layer->Forward(step->batch, step->out.data(), nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat(m.num_experts + 3)));
  if (ctx.world_rank != bad_rank) {
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("rank ", bad_rank)));
  }
  // The layer is still usable after a rejected step.
  if (ctx.world_rank == bad_rank) step->batch.topk_idx[5] = 0;
  EXPECT_TRUE(step->layer->Forward(step->batch, step->out.data(), nullptr).ok());
}

// Global token ids place the shared expert's blocks: a batch whose ids are negative is refused on every rank (one
// rank's bad batch fails the step everywhere, as a routing error does), and the layer stays usable.
TEST(Layer, NegativeFirstTokenFailsOnEveryRank) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  auto step = MakeSmallStep(ctx, m);
  ASSERT_TRUE(step.ok()) << step.status();
  const bool bad = ctx.world_rank == step->bad_rank;
  if (bad) step->batch.first_token = -3;
  Status s = step->layer->Forward(step->batch, step->out.data(), nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  if (bad) {
    EXPECT_THAT(std::string(s.message()), HasSubstr("first_token=-3")) << s;
  }
  step->batch.first_token = ctx.world_rank * 8;
  EXPECT_TRUE(step->layer->Forward(step->batch, step->out.data(), nullptr).ok());
}

TEST(Layer, ConfigErrorsBeforeCommunication) {
  const ProcessContext& ctx = MpiTestContext();
  ModelConfig m = Tiny();
  LayerConfig cfg;
  cfg.model = m;
  cfg.num_waves = m.num_experts / ctx.world_size + 1;
  Status s = ValidateLayerConfig(cfg, ctx.world_size);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--waves"));
  cfg.num_waves = 1;
  EXPECT_THAT(std::string(ValidateLayerConfig(cfg, 3).message()), HasSubstr("not divisible"));
  cfg.model.hidden_size = 200;  // not a multiple of the FP8 block
  cfg.dispatch_dtype = DType::kFP8E4M3;
  EXPECT_THAT(std::string(ValidateLayerConfig(cfg, 1).message()), HasSubstr("FP8 block"));
}

TEST(Layer, DifferentConfigsAcrossRanksFail) {
  const ProcessContext& ctx = MpiTestContext();
  if (ctx.world_size < 2) GTEST_SKIP() << "needs 2 ranks";
  ModelConfig m = Tiny();
  auto comm = comm::CreateCommunicator("mpi", ctx);
  ASSERT_TRUE(comm.ok());
  LayerConfig cfg;
  cfg.model = m;
  cfg.num_waves = ctx.world_rank == 1 ? 2 : 1;
  auto layer = MoeLayer::Create(ctx, comm->get(), cfg, *MakeSyntheticWeights(m, 5));
  ASSERT_FALSE(layer.ok());
  EXPECT_THAT(std::string(layer.status().message()), HasSubstr("differs between ranks"));
}

TEST(Layer, TraceShowsCommOverlappingCompute) {
  const ProcessContext& ctx = MpiTestContext();
  if (ctx.world_size == 1) {
    // Every exchange is a local copy of microseconds: whether one lands inside a GEMM is up to the OS scheduler.
    GTEST_SKIP() << "one rank: nothing crosses a link, so there is no communication to overlap";
  }
  // Big enough that a GEMM takes milliseconds.
  ModelConfig m = Tiny();
  m.hidden_size = 512;
  m.moe_intermediate_size = 512;
  GlobalTracer().Clear();
  GlobalTracer().SetEnabled(true);
  auto run = RunLayer(ctx, m, 4 <= m.num_experts / ctx.world_size ? 4 : 2, DType::kBF16, RoutingMode::kUniform,
                      ctx.world_rank * 256, 256);
  GlobalTracer().SetEnabled(false);
  ASSERT_TRUE(run.ok()) << run.status();
  auto frags = GatherStrings(ctx, GlobalTracer().ToChromeEvents(ctx.world_rank));
  ASSERT_TRUE(frags.ok());
  if (ctx.world_rank == 0) {
    std::string path = ::testing::TempDir() + "/waveep_layer_trace.json";
    ASSERT_TRUE(WriteChromeTrace(path, *frags).ok());
    auto text = ReadFileToString(path);
    ASSERT_TRUE(text.ok());
    nlohmann::json j = nlohmann::json::parse(*text);
    // Per rank: thread names, then comm and compute spans; look for any overlapping pair.
    std::map<std::pair<int, int>, std::string> thread_names;
    for (const auto& e : j["traceEvents"])
      if (e["ph"] == "M" && e["name"] == "thread_name") thread_names[{e["pid"], e["tid"]}] = e["args"]["name"];
    std::set<std::string> names;
    bool overlap = false;
    std::vector<std::tuple<int, double, double>> comm_spans, compute_spans;
    for (const auto& e : j["traceEvents"]) {
      if (e["ph"] != "X") continue;
      names.insert(e["name"].get<std::string>());
      std::string row = thread_names[{e["pid"], e["tid"]}];
      double b = e["ts"], d = e["dur"];
      if (row == "comm") comm_spans.emplace_back(e["pid"], b, b + d);
      // Expert GEMMs, and the shared expert's halves (the first runs beside pack(0) / dispatch(0)).
      const std::string name = e["name"].get<std::string>();
      if (row == "compute" && (name.rfind("gemm", 0) == 0 || name.rfind("shared", 0) == 0))
        compute_spans.emplace_back(e["pid"], b, b + d);
    }
    for (auto& [p1, b1, e1] : comm_spans)
      for (auto& [p2, b2, e2] : compute_spans)
        if (p1 == p2 && b1 < e2 && b2 < e1) overlap = true;
    EXPECT_TRUE(overlap) << "no comm span overlaps a gemm or shared-expert span on any rank";
    EXPECT_TRUE(names.count("dispatch(0)") && names.count("gemm(0)") && names.count("combine(0)"));
  }
  EXPECT_GT(run->stats.compute_busy_us, 0);
  EXPECT_GT(run->stats.comm_busy_us, 0);
  GlobalTracer().Clear();
}

TEST(Layer, RealShapeQwen3DeterministicAcrossWaves) {
  const ProcessContext& ctx = MpiTestContext();
  if (ctx.world_size < 2) GTEST_SKIP() << "run at np >= 2 to keep weights per rank small";
  auto m = LoadModelConfig("qwen3-30b-a3b");
  ASSERT_TRUE(m.ok());
  const int64_t t = 8;
  for (RoutingMode routing : {RoutingMode::kUniform, RoutingMode::kSkewed}) {
    auto base = RunLayer(ctx, *m, 1, DType::kBF16, routing, ctx.world_rank * t, t);
    ASSERT_TRUE(base.ok()) << base.status();
    auto waves = RunLayer(ctx, *m, 8, DType::kBF16, routing, ctx.world_rank * t, t);
    ASSERT_TRUE(waves.ok()) << waves.status();
    EXPECT_EQ(0, std::memcmp(base->out.data(), waves->out.data(), base->out.size() * sizeof(float)));
    LayerConfig cfg;
    cfg.model = *m;
    auto batch = MakeSyntheticBatch(*m, routing, 5, ctx.world_rank * t, t);
    auto v = VerifyAgainstReference(cfg, *MakeSyntheticWeights(*m, 5), *batch, base->out.data());
    ASSERT_TRUE(v.ok());
    EXPECT_TRUE(v->passed) << v->max_normalized;
  }
}

TEST(PartitionWaves, BalancesRowsNotExperts) {
  auto b = PartitionWaves({100, 1, 1, 1, 1, 1, 1, 94}, 2);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, (std::vector<int>{0, 1, 8}));  // fat first expert alone
  auto even = PartitionWaves({10, 10, 10, 10}, 4);
  EXPECT_EQ(*even, (std::vector<int>{0, 1, 2, 3, 4}));
  auto empty = PartitionWaves({0, 0, 0, 0, 0, 0}, 3);
  EXPECT_EQ(*empty, (std::vector<int>{0, 2, 4, 6}));
  auto skew = PartitionWaves({0, 0, 50, 0, 0, 0}, 3);  // every wave keeps at least one expert
  ASSERT_TRUE(skew.ok());
  for (int w = 0; w < 3; ++w) EXPECT_LT((*skew)[w], (*skew)[w + 1]);
  EXPECT_FALSE(PartitionWaves({1, 2}, 3).ok());
  EXPECT_FALSE(PartitionWaves({1, 2}, 0).ok());
}

TEST(BusyUs, UnionOfIntervals) {
  std::vector<SpanRecord> s = {
      {"comm", "a", 0, 10}, {"comm", "b", 5, 15}, {"comm", "c", 20, 25}, {"compute", "d", 0, 100}};
  EXPECT_DOUBLE_EQ(BusyUs(s, "comm"), 20);
  EXPECT_DOUBLE_EQ(BusyUs(s, "compute"), 100);
}

}  // namespace
}  // namespace waveep::ep
