// Copyright 2026 The waveep Authors.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "ep/cli/cli.h"
#include "ep/cli/flag_values.h"

namespace waveep::cli {

int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return kOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return kUsage;
    default:
      return kError;
  }
}

void ReportError(const ProcessContext& ctx, absl::string_view cmd, const Status& s) {
  if (IsJobFatal(s)) {
    // Seen by this rank only, and peers may be stopped or gone: say it from here and end every rank now (mpirun
    // returns non-zero) instead of finalizing MPI, which would wait for them.
    const std::string msg(s.message());
    const std::string who = absl::StrCat("rank ", ctx.world_rank, "/", ctx.world_size);
    std::fprintf(stderr, "waveep %s: error: %s%s; ending the job\n", std::string(cmd).c_str(),
                 absl::StartsWith(msg, "rank ") ? "" : absl::StrCat(who, ": ").c_str(), msg.c_str());
    std::fflush(stderr);
    // The other ranks that saw it (a dead peer is seen by every rank that talked to it, within ~100 ms) get a moment
    // to say so too before the abort ends them: each line names what that rank waited for.
    absl::SleepFor(kJobFatalGrace);
    AbortAllRanks(kError);
  }
  if (ctx.world_rank != 0) return;
  std::fprintf(stderr, "waveep %s: error: %s\n", std::string(cmd).c_str(), std::string(s.message()).c_str());
  std::fflush(stderr);
}

Status CheckTimeoutFlag() {
  const double t = absl::GetFlag(FLAGS_timeout_s);
  if (!(t > 0) || !(t <= kMaxTimeoutS)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--timeout_s must be in (0, ", kMaxTimeoutS, "] seconds (one day), got ", t));
  }
  return absl::OkStatus();
}

StatusOr<Device> DeviceFromFlag(const ProcessContext& ctx) {
  return ParseDeviceFlag(absl::GetFlag(FLAGS_device), ctx.local_rank, CudaDeviceCount());
}

StatusOr<ep::LayerConfig> LayerConfigFromFlags(const ProcessContext& ctx) {
  const int num_ranks = ctx.world_size;
  ep::LayerConfig cfg;
  WAVEEP_ASSIGN_OR_RETURN(cfg.model, LoadModelConfig(absl::GetFlag(FLAGS_model)));
  WAVEEP_ASSIGN_OR_RETURN(cfg.dispatch_dtype, ParseDType(absl::GetFlag(FLAGS_dtype)));
  cfg.num_waves = absl::GetFlag(FLAGS_waves);
  cfg.shared_experts = absl::GetFlag(FLAGS_shared_experts);
  cfg.dedup = absl::GetFlag(FLAGS_dedup);
  cfg.dedup_hosts = absl::GetFlag(FLAGS_dedup_hosts);
  WAVEEP_ASSIGN_OR_RETURN(cfg.device, DeviceFromFlag(ctx));
  if (absl::GetFlag(FLAGS_tokens_per_rank) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tokens_per_rank must be >= 0, got ", absl::GetFlag(FLAGS_tokens_per_rank)));
  }
  if (absl::GetFlag(FLAGS_steps) < 1) return absl::InvalidArgumentError("--steps must be >= 1");
  if (absl::GetFlag(FLAGS_warmup) < 0) return absl::InvalidArgumentError("--warmup must be >= 0");
  WAVEEP_RETURN_IF_ERROR(ep::ParseRoutingMode(absl::GetFlag(FLAGS_routing)).status());
  cfg.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  WAVEEP_RETURN_IF_ERROR(ep::ValidateLayerConfig(cfg, num_ranks));
  WAVEEP_RETURN_IF_ERROR(ep::CheckLayerFitsInMemory(cfg, num_ranks, absl::GetFlag(FLAGS_tokens_per_rank)));
  return cfg;
}

std::string FlagsHelp(const std::vector<std::string>& names, int width) {
  std::string s;
  for (const std::string& n : names) {
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(n);
    if (f == nullptr) continue;
    absl::StrAppendFormat(&s, "  --%-*s %s (default: %s)\n", width, n, f->Help(),
                          f->DefaultValue().empty() ? "\"\"" : f->DefaultValue());
  }
  return s;
}

int ChooseBlasThreads(const ProcessContext& ctx) {
  int flag = absl::GetFlag(FLAGS_blas_threads);
  if (flag > 0) return flag;
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int per_rank = std::max(1, cores / std::max(1, ctx.local_size));
  return std::max(1, per_rank - 1);
}

Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  out << text;
  if (!out) return absl::DataLossError(absl::StrCat("write error on ", path));
  return absl::OkStatus();
}

}  // namespace waveep::cli
