// Copyright 2026 The waveep Authors.
//
// Bridges `waveep bench --cluster=FILE` to the topology performance model: the predicted step time of each
// (model, tokens, waves) point is printed next to the measured one.
#include "ep/cli/bench_internal.h"
#include "topology/topology.h"

namespace waveep::cli {
namespace {

class TopologyPredictor final : public Predictor {
 public:
  explicit TopologyPredictor(topology::Cluster cluster, int blas_threads)
      : cluster_(std::move(cluster)), blas_threads_(blas_threads) {}

  StatusOr<double> StepMs(const ep::LayerConfig& cfg, int64_t tokens_per_rank, int waves, int ranks) override {
    topology::StepShape shape;
    shape.tokens_per_rank = tokens_per_rank;
    shape.dispatch_dtype = cfg.dispatch_dtype;
    shape.num_ranks = ranks;
    shape.max_waves = waves;
    shape.shared_experts = cfg.shared_experts;
    shape.dedup = cfg.dedup;
    shape.dedup_hosts = cfg.dedup_hosts;
    shape.blas_threads = blas_threads_;
    WAVEEP_ASSIGN_OR_RETURN(topology::Prediction p, topology::PredictStep(cfg.model, cluster_, shape));
    if (static_cast<int>(p.waves.size()) < waves)
      return absl::InternalError(
          absl::StrCat("topology model returned ", p.waves.size(), " wave counts, need ", waves));
    return p.waves[waves - 1].step_us * 1e-3;
  }

 private:
  topology::Cluster cluster_;
  int blas_threads_;
};

}  // namespace

StatusOr<std::unique_ptr<Predictor>> MakePredictor(const std::string& cluster_path, const ProcessContext& ctx) {
  if (cluster_path.empty()) return std::unique_ptr<Predictor>();
  WAVEEP_ASSIGN_OR_RETURN(topology::Cluster cluster, topology::LoadCluster(cluster_path));
  return std::unique_ptr<Predictor>(new TopologyPredictor(std::move(cluster), ChooseBlasThreads(ctx)));
}

}  // namespace waveep::cli
