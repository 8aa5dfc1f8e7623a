// Copyright 2026 The waveep Authors.
#include "runtime/context.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/time/clock.h"
#include "runtime/mpi_context.h"
#include "runtime/stream.h"
#include "runtime/trace.h"
#include "runtime/types.h"

namespace waveep {
namespace {
ProcessContext* g_ctx = nullptr;

// A communicator of its own for the roll call (no tag of any other message can match it), and the number of bounded
// collectives this process has entered: every rank enters them in the same order, so equal numbers mean "waiting in
// the same one".
MPI_Comm g_roll_call_comm = MPI_COMM_NULL;
std::atomic<int64_t> g_collectives{0};
constexpr int kRollCallTag = 1;

// The registered peer-failure checks (AddPeerFailureCheck). Calls hold the mutex, so removing one waits out a call.
constexpr absl::Duration kPeerCheckEvery = absl::Milliseconds(10);
std::mutex g_peer_checks_mu;
std::map<int64_t, PeerFailureCheck>* g_peer_checks = nullptr;  // never freed: used until exit
int64_t g_next_peer_check = 0;

// "2, 5-7, 9": ascending ranks as ranges, at most 16 items.
std::string RankList(const std::vector<int>& ranks) {
  std::string out;
  int items = 0;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (++items > 16) {
      absl::StrAppend(&out, ", ... (", ranks.size() - i, " more)");
      break;
    }
    absl::StrAppend(&out, out.empty() ? "" : ", ", ranks[i]);
    if (j > i) absl::StrAppend(&out, "-", ranks[j]);
    i = j + 1;
  }
  return out;
}

// Every rank that times out tells every other rank which collective it is stuck in, and listens for the others for
// a short grace. The messages left unanswered are cancelled or freed (the job ends right after anyway).
std::string RollCallImpl(const ProcessContext& ctx, int64_t seq, absl::Duration grace) {
  if (g_roll_call_comm == MPI_COMM_NULL || ctx.world_size < 2) return "";
  // One roll call at a time (the comm thread and the main thread may both time out); each one's message outlives
  // its sends, which may never complete (a stopped peer): 8 bytes left behind on the way out of the job.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  const int64_t* mine = new int64_t(seq);
  std::vector<int64_t> theirs(static_cast<size_t>(ctx.world_size), -1);
  std::vector<MPI_Request> recvs(static_cast<size_t>(ctx.world_size), MPI_REQUEST_NULL);
  for (int r = 0; r < ctx.world_size; ++r) {
    if (r == ctx.world_rank) continue;
    MPI_Request send = MPI_REQUEST_NULL;
    if (MPI_Isend(mine, 1, MPI_INT64_T, r, kRollCallTag, g_roll_call_comm, &send) == MPI_SUCCESS) {
      MPI_Request_free(&send);
    }
    MPI_Irecv(&theirs[r], 1, MPI_INT64_T, r, kRollCallTag, g_roll_call_comm, &recvs[r]);
  }
  const absl::Time until = absl::Now() + grace;
  std::vector<bool> answered(static_cast<size_t>(ctx.world_size), false);
  answered[ctx.world_rank] = true;
  for (int pending = ctx.world_size - 1; pending > 0 && absl::Now() < until;) {
    for (int r = 0; r < ctx.world_size; ++r) {
      if (answered[r] || recvs[r] == MPI_REQUEST_NULL) continue;
      int done = 0;
      MPI_Test(&recvs[r], &done, MPI_STATUS_IGNORE);
      if (done) {
        answered[r] = true;
        --pending;
      }
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  std::vector<int> silent, elsewhere;
  int with_me = 0;
  for (int r = 0; r < ctx.world_size; ++r) {
    if (r == ctx.world_rank) continue;
    if (!answered[r]) {
      silent.push_back(r);
      if (recvs[r] != MPI_REQUEST_NULL) {
        MPI_Cancel(&recvs[r]);
        MPI_Request_free(&recvs[r]);
      }
    } else if (theirs[r] == seq) {
      ++with_me;
    } else {
      elsewhere.push_back(r);
    }
  }
  std::string out = "; roll call: ";
  if (!silent.empty()) {
    absl::StrAppend(&out, silent.size() == 1 ? "rank " : "ranks ", RankList(silent), " did not answer within ",
                    absl::FormatDuration(grace), " (stopped, hung, or died)");
  } else {
    absl::StrAppend(&out, "every rank answered (the collective itself is slow, or MPI made no progress)");
  }
  if (!elsewhere.empty()) {
    // Their collective's number next to ours: behind or ahead in the program, or collectives called in another order.
    absl::StrAppend(&out, "; ", elsewhere.size() == 1 ? "rank " : "ranks ", RankList(elsewhere),
                    " timed out in another collective (this is #", seq, "; rank ", elsewhere[0], " is at #",
                    theirs[elsewhere[0]], ")");
  }
  absl::StrAppend(&out, "; ", with_me, " other rank(s) timed out in this one too");
  return out;
}

// Completes a non-blocking collective within DefaultTimeout(). On expiry the request is left to MPI (a collective
// cannot be cancelled) and the caller must not free its buffers before the job ends: the error is job-fatal
// (DeadlineExceeded), and the CLI aborts every rank right after printing it. The error names the ranks that did not
// answer the roll call, which adds at most 1 s.
Status WaitCollective(const ProcessContext& ctx, MPI_Request* req, absl::string_view what) {
  const int64_t seq = BeginBoundedCollective();
  const absl::Duration timeout = DefaultTimeout();
  const absl::Time deadline = absl::Now() + timeout;
  absl::Time next_peer_check = absl::Now() + kPeerCheckEvery;
  for (int polls = 0;; ++polls) {
    int done = 0;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Test(req, &done, MPI_STATUS_IGNORE));
    if (done) return absl::OkStatus();
    if (polls > 1000) {
      const absl::Time now = absl::Now();
      if (now >= next_peer_check) {
        // A peer a comm backend knows to be dead will never enter this collective: fail now (the request is left to
        // MPI, as on a timeout; the error is job-fatal).
        WAVEEP_RETURN_IF_ERROR(CheckPeerFailures(what));
        next_peer_check = now + kPeerCheckEvery;
      }
      if (now > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(DiagnosticPrefix(), ": ", what, " timed out after ",
                                                        absl::FormatDuration(timeout), " waiting for the other ",
                                                        ctx.world_size - 1, " rank(s)", RollCall(seq, timeout)));
      }
      absl::SleepFor(absl::Microseconds(50));
    }
  }
}

// An integer environment variable, or -1 when unset or not a non-negative integer.
int EnvInt(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return -1;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (errno != 0 || *end != '\0' || x < 0 || x > INT32_MAX) return -1;
  return static_cast<int>(x);
}

bool Set(const char* name) { return std::getenv(name) != nullptr; }
// A task of an srun job step (a batch script itself has SLURM_JOB_ID but no step id).
bool UnderSrun() { return Set("SLURM_JOB_ID") && Set("SLURM_STEP_ID"); }
// Open MPI's mpirun sets OMPI_COMM_WORLD_*; a PMIx or PMI-2 server (srun --mpi=pmix|pmi2) sets PMIX_RANK / PMI_RANK.
bool UnderMpirun() { return Set("OMPI_COMM_WORLD_SIZE"); }
bool HasPmi() { return UnderMpirun() || Set("PMIX_RANK") || Set("PMI_RANK"); }

// Before MPI_Init: a task that srun started without a PMI plugin cannot find its peers; Open MPI would fail inside
// MPI_Init with a page about rebuilding it, other MPIs would run every task as a job of its own.
Status CheckLaunchBeforeInit() {
  if (!UnderSrun() || HasPmi()) return absl::OkStatus();
  const char* type = std::getenv("SLURM_MPI_TYPE");
  return absl::FailedPreconditionError(absl::StrCat(
      "started by srun --mpi=", type != nullptr ? type : "none",
      ", which gives the tasks no PMI to find each other: launch with `srun --mpi=pmix` (`srun --mpi=list` shows what "
      "this Slurm offers; MpiDefault=pmix in slurm.conf makes it the default) or with mpirun"));
}

// After MPI_Init: the launcher's rank, size and local rank must be MPI's (a mismatch means two launchers' variables
// mixed, or an MPI that did not take its ranks from this launcher). mpirun's variables win: mpirun inside a Slurm
// allocation starts its daemons with srun, so its ranks also carry the daemons' SLURM_* values.
Status CheckLaunchAfterInit(ProcessContext& ctx) {
  struct Want {
    const char* var;
    int mpi;
    const char* what;
  };
  const Want size_rank_local[3][3] = {
      {{"OMPI_COMM_WORLD_SIZE", ctx.world_size, "world size"},
       {"OMPI_COMM_WORLD_RANK", ctx.world_rank, "world rank"},
       {"OMPI_COMM_WORLD_LOCAL_RANK", ctx.local_rank, "local rank"}},
      {{"SLURM_STEP_NUM_TASKS", ctx.world_size, "world size"},
       {"SLURM_PROCID", ctx.world_rank, "world rank"},
       {"SLURM_LOCALID", ctx.local_rank, "local rank"}},
      {{"MV2_COMM_WORLD_SIZE", ctx.world_size, "world size"},
       {"MV2_COMM_WORLD_RANK", ctx.world_rank, "world rank"},
       {"MV2_COMM_WORLD_LOCAL_RANK", ctx.local_rank, "local rank"}},
  };
  int which = -1;
  if (UnderMpirun()) {
    ctx.launcher = "mpirun";
    which = 0;
  } else if (UnderSrun()) {
    ctx.launcher = "srun";
    which = 1;
  } else if (Set("MV2_COMM_WORLD_SIZE")) {
    ctx.launcher = "mpirun";
    which = 2;
  } else if (Set("SLURM_JOB_ID") && ctx.world_size == 1 && EnvInt("SLURM_NTASKS") > 1) {
    ctx.launch_note = absl::StrCat("running as 1 rank inside Slurm job ", std::getenv("SLURM_JOB_ID"), ", which has ",
                                   EnvInt("SLURM_NTASKS"), " tasks: start the ranks with srun (or mpirun)");
  }
  if (which < 0) return absl::OkStatus();
  for (const Want& w : size_rank_local[which]) {
    const int launcher = EnvInt(w.var);
    if (launcher >= 0 && launcher != w.mpi) {
      return absl::FailedPreconditionError(absl::StrCat(
          w.var, "=", launcher, " but MPI's ", w.what, " is ", w.mpi, " on ", ctx.hostname, " (launched by ",
          ctx.launcher, "): the MPI library did not take its ranks from this launcher; with srun use --mpi=pmix"));
    }
  }
  return absl::OkStatus();
}
}  // namespace

