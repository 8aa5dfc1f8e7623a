// Copyright 2026 The waveep Authors.
// IWYU pragma: private
#ifndef WAVEEP_EP_CLI_BENCH_INTERNAL_H_
#define WAVEEP_EP_CLI_BENCH_INTERNAL_H_

#include <memory>
#include <string>
#include <vector>

#include "ep/cli/cli.h"

namespace waveep::cli {

struct BenchRow {
  std::string model;
  int ranks = 0;
  int nodes = 1;  // hosts the ranks span (MPI's shared-memory domains)
  int64_t tokens_per_rank = 0;
  std::string dtype;
  int waves = 1;
  bool dedup = true;         // dispatch deduplication in effect (MoeLayer::dedup())
  bool dedup_hosts = false;  // ... once per destination host (MoeLayer::hierarchical())
  double step_ms_median = 0, step_ms_min = 0, step_ms_max = 0;
  double speedup = 0;  // W=1 median (same dedup setting) / this median, same run
  double compute_ms = 0, comm_ms = 0, overlap_efficiency = 0;
  double tflops = 0, gbps_per_rank = 0;
  double predicted_ms = 0;           // topology model (0 when no --cluster)
  double mb_per_step = 0;            // bytes all ranks sent to other ranks per step (dispatch + combine), MB
  double dispatch_mb_per_step = 0;   // the dispatch part
  double internode_mb_per_step = 0;  // the part that crossed to other nodes
};

std::string FormatBenchTable(const std::vector<BenchRow>& rows, int blas_threads);
std::string BenchCsv(const std::vector<BenchRow>& rows);
std::string BenchJsonRows(const std::vector<BenchRow>& rows);

// Predicted step time from the topology model for a layer config on a cluster description.
class Predictor {
 public:
  virtual ~Predictor() = default;
  virtual StatusOr<double> StepMs(const ep::LayerConfig& cfg, int64_t tokens_per_rank, int waves, int ranks) = 0;
};
// nullptr when `cluster_path` is empty.
StatusOr<std::unique_ptr<Predictor>> MakePredictor(const std::string& cluster_path, const ProcessContext& ctx);

}  // namespace waveep::cli

#endif  // WAVEEP_EP_CLI_BENCH_INTERNAL_H_
