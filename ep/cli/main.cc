// Copyright 2026 The waveep Authors.
//
// waveep — expert-parallel MoE runtime. `mpirun -np N waveep run|bench|topo [flags]`.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ep/cli/cli.h"
#include "runtime/mpi_context.h"

namespace {

constexpr const char* kUsage =
    "waveep — distributed expert-parallel MoE runtime with a wave scheduler\n"
    "\n"
    "usage: mpirun -np N waveep <command> [--flag=value ...]\n"
    "\n"
    "commands:\n"
    "  run     run MoE layer steps on a model preset, optionally verify, report times (and --json)\n"
    "  bench   sweep waves x tokens x models; table on stdout, --csv / --json files\n"
    "  topo    topology: `topo check`, `topo model`, `topo probe`, `topo tune` (see `waveep topo --help`)\n"
    "\n"
    "`waveep <command> --help` lists that command's flags. Example:\n"
    "  mpirun -np 4 --oversubscribe waveep run --model=tiny --verify --json=out.json\n";

// Flags shown by `waveep run --help`, in this order.
const std::vector<std::string> kRunFlags = {
    "model",          "tokens_per_rank", "steps",       "warmup",     "dtype",
    "waves",          "routing",         "seed",        "verify",     "json",
    "trace",          "backend",         "device",      "timeout_s",  "blas_threads",
    "shared_experts", "dedup",           "dedup_hosts", "checkpoint", "layer",
    "input",          "output",          "quiet"};

bool IsRankZero() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}) {
    if (const char* s = std::getenv(v); s != nullptr) return std::atoi(s) == 0;
  }
  return true;
}

void PrintFlags(const std::vector<std::string>& names) {
  std::fputs(waveep::cli::FlagsHelp(names, 18).c_str(), stdout);
}

}  // namespace

namespace waveep::cli {
// Defined by the subcommands; listed here so --help can print them.
std::vector<std::string> BenchFlagNames();
std::string TopoUsage();
}  // namespace waveep::cli

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    if (IsRankZero()) std::fputs(kUsage, stdout);
    return argc < 2 ? waveep::cli::kUsage : 0;
  }
  const std::string cmd = argv[1];
  if (cmd != "run" && cmd != "bench" && cmd != "topo") {
    if (IsRankZero()) std::fprintf(stderr, "waveep: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return waveep::cli::kUsage;
  }
  // --help for a subcommand is answered before MPI starts.
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      if (!IsRankZero()) return 0;
      if (cmd == "run") {
        std::printf(
            "usage: mpirun -np N waveep run [flags]\n\nRuns MoE layer steps -- synthetic weights and tokens "
            "(deterministic from --seed), or a checkpoint's layer (--checkpoint, --layer) on your hidden states "
            "(--input, --output) -- and prints a summary on rank 0.\n\nflags:\n");
        PrintFlags(kRunFlags);
      } else if (cmd == "bench") {
        std::printf(
            "usage: mpirun -np N waveep bench [flags]\n\nSweeps --waves_list x --tokens_list x --models; "
            "each point: warm-up + repeated steps, speedup vs waves=1 measured in the same run.\n\n"
            "flags:\n");
        PrintFlags(waveep::cli::BenchFlagNames());
      } else {
        std::fputs(waveep::cli::TopoUsage().c_str(), stdout);
      }
      return 0;
    }
  }
  // Abseil parses everything after the subcommand (and positional words for `topo`).
  std::vector<char*> args;
  args.push_back(argv[0]);
  for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
  int n = static_cast<int>(args.size());
  char** av = args.data();
  std::vector<char*> positional_c = absl::ParseCommandLine(n, av);
  std::vector<std::string> positional(positional_c.begin() + 1, positional_c.end());

  if (waveep::Status t = waveep::cli::CheckTimeoutFlag(); !t.ok()) {
    if (IsRankZero()) std::fprintf(stderr, "waveep %s: error: %s\n", cmd.c_str(), std::string(t.message()).c_str());
    return waveep::cli::kUsage;
  }
  auto ctx = waveep::InitProcess(&argc, &argv);
  if (!ctx.ok()) {
    // Every rank prints (a launch that MPI and the launcher see differently may fail on any of them).
    std::fprintf(stderr, "waveep: error: %s\n", std::string(ctx.status().message()).c_str());
    return waveep::cli::ExitCodeFor(ctx.status());
  }
  if (!ctx->launch_note.empty()) std::fprintf(stderr, "waveep: note: %s\n", ctx->launch_note.c_str());
  waveep::SetDefaultTimeout(absl::Seconds(absl::GetFlag(FLAGS_timeout_s)));
  int rc = waveep::cli::kUsage;
  try {
    if (cmd == "run") {
      if (!positional.empty()) {
        if (ctx->world_rank == 0)
          std::fprintf(stderr, "waveep run: error: unexpected argument '%s'\n", positional[0].c_str());
      } else {
        rc = waveep::cli::RunMain(*ctx);
      }
    } else if (cmd == "bench") {
      rc = waveep::cli::BenchMain(*ctx);
    } else {
      rc = waveep::cli::TopoMain(*ctx, positional);
    }
  } catch (const std::exception& e) {
    // Sizes are checked before they are allocated; this is the backstop (e.g. memory taken by someone else meanwhile).
    // Only this rank knows: report it and end the job rather than leave the others waiting (Aborted is job-fatal:
    // ReportError prints it here and aborts every rank).
    waveep::cli::ReportError(
        *ctx, cmd,
        absl::AbortedError(
            absl::StrCat(dynamic_cast<const std::bad_alloc*>(&e) != nullptr ? "out of host memory: " : "", e.what())));
  }
  waveep::FinalizeProcess();
  return rc;
}
