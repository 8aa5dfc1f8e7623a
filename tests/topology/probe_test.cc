// Copyright 2026 The waveep Authors.
//
// ProbeCluster under mpirun (np 2 and 4): a short sweep produces a valid cluster, the same on every rank, that
// round-trips through JSON and that the check and the model accept.
#include <mpi.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/mpi_context.h"
#include "tests/common/mpi_test_main.h"
#include "topology/topology.h"

namespace waveep::topology {
namespace {

using ::testing::HasSubstr;

ProbeOptions FastOptions() {
  ProbeOptions o;
  o.min_bytes = 1024;
  o.max_bytes = 16384;
  o.iters = 2;
  o.warmup = 1;
  o.round_min_ms = 0.2;
  o.pair_bytes = 65536;
  o.pair_iters = 2;
  o.gemm_max_rows = 8;
  o.gemm_min_ms = 2;
  o.blas_threads = 1;
  o.timeout = absl::Seconds(30);
  return o;
}

// True on every rank iff `x` is the same on every rank.
bool SameEverywhere(const ProcessContext& ctx, double x) {
  double lo = 0, hi = 0;
  MPI_Allreduce(&x, &lo, 1, MPI_DOUBLE, MPI_MIN, WorldComm(ctx));
  MPI_Allreduce(&x, &hi, 1, MPI_DOUBLE, MPI_MAX, WorldComm(ctx));
  return lo == hi;
}

TEST(Probe, ProducesAClusterThatCheckAndModelAccept) {
  const ProcessContext& ctx = waveep::testing::MpiTestContext();
  auto model = LoadModelConfig("tiny");
  ASSERT_TRUE(model.ok());
  int lines = 0;
  ProbeOptions o = FastOptions();
  o.progress = [&lines](absl::string_view) { ++lines; };
  auto c = ProbeCluster(ctx, *model, o);
  ASSERT_TRUE(c.ok()) << c.status();
  // Progress lines reach rank 0's callback only.
  EXPECT_EQ(lines > 3, ctx.world_rank == 0) << lines;

  EXPECT_TRUE(c->probed());
  EXPECT_EQ(c->num_devices(), ctx.world_size);
  EXPECT_EQ(c->num_nodes, 1);
  EXPECT_EQ(c->device.kind, "cpu");
  EXPECT_EQ(c->device.gemm_dtype, "f32");  // honest: the CPU computes in FP32
  ASSERT_EQ(c->device.compute_tflops.count("f32"), 1u);
  EXPECT_GT(c->device.compute_tflops.at("f32"), 0);
  EXPECT_EQ(c->device.gemm_efficiency.rows, (std::vector<double>{1, 2, 4, 8}));
  for (double e : c->device.gemm_efficiency.efficiency) {
    EXPECT_GT(e, 0);
    EXPECT_LE(e, 1);
  }
  EXPECT_EQ(c->device.convert_gbps.size(), 4u);
  // Interference is measured with two ranks or more (an exchange needs a peer), and is a slowdown factor.
  if (ctx.world_size == 1) {
    EXPECT_EQ(c->device.overlap_compute_speed, 0);
    EXPECT_EQ(c->device.overlap_comm_speed, 0);
  } else {
    EXPECT_GT(c->device.overlap_compute_speed, 0);
    EXPECT_LE(c->device.overlap_compute_speed, 1);
    EXPECT_GT(c->device.overlap_comm_speed, 0);
    EXPECT_LE(c->device.overlap_comm_speed, 1);
    EXPECT_TRUE(SameEverywhere(ctx, c->device.overlap_compute_speed));
  }
  const ProbeInfo& p = *c->probe;
  EXPECT_EQ(p.ranks, ctx.world_size);
  EXPECT_EQ(p.pairs.size(), static_cast<size_t>(ctx.world_size * (ctx.world_size - 1) / 2));
  for (const PairMeasurement& m : p.pairs) {
    EXPECT_EQ(m.kind, "shm");
    EXPECT_GT(m.latency_us, 0);
    EXPECT_GT(m.uni_gbps, 0);
    EXPECT_GT(m.bidir_gbps, 0);
  }
  ASSERT_TRUE(p.alltoall.has_value());
  ASSERT_EQ(p.alltoall->points.size(), 5u);  // 1, 2, 4, 8, 16 KiB
  for (const AlltoallPoint& q : p.alltoall->points) {
    EXPECT_GT(q.comm_avg_us, 0);
    EXPECT_LE(q.comm_min_us, q.comm_avg_us);
    EXPECT_GE(q.comm_max_us, q.comm_avg_us);
    EXPECT_GT(q.mpi_avg_us, 0);
    EXPECT_GT(q.async_avg_us, 0);
    EXPECT_GE(q.comm_spread, 0);
    EXPECT_GE(q.mpi_spread, 0);
    EXPECT_NE(q.CompareWithMpi(), AlltoallPoint::VersusMpi::kNotCompared);
  }
  // Links: shm ports (one per rank) and loopbacks.
  int shm = 0, loop = 0;
  for (const Link& l : c->links) {
    shm += l.kind == LinkKind::kShm;
    loop += l.kind == LinkKind::kLoopback;
  }
  EXPECT_EQ(shm, ctx.world_size);
  EXPECT_EQ(loop, ctx.world_size);

  // Every rank holds the same measurements.
  EXPECT_TRUE(SameEverywhere(ctx, c->device.compute_tflops.at("f32")));
  EXPECT_TRUE(SameEverywhere(ctx, c->links.front().bw_gbps));
  EXPECT_TRUE(SameEverywhere(ctx, p.alltoall->points.back().comm_avg_us));

  // The file the CLI writes reads back, and check/model accept it.
  auto back = ParseCluster(ClusterToJson(*c), "probed.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->probed());
  ASSERT_TRUE(back->probe->alltoall.has_value());
  EXPECT_EQ(back->probe->alltoall->points.size(), 5u);
  CheckOptions co;
  co.dispatch_dtype = DType::kBF16;
  co.tokens_per_rank = 128;
  auto rep = CheckBalance(*model, *back, co);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(rep->num_ranks, ctx.world_size);
  EXPECT_EQ(rep->gemm_dtype, "f32");
  EXPECT_FALSE(rep->links.empty());
  StepShape s;
  s.tokens_per_rank = 128;
  auto pred = PredictStep(*model, *back, s);
  ASSERT_TRUE(pred.ok()) << pred.status();
  EXPECT_THAT(pred->comm_source, HasSubstr("measured all-to-all"));
  EXPECT_GT(pred->t_seq_us, 0);
}

TEST(Probe, BadOptionsFailOnEveryRankBeforeMeasuring) {
  const ProcessContext& ctx = waveep::testing::MpiTestContext();
  auto model = LoadModelConfig("tiny");
  ASSERT_TRUE(model.ok());
  ProbeOptions o = FastOptions();
  o.max_bytes = 10;  // below min_bytes
  Status s = ProbeCluster(ctx, *model, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--probe_max_bytes"));
  o = FastOptions();
  o.backend = "carrier-pigeon";
  s = ProbeCluster(ctx, *model, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  o = FastOptions();
  o.compare_backends = {"mpi", "smoke-signals"};
  s = ProbeCluster(ctx, *model, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--probe_compare"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("smoke-signals"));
  o = FastOptions();
  o.compare_backends = {"mpi", "mpi"};
  s = ProbeCluster(ctx, *model, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--probe_compare names 'mpi' twice"));
}

// Other backends beside the probed one: every sweep point carries their times (same buffers, same rounds), and they
// round-trip through the cluster file.
TEST(Probe, ComparesOtherBackendsInTheSweep) {
  const ProcessContext& ctx = waveep::testing::MpiTestContext();
  auto model = LoadModelConfig("tiny");
  ASSERT_TRUE(model.ok());
  ProbeOptions o = FastOptions();
  o.max_bytes = 4096;
  o.compare_backends = {"mpi"};
  auto c = ProbeCluster(ctx, *model, o);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->probe->alltoall.has_value());
  ASSERT_EQ(c->probe->alltoall->points.size(), 3u);  // 1, 2, 4 KiB
  for (const AlltoallPoint& q : c->probe->alltoall->points) {
    ASSERT_EQ(q.others.size(), 1u);
    EXPECT_EQ(q.others[0].backend, "mpi");
    EXPECT_GT(q.others[0].median_us, 0);
    EXPECT_GE(q.others[0].spread, 0);
    EXPECT_TRUE(SameEverywhere(ctx, q.others[0].median_us));
  }
  auto back = ParseCluster(ClusterToJson(*c), "probed.json");
  ASSERT_TRUE(back.ok()) << back.status();
  const AlltoallPoint& last = back->probe->alltoall->points.back();
  ASSERT_EQ(last.others.size(), 1u);
  EXPECT_EQ(last.others[0].backend, "mpi");
  EXPECT_DOUBLE_EQ(last.others[0].median_us, c->probe->alltoall->points.back().others[0].median_us);
}

}  // namespace
}  // namespace waveep::topology