int64_t BeginBoundedCollective() { return g_collectives.fetch_add(1); }

int64_t AddPeerFailureCheck(PeerFailureCheck check) {
  std::lock_guard<std::mutex> lock(g_peer_checks_mu);
  if (g_peer_checks == nullptr) g_peer_checks = new std::map<int64_t, PeerFailureCheck>();
  const int64_t id = ++g_next_peer_check;
  g_peer_checks->emplace(id, std::move(check));
  return id;
}

void RemovePeerFailureCheck(int64_t id) {
  std::lock_guard<std::mutex> lock(g_peer_checks_mu);
  if (g_peer_checks != nullptr) g_peer_checks->erase(id);
}

Status CheckPeerFailures(absl::string_view doing) {
  std::lock_guard<std::mutex> lock(g_peer_checks_mu);
  if (g_peer_checks == nullptr) return absl::OkStatus();
  for (const auto& [id, check] : *g_peer_checks) WAVEEP_RETURN_IF_ERROR(check(doing));
  return absl::OkStatus();
}

std::string RollCall(int64_t seq, absl::Duration timeout) {
  return g_ctx == nullptr ? std::string() : RollCallImpl(*g_ctx, seq, std::min(absl::Seconds(1), timeout));
}

bool IsJobFatal(const Status& s) {
  return s.code() == absl::StatusCode::kDeadlineExceeded || s.code() == absl::StatusCode::kAborted;
}

