// Copyright 2026 The waveep Authors.
#include "runtime/context.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/time/clock.h"
#include "runtime/stream.h"
#include "runtime/trace.h"
#include "runtime/types.h"

namespace waveep {
namespace {
ProcessContext* g_ctx = nullptr;

// Completes a non-blocking collective within DefaultTimeout(). On expiry the request is left to MPI (a collective
// cannot be cancelled) and the caller must not free its buffers before the job ends: the error is job-fatal
// (DeadlineExceeded), and the CLI aborts every rank right after printing it.
Status WaitCollective(const ProcessContext& ctx, MPI_Request* req, absl::string_view what) {
  const absl::Duration timeout = DefaultTimeout();
  const absl::Time deadline = absl::Now() + timeout;
  for (int polls = 0;; ++polls) {
    int done = 0;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Test(req, &done, MPI_STATUS_IGNORE));
    if (done) return absl::OkStatus();
    if (polls > 1000) {
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            DiagnosticPrefix(), ": ", what, " timed out after ", absl::FormatDuration(timeout),
            "; at least one of the ", ctx.world_size, " ranks has not entered it (stopped, hung, or died)"));
      }
      absl::SleepFor(absl::Microseconds(50));
    }
  }
}
}  // namespace

bool IsJobFatal(const Status& s) {
  return s.code() == absl::StatusCode::kDeadlineExceeded || s.code() == absl::StatusCode::kAborted;
}

StatusOr<ProcessContext> InitProcess(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = 0;
  if (!initialized) {
    // NOTES: Open MPI's TCP transport emulates RDMA put by default, and then every chunk of a large message from A
    // to B waits for a control message from B that queues behind B's own bulk data to A on the same connection: two
    // ranks exchanging back to back take turns instead of using both directions of the link (`topo probe` on a 1
    // Gbit/s emulated link: both directions together 0.123-0.133 GB/s with put, 0.239 GB/s without; docs/perf/
    // cluster-2026-11-29 §1). Plain send/receive keeps both directions busy. Only the TCP transport reads this flag,
    // and a value the user set (OMPI_MCA_btl_tcp_flags, mpirun --mca btl_tcp_flags ...) is kept.
    setenv("OMPI_MCA_btl_tcp_flags", "send", /*overwrite=*/0);
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  } else {
    MPI_Query_thread(&provided);
  }
  if (provided < MPI_THREAD_MULTIPLE) {
    return absl::FailedPreconditionError(absl::StrCat("MPI provides thread level ", provided,
                                                      " but waveep needs MPI_THREAD_MULTIPLE (", MPI_THREAD_MULTIPLE,
                                                      "): comm and compute streams call MPI from different threads"));
  }
  ProcessContext ctx;
  ctx.thread_level = provided;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_dup(MPI_COMM_WORLD, &ctx.world));
  // Errors come back as codes so they become Statuses instead of aborting inside MPI.
  MPI_Comm_set_errhandler(ctx.world, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_rank(ctx.world, &ctx.world_rank));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_size(ctx.world, &ctx.world_size));
  WAVEEP_MPI_RETURN_IF_ERROR(
      MPI_Comm_split_type(ctx.world, MPI_COMM_TYPE_SHARED, ctx.world_rank, MPI_INFO_NULL, &ctx.node));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_rank(ctx.node, &ctx.local_rank));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_size(ctx.node, &ctx.local_size));
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  ctx.hostname = host;

  // Node id: leaders (local rank 0) number themselves in world-rank order; everyone learns its leader's id.
  int is_leader = ctx.local_rank == 0 ? 1 : 0;
  int leaders_before = 0;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Exscan(&is_leader, &leaders_before, 1, MPI_INT, MPI_SUM, ctx.world));
  if (ctx.world_rank == 0) leaders_before = 0;  // MPI_Exscan leaves rank 0's result undefined
  int node_id = leaders_before;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Bcast(&node_id, 1, MPI_INT, 0, ctx.node));
  ctx.node_id = node_id;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&is_leader, &ctx.num_nodes, 1, MPI_INT, MPI_SUM, ctx.world));

  // The launcher's local rank, when present, must agree with MPI's view (it decides GPU binding).
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MV2_COMM_WORLD_LOCAL_RANK"}) {
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') {
      int launcher_local = std::atoi(v);
      if (launcher_local != ctx.local_rank && std::strcmp(var, "SLURM_LOCALID") != 0) {
        return absl::InternalError(absl::StrCat(var, "=", launcher_local, " disagrees with MPI's local rank ",
                                                ctx.local_rank, " on ", ctx.hostname));
      }
      break;
    }
  }
  SetDiagnosticPrefix(absl::StrCat("rank ", ctx.world_rank, "/", ctx.world_size));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Barrier(ctx.world));
  ResetTraceEpoch();
  delete g_ctx;
  g_ctx = new ProcessContext(ctx);
  return ctx;
}

