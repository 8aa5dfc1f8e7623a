// Copyright 2026 The waveep Authors.
// IWYU pragma: private
//
// Shared by `run` and `bench`: build a layer for a configuration, run warm-up + timed steps, aggregate across ranks.
#ifndef WAVEEP_EP_CLI_DRIVER_H_
#define WAVEEP_EP_CLI_DRIVER_H_

#include <memory>
#include <string>
#include <vector>

#include "ep/cli/cli.h"

namespace waveep::cli {

// Per timed step, aggregated over ranks: times are the max over ranks (a step ends when the slowest rank ends),
// efficiency the mean over ranks, FLOPs and bytes the sum over ranks.
struct StepSeries {
  std::vector<double> step_ms, layout_ms, compute_ms, comm_ms, efficiency;
  double flops_per_step = 0;            // all ranks
  double bytes_sent_per_step = 0;       // all ranks, to other ranks (dispatch + combine)
  double dispatch_bytes_per_step = 0;   // the dispatch part of it
  double internode_bytes_per_step = 0;  // the part that went to ranks on other nodes
  bool dedup = false;                   // dispatch deduplication in effect (MoeLayer::dedup())
  bool hierarchical = false;            // ... once per destination host (MoeLayer::hierarchical())
  int64_t max_rows_per_rank = 0;        // routed rows computed by the busiest rank
  ep::StepStats last_local;             // this rank's last step (spans for the trace)
};

struct RunPoint {
  ep::LayerConfig cfg;
  int64_t tokens_per_rank = 0;
  ep::RoutingMode routing = ep::RoutingMode::kGate;
  uint64_t seed = 1;
  int steps = 1;
  int warmup = 0;
  bool progress = true;  // per-step lines on stderr (rank 0) when steps are slow
  std::string label;     // prefix of progress lines
};

// Everything one configuration needs; `layer` keeps the weights so several steps reuse them.
struct Session {
  std::unique_ptr<comm::Communicator> comm;
  std::unique_ptr<ep::WeightSource> weights;
  std::unique_ptr<ep::MoeLayer> layer;
  ep::TokenBatch batch;
  std::vector<float> out;
};

// Creates communicator, weights, layer and this rank's batch (global tokens rank*T .. rank*T+T-1). Collective.
StatusOr<Session> OpenSession(const ProcessContext& ctx, const RunPoint& p, const std::string& backend);
// Runs p.warmup + p.steps steps on the session (output left in s.out). Collective.
StatusOr<StepSeries> RunSteps(const ProcessContext& ctx, Session& s, const RunPoint& p);

}  // namespace waveep::cli

#endif  // WAVEEP_EP_CLI_DRIVER_H_
