// Copyright 2026 The waveep Authors.
// IWYU pragma: private
//
// The waveep command line: `waveep run | bench | topo`. Flags are Abseil flags defined in flags.cc; each
// subcommand is one file exposing `int <Name>Main(const ProcessContext&, const std::vector<std::string>& args)`.
// Exit codes: 0 ok, 1 runtime error, 2 usage / configuration error, 3 verification or --strict check failed.
#ifndef WAVEEP_EP_CLI_CLI_H_
#define WAVEEP_EP_CLI_CLI_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/time/time.h"
#include "ep/ep.h"
#include "runtime/runtime.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int64_t, tokens_per_rank);
ABSL_DECLARE_FLAG(int, steps);
ABSL_DECLARE_FLAG(int, warmup);
ABSL_DECLARE_FLAG(std::string, dtype);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(bool, verify);
ABSL_DECLARE_FLAG(std::string, json);
ABSL_DECLARE_FLAG(int, waves);
ABSL_DECLARE_FLAG(std::string, routing);
ABSL_DECLARE_FLAG(std::string, backend);
ABSL_DECLARE_FLAG(double, timeout_s);
ABSL_DECLARE_FLAG(std::string, trace);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(int, blas_threads);
ABSL_DECLARE_FLAG(bool, shared_experts);
ABSL_DECLARE_FLAG(bool, dedup);
ABSL_DECLARE_FLAG(bool, dedup_hosts);
ABSL_DECLARE_FLAG(bool, quiet);
ABSL_DECLARE_FLAG(std::string, cluster);

namespace waveep::cli {

enum ExitCode { kOk = 0, kError = 1, kUsage = 2, kCheckFailed = 3 };

// Exit code for a Status: InvalidArgument / NotFound / FailedPrecondition (bad input) -> kUsage, else kError.
int ExitCodeFor(const Status& s);

// Prints "waveep <cmd>: error: <message>" on rank 0 only (every rank has the same message by construction). A
// job-fatal error (IsJobFatal: a timeout, a lost peer) is seen by some ranks only: it is printed by each rank that
// has it, naming the rank, and the job ends kJobFatalGrace later (AbortAllRanks(kError): every rank exits, mpirun
// returns non-zero) — this call then does not return.
void ReportError(const ProcessContext& ctx, absl::string_view cmd, const Status& s);

// Returns the layer configuration the flags describe (model loaded, dtype parsed, waves, device), validated for
// `num_ranks`.
StatusOr<ep::LayerConfig> LayerConfigFromFlags(const ProcessContext& ctx);
// What run and bench print for the dispatch a layer does: "off", "rank" (once per destination rank) or "host" (once
// per destination host, forwarded inside it): MoeLayer::dedup() and hierarchical().
inline const char* DedupModeName(bool dedup, bool hierarchical) {
  return !dedup ? "off" : hierarchical ? "host" : "rank";
}
// How long a rank that reports a job-fatal error waits before it aborts the job, so that the other ranks that saw the
// same failure (a dead peer: every rank that talked to it, within ~100 ms) print their own line first.
inline constexpr absl::Duration kJobFatalGrace = absl::Milliseconds(500);

// --timeout_s must be finite, > 0 and at most kMaxTimeoutS (a day: a wait longer than that is a hang to report).
inline constexpr double kMaxTimeoutS = 86400;
Status CheckTimeoutFlag();
// --device: cpu; cuda (the GPU of this rank's local rank, modulo the visible GPUs); cuda:N (that GPU, checked when the
// layer is created). InvalidArgument for anything else.
StatusOr<Device> DeviceFromFlag(const ProcessContext& ctx);

// BLAS threads per rank from --blas_threads (0 = auto: cores per rank minus one for the comm thread, at least 1).
int ChooseBlasThreads(const ProcessContext& ctx);

// "  --name   help (default: value)" lines for the named flags, in order (unknown names skipped), the name padded to
// `width` columns. Every subcommand's --help lists its flags with it.
std::string FlagsHelp(const std::vector<std::string>& names, int width);

// Canonical text of every flag that must agree across ranks (hashed by CheckSameOnAllRanks).
std::string CanonicalFlags();

// Writes `text` to `path` (rank 0 callers only).
Status WriteTextFile(const std::string& path, const std::string& text);

int RunMain(const ProcessContext& ctx);
int BenchMain(const ProcessContext& ctx);
int TopoMain(const ProcessContext& ctx, const std::vector<std::string>& args);

}  // namespace waveep::cli

#endif  // WAVEEP_EP_CLI_CLI_H_