StatusOr<ProcessContext> InitProcess(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = 0;
  if (!initialized) {
    WAVEEP_RETURN_IF_ERROR(CheckLaunchBeforeInit());
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
  ctx.mpi = std::make_shared<MpiComms>();
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_dup(MPI_COMM_WORLD, &ctx.mpi->world));
  // Errors come back as codes so they become Statuses instead of aborting inside MPI.
  MPI_Comm_set_errhandler(WorldComm(ctx), MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_rank(WorldComm(ctx), &ctx.world_rank));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_size(WorldComm(ctx), &ctx.world_size));
  WAVEEP_MPI_RETURN_IF_ERROR(
      MPI_Comm_split_type(WorldComm(ctx), MPI_COMM_TYPE_SHARED, ctx.world_rank, MPI_INFO_NULL, &ctx.mpi->node));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_rank(NodeComm(ctx), &ctx.local_rank));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_size(NodeComm(ctx), &ctx.local_size));
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  ctx.hostname = host;

  // Node id: leaders (local rank 0) number themselves in world-rank order; everyone learns its leader's id.
  int is_leader = ctx.local_rank == 0 ? 1 : 0;
  int leaders_before = 0;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Exscan(&is_leader, &leaders_before, 1, MPI_INT, MPI_SUM, WorldComm(ctx)));
  if (ctx.world_rank == 0) leaders_before = 0;  // MPI_Exscan leaves rank 0's result undefined
  int node_id = leaders_before;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Bcast(&node_id, 1, MPI_INT, 0, NodeComm(ctx)));
  ctx.node_id = node_id;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&is_leader, &ctx.num_nodes, 1, MPI_INT, MPI_SUM, WorldComm(ctx)));

  // Agreed, so that the ranks whose launch check passed do not wait in the next collective for one that failed.
  const Status launch = CheckLaunchAfterInit(ctx);
  int launch_bad = launch.ok() ? 0 : 1, any_launch_bad = 0;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Allreduce(&launch_bad, &any_launch_bad, 1, MPI_INT, MPI_MAX, WorldComm(ctx)));
  if (!launch.ok()) return launch;
  if (any_launch_bad != 0) {
    return absl::FailedPreconditionError("another rank's launcher disagrees with MPI (see that rank's line)");
  }
  if (g_roll_call_comm == MPI_COMM_NULL) WAVEEP_MPI_RETURN_IF_ERROR(MPI_Comm_dup(WorldComm(ctx), &g_roll_call_comm));
  SetDiagnosticPrefix(absl::StrCat("rank ", ctx.world_rank, "/", ctx.world_size));
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Barrier(WorldComm(ctx)));
  ResetTraceEpoch();
  delete g_ctx;
  g_ctx = new ProcessContext(ctx);
  return ctx;
}