void FinalizeProcess() {
  if (g_ctx != nullptr) {
    if (g_ctx->node != MPI_COMM_NULL) MPI_Comm_free(&g_ctx->node);
    if (g_ctx->world != MPI_COMM_NULL) MPI_Comm_free(&g_ctx->world);
    delete g_ctx;
    g_ctx = nullptr;
  }
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

void AbortAllRanks(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

Status CheckSameOnAllRanks(const ProcessContext& ctx, absl::string_view what, absl::string_view bytes) {
  unsigned long long h = Fnv1a64(bytes.data(), bytes.size());
  std::vector<unsigned long long> all(ctx.world_size);
  MPI_Request req = MPI_REQUEST_NULL;
  WAVEEP_MPI_RETURN_IF_ERROR(
      MPI_Iallgather(&h, 1, MPI_UNSIGNED_LONG_LONG, all.data(), 1, MPI_UNSIGNED_LONG_LONG, ctx.world, &req));
  WAVEEP_RETURN_IF_ERROR(WaitCollective(ctx, &req, absl::StrCat("checking that ", what, " is the same on all ranks")));
  std::string differ;
  for (int r = 1; r < ctx.world_size; ++r) {
    if (all[r] != all[0]) absl::StrAppend(&differ, differ.empty() ? "" : ", ", r);
  }
  if (differ.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " differs between ranks: rank(s) ", differ,
                                                 " disagree with rank 0 (launch every rank with the same flags "
                                                 "and config files)"));
}

Status AgreeOnStatus(const ProcessContext& ctx, const Status& local) {
  // A timeout means a peer may be stopped or gone: waiting for it to agree would hang. Report it from here; the CLI
  // prints it on this rank and aborts the job (IsJobFatal).
  if (IsJobFatal(local)) return local;
  const std::string what = "the agreement on every rank's status";
  int my_fail = local.ok() ? ctx.world_size : ctx.world_rank;
  int first_fail = ctx.world_size;
  MPI_Request req = MPI_REQUEST_NULL;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Iallreduce(&my_fail, &first_fail, 1, MPI_INT, MPI_MIN, ctx.world, &req));
  WAVEEP_RETURN_IF_ERROR(WaitCollective(ctx, &req, what));
  if (first_fail == ctx.world_size) return absl::OkStatus();
  // The failing rank broadcasts (code, message).
  std::string msg = local.ok() ? std::string() : std::string(local.message());
  int head[2] = {static_cast<int>(local.code()), static_cast<int>(msg.size())};
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Ibcast(head, 2, MPI_INT, first_fail, ctx.world, &req));
  WAVEEP_RETURN_IF_ERROR(WaitCollective(ctx, &req, what));
  msg.resize(static_cast<size_t>(head[1]));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Ibcast(msg.data(), head[1], MPI_CHAR, first_fail, ctx.world, &req));
  WAVEEP_RETURN_IF_ERROR(WaitCollective(ctx, &req, what));
  if (first_fail == ctx.world_rank) return local;
  return Status(static_cast<absl::StatusCode>(head[0]), absl::StrCat("rank ", first_fail, ": ", msg));
}

Status Allreduce(const ProcessContext& ctx, const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op,
                 absl::string_view what) {
  MPI_Request req = MPI_REQUEST_NULL;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Iallreduce(send, recv, count, type, op, ctx.world, &req));
  return WaitCollective(ctx, &req, what);
}

StatusOr<std::vector<std::string>> GatherStrings(const ProcessContext& ctx, absl::string_view local, int root) {
  int len = static_cast<int>(local.size());
  std::vector<int> lens(ctx.world_size), displs(ctx.world_size);
  MPI_Request req = MPI_REQUEST_NULL;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Igather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, ctx.world, &req));
  WAVEEP_RETURN_IF_ERROR(WaitCollective(ctx, &req, "gathering strings to rank 0"));
  int total = 0;
  if (ctx.world_rank == root) {
    for (int r = 0; r < ctx.world_size; ++r) {
      displs[r] = total;
      total += lens[r];
    }
  }
  std::string all(static_cast<size_t>(total), '\0');
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Igatherv(local.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR,
                                          root, ctx.world, &req));
  WAVEEP_RETURN_IF_ERROR(WaitCollective(ctx, &req, "gathering strings to rank 0"));
  std::vector<std::string> out;
  if (ctx.world_rank == root) {
    for (int r = 0; r < ctx.world_size; ++r) out.push_back(all.substr(displs[r], lens[r]));
  }
  return out;
}

}  // namespace waveep
