// Copyright 2026 The waveep Authors.
//
// runtime/context.h — the MPI process context: world/local rank, node, GPU binding.
//
//   int main(int argc, char** argv) {
//     auto ctx = waveep::InitProcess(&argc, &argv);   // MPI_Init_thread(MPI_THREAD_MULTIPLE)
//     if (!ctx.ok()) { ...print...; return 1; }
//     ... ctx->world_rank, ctx->world_size, ctx->local_rank, ctx->node_id ...
//     waveep::FinalizeProcess();
//   }
//
// Local rank comes from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED). The MPI communicators themselves, and the bounded
// Allreduce, are in runtime/mpi_context.h. Ranks may be started by mpirun (Open MPI),
// by Slurm's srun with a PMI plugin (`srun --mpi=pmix`), or not at all (one rank); what the launcher says (rank,
// size, local rank: OMPI_COMM_WORLD_*, or SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID) must agree with MPI's
// view, and srun without a PMI plugin is refused before MPI_Init (every task would be a job of its own). Node ids
// are dense, in order of each node's lowest world rank.
#ifndef WAVEEP_RUNTIME_CONTEXT_H_
#define WAVEEP_RUNTIME_CONTEXT_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "runtime/status.h"

namespace waveep {

struct MpiComms;  // runtime/mpi_context.h

struct ProcessContext {
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;  // rank among the processes on this node
  int local_size = 1;
  int node_id = 0;
  int num_nodes = 1;
  std::string hostname;
  int thread_level = 0;           // what MPI provided
  std::string launcher = "none";  // "mpirun", "srun" or "none" (a lone process)
  // Non-empty when the launch looks unintended but is allowed: one rank inside a Slurm allocation of several tasks
  // (a job script that forgot srun). main() prints it once.
  std::string launch_note;
  // The context's MPI communicators (a duplicate of MPI_COMM_WORLD, the node's processes), shared by every copy.
  // Opaque here, so that only code that speaks MPI includes <mpi.h>: runtime/mpi_context.h reads them (WorldComm,
  // NodeComm).
  std::shared_ptr<MpiComms> mpi;
};

// Initialises MPI (once per process) requesting MPI_THREAD_MULTIPLE; fails if less is provided. Sets the
// diagnostic prefix to "rank R/N" and the trace epoch right after a barrier, so traces from all ranks align.
StatusOr<ProcessContext> InitProcess(int* argc, char*** argv);
// Frees the context's communicators and finalises MPI. Safe to call twice.
void FinalizeProcess();
// Aborts every rank (MPI_Abort) — for main() after an error that other ranks may not see.
[[noreturn]] void AbortAllRanks(int exit_code);

// Fails on every rank with one message if `bytes` (e.g. a canonical config) differs between ranks: the message
// names `what` and the ranks whose hash differs from rank 0's. Collective over the world, bounded by
// DefaultTimeout() (as are AgreeOnStatus and GatherStrings).
Status CheckSameOnAllRanks(const ProcessContext& ctx, absl::string_view what, absl::string_view bytes);

// Errors after which the job cannot go on: a wait expired (DeadlineExceeded: a peer stopped, hung or died, and MPI
// may still hold buffers of the failed exchange) or a peer was lost (Aborted). The rank that sees one reports it
// itself and ends the whole job (AbortAllRanks) instead of agreeing with peers that may never answer.
bool IsJobFatal(const Status& s);

// Dead peers between exchanges. A comm backend that can tell by itself that a peer died (ucx: endpoint errors and
// process ids) registers a check while it lives; the bounded MPI collectives of this header (and Allreduce in
// mpi_context.h) run every registered check about every 10 ms while they wait, so a rank that died between two
// exchanges fails them at once with the check's error (Aborted naming the dead rank: job-fatal) instead of after
// DefaultTimeout(). A check must not block (try its locks, never wait on them); `doing` names the collective.
//
//   const int64_t id = AddPeerFailureCheck([st](absl::string_view doing) { return st->CheckPeers(doing); });
//   ...
//   RemovePeerFailureCheck(id);  // before what the check uses goes away; waits out a call in progress
using PeerFailureCheck = std::function<Status(absl::string_view doing)>;
int64_t AddPeerFailureCheck(PeerFailureCheck check);
void RemovePeerFailureCheck(int64_t id);
// Runs every registered check; the first error, OK when none failed (or none is registered).
Status CheckPeerFailures(absl::string_view doing);

// Bounded collectives name the rank they waited for. Call BeginBoundedCollective() when a collective starts (every
// rank enters bounded collectives in the same order, so equal numbers mean "the same one"); when it times out,
// RollCall(seq, timeout) asks every rank, over a communicator of its own, which collective it is stuck in and returns
// the text for the error: "; roll call: rank 2 did not answer within 1s (stopped, hung, or died); 2 other rank(s)
// timed out in this one too". It listens for min(1 s, timeout) (less when every rank answered): ranks that time out
// in the same collective entered it, and so time out, within that of each other. "" before InitProcess or with one
// rank. Only for the error path: the job ends right after.
int64_t BeginBoundedCollective();
std::string RollCall(int64_t seq, absl::Duration timeout);

// Combines a local Status across ranks: OK only if OK on every rank; otherwise every rank returns the error of the
// lowest failing rank, prefixed with "rank R: ". Collective, bounded by DefaultTimeout() (DeadlineExceeded naming
// the agreement). A job-fatal `local` is returned at once, without waiting for the others.
// Lets all ranks fail together instead of hanging.
Status AgreeOnStatus(const ProcessContext& ctx, const Status& local);

// The same agreement over any allgather (`bytes` from every rank into `recv`, rank order; collective, bounded by its
// caller): the communicators of the comm module agree with it too. Two allgathers when some rank failed (codes and
// lengths, then the messages, whole), one when none did.
using AllgatherFn = std::function<Status(const void* send, size_t bytes, void* recv)>;
Status AgreeOnStatus(int rank, int size, const Status& local, const AllgatherFn& allgather);

// Gathers a variable-length string from every rank to `root` (rank order). Collective; non-roots get {}.
StatusOr<std::vector<std::string>> GatherStrings(const ProcessContext& ctx, absl::string_view local, int root = 0);

}  // namespace waveep

#endif  // WAVEEP_RUNTIME_CONTEXT_H_