void FinalizeProcess() {
  if (g_ctx != nullptr) {
    MpiComms& comms = *g_ctx->mpi;  // shared with every copy of the context: they all read MPI_COMM_NULL after this
    if (comms.node != MPI_COMM_NULL) MPI_Comm_free(&comms.node);
    if (comms.world != MPI_COMM_NULL) MPI_Comm_free(&comms.world);
    if (g_roll_call_comm != MPI_COMM_NULL) MPI_Comm_free(&g_roll_call_comm);
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
      MPI_Iallgather(&h, 1, MPI_UNSIGNED_LONG_LONG, all.data(), 1, MPI_UNSIGNED_LONG_LONG, WorldComm(ctx), &req));
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

Status AgreeOnStatus(int rank, int size, const Status& local, const AllgatherFn& allgather) {
  // A timeout means a peer may be stopped or gone: waiting for it to agree would hang. Report it from here; the CLI
  // prints it on this rank and aborts the job (IsJobFatal).
  if (IsJobFatal(local)) return local;
  // 1. Every rank's (code, message length): one small allgather, all a step costs when every rank is fine.
  const std::string msg = local.ok() ? std::string() : std::string(local.message());
  const int64_t head[2] = {static_cast<int64_t>(local.code()), static_cast<int64_t>(msg.size())};
  std::vector<int64_t> heads(2 * static_cast<size_t>(size));
  WAVEEP_RETURN_IF_ERROR(allgather(head, sizeof(head), heads.data()));
  int first_fail = -1;
  int64_t longest = 0;
  for (int r = 0; r < size; ++r) {
    if (heads[2 * r] != 0 && first_fail < 0) first_fail = r;
    longest = std::max(longest, heads[2 * r + 1]);
  }
  if (first_fail < 0) return absl::OkStatus();
  // 2. The messages, each padded to the longest (every rank knows that length): the lowest failing rank's wins.
  std::vector<char> mine(static_cast<size_t>(longest), '\0'), all(static_cast<size_t>(longest) * size);
  std::memcpy(mine.data(), msg.data(), msg.size());
  if (longest > 0) WAVEEP_RETURN_IF_ERROR(allgather(mine.data(), mine.size(), all.data()));
  if (first_fail == rank) return local;
  return Status(static_cast<absl::StatusCode>(heads[2 * first_fail]),
                absl::StrCat("rank ", first_fail, ": ",
                             absl::string_view(all.data() + static_cast<size_t>(first_fail) * longest,
                                               static_cast<size_t>(heads[2 * first_fail + 1]))));
}

Status AgreeOnStatus(const ProcessContext& ctx, const Status& local) {
  return AgreeOnStatus(ctx.world_rank, ctx.world_size, local, [&](const void* send, size_t bytes, void* recv) {
    MPI_Request req = MPI_REQUEST_NULL;
    WAVEEP_MPI_RETURN_IF_ERROR(MPI_Iallgather(send, static_cast<int>(bytes), MPI_BYTE, recv, static_cast<int>(bytes),
                                              MPI_BYTE, WorldComm(ctx), &req));
    return WaitCollective(ctx, &req, "the agreement on every rank's status");
  });
}

Status Allreduce(const ProcessContext& ctx, const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op,
                 absl::string_view what) {
  MPI_Request req = MPI_REQUEST_NULL;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Iallreduce(send, recv, count, type, op, WorldComm(ctx), &req));
  return WaitCollective(ctx, &req, what);
}

StatusOr<std::vector<std::string>> GatherStrings(const ProcessContext& ctx, absl::string_view local, int root) {
  int len = static_cast<int>(local.size());
  std::vector<int> lens(ctx.world_size), displs(ctx.world_size);
  MPI_Request req = MPI_REQUEST_NULL;
  WAVEEP_MPI_RETURN_IF_ERROR(MPI_Igather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, WorldComm(ctx), &req));
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
                                          root, WorldComm(ctx), &req));
  WAVEEP_RETURN_IF_ERROR(WaitCollective(ctx, &req, "gathering strings to rank 0"));
  std::vector<std::string> out;
  if (ctx.world_rank == root) {
    for (int r = 0; r < ctx.world_size; ++r) out.push_back(all.substr(displs[r], lens[r]));
  }
  return out;
}

}  // namespace waveep
