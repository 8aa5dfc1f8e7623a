// Copyright 2026 The waveep Authors.
//
// The "ucx" backend: host-memory exchanges as one-sided puts over UCP, progressed by the waiting thread, with peer
// failure detection. See ucx_transport.h for the design (CTS / put / FIN, control messages, waiting, what happens
// after an error).
#include "comm/ucx_transport.h"

#include <poll.h>
#include <sys/types.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/comm_internal.h"
#include "comm/mpi_transport.h"

namespace waveep::comm::internal {
namespace {

using Clock = std::chrono::steady_clock;

// NOTES: modelled, not measured — placeholders for topology/ until a probe runs (as in the mpi backend; UCX's
// shared-memory path copies once through cma where the kernel allows it).
constexpr double kLoopbackBwGbps = 10.0;
constexpr double kLoopbackLatencyUs = 0.2;
constexpr double kShmBwGbps = 5.0;
constexpr double kShmLatencyUs = 1.0;
constexpr double kNetBwGbps = 3.0;
constexpr double kNetLatencyUs = 10.0;

// Active message ids.
constexpr unsigned kAmCts = 0x57a1;    // receiver -> sender: clear to send, where, and the remote key
constexpr unsigned kAmFin = 0x57a2;    // sender -> receiver: the put has landed
constexpr unsigned kAmCtl = 0x57a3;    // control collectives (barrier, allgather, count exchange)
constexpr unsigned kAmAbort = 0x57a4;  // either side: this rank gave up on an exchange (timeout or error)

// Exchange channels: async exchanges and blocking ones count their sequence numbers separately.
constexpr uint32_t kChanAsync = 0;
constexpr uint32_t kChanBlocking = 1;

struct CtsMsg {
  uint32_t channel;
  int32_t from;
  uint64_t seq;
  uint64_t addr;
  uint64_t bytes;
  uint32_t rkey_id;
  uint32_t rkey_len;  // > 0: the packed key follows as the message's data
};
struct FinMsg {
  uint32_t channel;
  int32_t from;
  uint64_t seq;
  uint64_t bytes;
};
struct AbortMsg {
  uint32_t channel;
  int32_t from;
  uint64_t seq;
};
struct CtlMsg {
  int32_t from;
  uint32_t reserved;
  uint64_t seq;
};

using XKey = std::tuple<uint32_t, uint64_t, int>;  // (channel, seq, peer)

struct Cts {
  uint64_t addr = 0;
  uint64_t bytes = 0;
  uint32_t rkey_id = 0;
};

// A registered receive range.
struct Region {
  uintptr_t lo = 0;
  uintptr_t hi = 0;
  ucp_mem_h memh = nullptr;
  uint32_t id = 0;
  std::string packed;         // ucp_rkey_pack's output
  std::vector<bool> sent_to;  // peers that already have `packed`
  uint64_t last_use = 0;
  int in_use = 0;  // exchanges running on it (never evicted then)
};

std::mutex g_tuning_mu;
UcxTuning g_tuning;

std::string Ucs(ucs_status_t s) { return ucs_status_string(s); }

Status UcxError(absl::StatusCode code, absl::string_view what, ucs_status_t s) {
  return Status(code, WithPrefix(absl::StrCat("ucx: ", what, ": ", Ucs(s))));
}

// One non-blocking UCX operation: null when done.
struct Op {
  void* req = nullptr;
};

// Starts an operation from the status pointer UCX returned: UCS_OK (done at once), UCS_INPROGRESS (op->req holds the
// request) or an error.
ucs_status_t Start(ucs_status_ptr_t p, Op* op) {
  op->req = nullptr;
  if (p == nullptr) return UCS_OK;
  if (UCS_PTR_IS_ERR(p)) return UCS_PTR_STATUS(p);
  op->req = p;
  return UCS_INPROGRESS;
}

// UCS_INPROGRESS while running; its final status once (the request is freed then).
ucs_status_t Check(Op* op) {
  if (op->req == nullptr) return UCS_OK;
  const ucs_status_t s = ucp_request_check_status(op->req);
  if (s == UCS_INPROGRESS) return s;
  ucp_request_free(op->req);
  op->req = nullptr;
  return s;
}

// An active message with its header and data kept alive until UCX is done with them.
struct AmSend {
  std::string header;
  std::string data;
  Op op;
  int peer = -1;
};

class UcxState;

struct EpArg {
  UcxState* state;
  int peer;
};

// Everything one communicator owns in UCX. Shared by the Communicator and every exchange queued on a stream, so
// that destroying the Communicator while exchanges are queued leaves UCX alive until the last one ran.
class UcxState {
 public:
  UcxState(int rank_in, int size_in) : rank(rank_in), size(size_in), failed(new std::atomic<int>[size_in]) {
    for (int p = 0; p < size; ++p) failed[p].store(UCS_OK);
    packed_rkeys.resize(size);
    rkeys.resize(size);
  }
  ~UcxState();

  const int rank;
  const int size;
  std::vector<int> node_ids;
  std::vector<std::string> hosts;
  std::vector<int64_t> pids;    // every rank's process id, for the liveness check of same-host peers
  std::vector<bool> watch_pid;  // same-host peers whose /proc entry is visible (same PID namespace)
  std::atomic<int64_t> next_pid_check_ns{0};

  std::mutex mu;  // every ucp_* call on the worker and every table below
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  int efd = -1;  // the worker's event fd, -1: none (waiters sleep instead)
  std::vector<ucp_ep_h> eps;
  std::vector<std::unique_ptr<EpArg>> ep_args;
  std::unique_ptr<std::atomic<int>[]> failed;  // ucs_status_t per peer, UCS_OK while alive

  std::map<XKey, Cts> cts;
  std::map<XKey, uint64_t> fins;
  std::map<XKey, bool> aborts;                                // (channel, seq, peer that gave up)
  std::map<std::pair<uint64_t, int>, std::string> ctl;        // (seq, from) -> payload
  std::vector<std::map<uint32_t, std::string>> packed_rkeys;  // per peer, not unpacked yet
  std::vector<std::map<uint32_t, ucp_rkey_h>> rkeys;          // per peer
  std::list<Region> regions;
  uint32_t next_region_id = 1;
  uint64_t use_clock = 0;
  std::string protocol_error;                      // set by a handler that met a message it cannot take
  std::vector<std::unique_ptr<AmSend>> abandoned;  // sends left to UCX after an error (their storage lives on)

  // "rank 3 (host wvp-h1)".
  std::string Peer(int p) const {
    if (p < 0 || p >= static_cast<int>(hosts.size())) return absl::StrCat("rank ", p);
    return absl::StrCat("rank ", p, " (host ", hosts[p], ")");
  }

  // Progresses the worker until it has nothing more to do right now. Requires mu.
  unsigned ProgressLocked() {
    unsigned total = 0;
    for (int i = 0; i < 64; ++i) {
      const unsigned n = ucp_worker_progress(worker);
      if (n == 0) break;
      total += n;
    }
    return total;
  }

  // Sends an eager active message to `peer`. Requires mu.
  Status SendAmLocked(int peer, unsigned id, std::unique_ptr<AmSend>& m) {
    m->peer = peer;
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    const ucs_status_t s = Start(ucp_am_send_nbx(eps[peer], id, m->header.data(), m->header.size(),
                                                 m->data.empty() ? nullptr : m->data.data(), m->data.size(), &param),
                                 &m->op);
    if (s == UCS_OK || s == UCS_INPROGRESS) return absl::OkStatus();
    return PeerError(peer, "sending a control message", s);
  }

  // The registration covering [lo, hi), made if needed; marked in use. Requires mu.
  StatusOr<Region*> RegisterLocked(uintptr_t lo, uintptr_t hi) {
    for (Region& r : regions) {
      if (r.lo <= lo && hi <= r.hi) {
        r.last_use = ++use_clock;
        ++r.in_use;
        return &r;
      }
    }
    if (static_cast<int>(regions.size()) >= kMaxRegistrations) {
      auto lru = regions.end();
      for (auto it = regions.begin(); it != regions.end(); ++it) {
        if (it->in_use == 0 && (lru == regions.end() || it->last_use < lru->last_use)) lru = it;
      }
      if (lru != regions.end()) {
        ucp_mem_unmap(context, lru->memh);
        regions.erase(lru);
      }
    }
    Region r;
    r.lo = lo;
    r.hi = hi;
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = reinterpret_cast<void*>(lo);
    mp.length = hi - lo;
    ucs_status_t s = ucp_mem_map(context, &mp, &r.memh);
    if (s != UCS_OK) {
      return UcxError(absl::StatusCode::kInternal, absl::StrCat("registering the receive range of ", hi - lo, " bytes"),
                      s);
    }
    void* buf = nullptr;
    size_t len = 0;
    s = ucp_rkey_pack(context, r.memh, &buf, &len);
    if (s != UCS_OK) {
      ucp_mem_unmap(context, r.memh);
      return UcxError(absl::StatusCode::kInternal, "packing a remote key", s);
    }
    r.packed.assign(static_cast<const char*>(buf), len);
    ucp_rkey_buffer_release(buf);
    r.id = next_region_id++;
    r.sent_to.assign(size, false);
    r.last_use = ++use_clock;
    r.in_use = 1;
    regions.push_back(std::move(r));
    return &regions.back();
  }

  // The remote key `id` of `peer`, unpacked on first use; nullptr while its CTS has not arrived. Requires mu.
  StatusOr<ucp_rkey_h> RkeyLocked(int peer, uint32_t id) {
    auto it = rkeys[peer].find(id);
    if (it != rkeys[peer].end()) return it->second;
    auto pk = packed_rkeys[peer].find(id);
    if (pk == packed_rkeys[peer].end()) return static_cast<ucp_rkey_h>(nullptr);
    ucp_rkey_h rkey = nullptr;
    const ucs_status_t s = ucp_ep_rkey_unpack(eps[peer], pk->second.data(), &rkey);
    packed_rkeys[peer].erase(pk);
    if (s != UCS_OK) return PeerError(peer, "unpacking its remote key", s);
    rkeys[peer][id] = rkey;
    return rkey;
  }

  // Unavailable naming the peer: its endpoint failed or an operation towards it did.
  Status PeerError(int peer, absl::string_view doing, ucs_status_t s) const {
    return absl::UnavailableError(
        WithPrefix(absl::StrCat("ucx: ", Peer(peer), " failed or became unreachable while ", doing, ": ", Ucs(s),
                                " (the peer's process died, or its link went down)")));
  }

  // The error for the first peer in `peers` whose endpoint failed, OK if none did. Lock-free.
  // Endpoints inside a host run without UCX's peer-failure mode (UCX's shared-memory transports do not offer it), so
  // a dead peer there is found here instead: its process is gone (or a zombie), checked at most every 100 ms.
  Status FailedPeer(const std::vector<int>& peers, absl::string_view doing) {
    for (int p : peers) {
      const int s = failed[p].load(std::memory_order_relaxed);
      if (s != UCS_OK) return PeerError(p, doing, static_cast<ucs_status_t>(s));
    }
    const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
    int64_t due = next_pid_check_ns.load(std::memory_order_relaxed);
    if (now < due || !next_pid_check_ns.compare_exchange_strong(due, now + 100'000'000)) return absl::OkStatus();
    for (int p : peers) {
      if (!watch_pid[p] || ProcessAlive(pids[p])) continue;
      failed[p].store(UCS_ERR_CONNECTION_RESET);
      return absl::UnavailableError(WithPrefix(
          absl::StrCat("ucx: ", Peer(p), " died while ", doing, " (process ", pids[p], " on this host is gone)")));
    }
    return absl::OkStatus();
  }

  // False once the process has exited (no /proc entry, or a zombie waiting to be reaped).
  static bool ProcessAlive(int64_t pid) {
    std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
    if (!f) return false;
    std::string line;
    std::getline(f, line);
    const size_t paren = line.rfind(')');
    if (paren == std::string::npos || paren + 2 >= line.size()) return true;
    const char state = line[paren + 2];
    return state != 'Z' && state != 'X';
  }

  // Tells the peers that still expected something from this exchange that this rank gave up on it, so that they
  // fail at once instead of waiting for their timeout (and never put into this rank's buffers). Best effort.
  // Requires mu.
  void SendAbortsLocked(uint32_t channel, uint64_t seq, const std::vector<int>& peers) {
    for (int p : peers) {
      if (failed[p].load() != UCS_OK) continue;
      auto m = std::make_unique<AmSend>();
      const AbortMsg h{channel, rank, seq};
      m->header.assign(reinterpret_cast<const char*>(&h), sizeof(h));
      if (SendAmLocked(p, kAmAbort, m).ok()) AbandonLocked(std::move(m));
    }
  }

  // Leaves an in-flight send to UCX after an error. Requires mu.
  // UCX completes the request on its own; its header and data live on until the state is destroyed.
  void AbandonLocked(std::unique_ptr<AmSend> m) {
    if (m == nullptr || Check(&m->op) != UCS_INPROGRESS) return;
    ucp_request_free(m->op.req);
    m->op.req = nullptr;
    abandoned.push_back(std::move(m));
  }
};

// ---- active message handlers (called inside ucp_worker_progress, with mu held) --------------------------------------

ucs_status_t OnCts(void* arg, const void* header, size_t header_length, void* data, size_t length,
                   const ucp_am_recv_param_t* param) {
  auto* st = static_cast<UcxState*>(arg);
  CtsMsg m{};
  if (header_length != sizeof(m) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    st->protocol_error = absl::StrCat("a clear-to-send message of ", header_length, "+", length, " bytes");
    return UCS_OK;
  }
  std::memcpy(&m, header, sizeof(m));
  if (m.from < 0 || m.from >= st->size || m.rkey_len != length) {
    st->protocol_error = absl::StrCat("a clear-to-send message from rank ", m.from, " with a key of ", m.rkey_len,
                                      " bytes and ", length, " bytes of data");
    return UCS_OK;
  }
  if (length > 0) st->packed_rkeys[m.from][m.rkey_id].assign(static_cast<const char*>(data), length);
  st->cts[XKey{m.channel, m.seq, m.from}] = Cts{m.addr, m.bytes, m.rkey_id};
  return UCS_OK;
}

ucs_status_t OnFin(void* arg, const void* header, size_t header_length, void* /*data*/, size_t length,
                   const ucp_am_recv_param_t* /*param*/) {
  auto* st = static_cast<UcxState*>(arg);
  FinMsg m{};
  if (header_length != sizeof(m) || length != 0) {
    st->protocol_error = absl::StrCat("a FIN message of ", header_length, "+", length, " bytes");
    return UCS_OK;
  }
  std::memcpy(&m, header, sizeof(m));
  if (m.from < 0 || m.from >= st->size) {
    st->protocol_error = absl::StrCat("a FIN message from rank ", m.from);
    return UCS_OK;
  }
  st->fins[XKey{m.channel, m.seq, m.from}] = m.bytes;
  return UCS_OK;
}

ucs_status_t OnCtl(void* arg, const void* header, size_t header_length, void* data, size_t length,
                   const ucp_am_recv_param_t* param) {
  auto* st = static_cast<UcxState*>(arg);
  CtlMsg m{};
  if (header_length != sizeof(m) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    st->protocol_error = absl::StrCat("a control message of ", header_length, "+", length, " bytes");
    return UCS_OK;
  }
  std::memcpy(&m, header, sizeof(m));
  if (m.from < 0 || m.from >= st->size) {
    st->protocol_error = absl::StrCat("a control message from rank ", m.from);
    return UCS_OK;
  }
  st->ctl[{m.seq, m.from}].assign(static_cast<const char*>(data), length);
  return UCS_OK;
}

ucs_status_t OnAbort(void* arg, const void* header, size_t header_length, void* /*data*/, size_t length,
                     const ucp_am_recv_param_t* /*param*/) {
  auto* st = static_cast<UcxState*>(arg);
  AbortMsg m{};
  if (header_length != sizeof(m) || length != 0) {
    st->protocol_error = absl::StrCat("an abort message of ", header_length, "+", length, " bytes");
    return UCS_OK;
  }
  std::memcpy(&m, header, sizeof(m));
  if (m.from < 0 || m.from >= st->size) {
    st->protocol_error = absl::StrCat("an abort message from rank ", m.from);
    return UCS_OK;
  }
  st->aborts[XKey{m.channel, m.seq, m.from}] = true;
  return UCS_OK;
}

// May run on UCX's async thread: only an atomic store.
void OnEpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* a = static_cast<EpArg*>(arg);
  a->state->failed[a->peer].store(status == UCS_OK ? UCS_ERR_ENDPOINT_TIMEOUT : status);
}

UcxState::~UcxState() {
  if (worker != nullptr) {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& per_peer : rkeys) {
      for (auto& [id, rkey] : per_peer) ucp_rkey_destroy(rkey);
    }
    // Close every endpoint, flushing what is still queued (our last FINs), bounded: a peer that is gone makes its
    // close fail, not hang.
    std::vector<Op> closes(eps.size());
    for (size_t p = 0; p < eps.size(); ++p) {
      if (eps[p] == nullptr) continue;
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      // Force only where the peer is known dead and the endpoint runs in peer-failure mode (UCX requires it).
      param.flags = failed[p].load() != UCS_OK && node_ids[p] != node_ids[rank] ? UCP_EP_CLOSE_FLAG_FORCE : 0;
      Start(ucp_ep_close_nbx(eps[p], &param), &closes[p]);
    }
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(2);
    for (;;) {
      ProgressLocked();
      bool pending = false;
      for (Op& op : closes) pending = (Check(&op) == UCS_INPROGRESS) || pending;
      if (!pending || Clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    for (Op& op : closes) {
      if (op.req != nullptr) ucp_request_free(op.req);
    }
    for (Region& r : regions) ucp_mem_unmap(context, r.memh);
    ucp_worker_destroy(worker);
  }
  if (context != nullptr) ucp_cleanup(context);
}

// Waits between progress rounds: busy, then yielding, then asleep on the worker's event fd.
class Waiter {
 public:
  Waiter(const UcxTuning& t, absl::Duration timeout)
      : busy_(absl::ToChronoNanoseconds(t.busy_poll)),
        spin_(absl::ToChronoNanoseconds(t.spin)),
        max_sleep_ms_(static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(t.max_sleep)))),
        deadline_(Clock::now() + absl::ToChronoNanoseconds(timeout)),
        idle_since_(Clock::now()) {}

  // After a round; false once the deadline passed. Called without the state's mutex.
  bool Next(bool progressed, UcxState& st) {
    const Clock::time_point now = Clock::now();
    if (progressed) {
      idle_since_ = now;
      return now < deadline_;
    }
    if (now >= deadline_) return false;
    const Clock::duration idle = now - idle_since_;
    if (idle < busy_) return true;
    if (idle < spin_ || st.efd < 0) {
      if (idle < spin_) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      return true;
    }
    ucs_status_t s;
    {
      std::lock_guard<std::mutex> lock(st.mu);
      s = ucp_worker_arm(st.worker);
    }
    if (s == UCS_OK) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - now).count() + 1;
      pollfd pfd{st.efd, POLLIN, 0};
      poll(&pfd, 1, static_cast<int>(std::min<int64_t>(max_sleep_ms_, left)));
    }
    return true;
  }

 private:
  const Clock::duration busy_;
  const Clock::duration spin_;
  const int max_sleep_ms_;
  const Clock::time_point deadline_;
  Clock::time_point idle_since_;
};

// ---- exchanges -------------------------------------------------------------------------------------------------

struct Block {
  int peer;
  const char* src;  // sends
  char* dst;        // receives
  size_t bytes;
};

struct Plan {
  std::string label;
  uint32_t channel = kChanAsync;
  uint64_t seq = 0;
  std::vector<Block> sends;  // nonzero blocks to other ranks
  std::vector<Block> recvs;  // nonzero blocks from other ranks
  const char* self_src = nullptr;
  char* self_dst = nullptr;
  size_t self_bytes = 0;
  uintptr_t recv_lo = 0, recv_hi = 0;  // the range the receives span
  size_t bytes_sent = 0, bytes_recv = 0;
  int num_peers = 0;
};

std::string What(const Plan& plan) { return absl::StrCat("alltoallv '", plan.label, "'"); }

Status CheckHostBlocks(const void* base, const std::vector<size_t>& bytes, const std::vector<size_t>& offsets,
                       const char* side) {
  for (size_t p = 0; p < bytes.size(); ++p) {
    int device = -1;
    if (bytes[p] > 0 && IsDevicePointer(static_cast<const char*>(base) + offsets[p], &device)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AlltoallvArgs.", side, " block of peer ", p, " is in CUDA device memory (device ", device,
          "); the ucx backend takes host buffers only (this UCX is built without CUDA support): use --backend=mpi "
          "(stages device blocks through pinned host memory), nccl or cuda_ipc"));
    }
  }
  return absl::OkStatus();
}

StatusOr<Plan> MakePlan(const AlltoallvArgs& args, int rank, int size) {
  WAVEEP_RETURN_IF_ERROR(ValidateAlltoallvArgs(args, size));
  if (args.send_bytes[rank] != args.recv_bytes[rank]) {
    return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs: send_bytes[", rank, "] = ", args.send_bytes[rank],
                                                   " but recv_bytes[", rank, "] = ", args.recv_bytes[rank],
                                                   " (the block a rank sends itself has one size)"));
  }
  WAVEEP_RETURN_IF_ERROR(CheckHostBlocks(args.send, args.send_bytes, args.send_offsets, "send"));
  WAVEEP_RETURN_IF_ERROR(CheckHostBlocks(args.recv, args.recv_bytes, args.recv_offsets, "recv"));
  Plan plan;
  // Step i pairs "receive from rank - i" with "send to rank + i", as the mpi backend does.
  for (int i = 1; i < size; ++i) {
    const int p = (rank - i + size) % size;
    if (args.recv_bytes[p] == 0) continue;
    char* dst = static_cast<char*>(args.recv) + args.recv_offsets[p];
    plan.recvs.push_back(Block{p, nullptr, dst, args.recv_bytes[p]});
    const uintptr_t lo = reinterpret_cast<uintptr_t>(dst);
    const uintptr_t hi = lo + args.recv_bytes[p];
    if (plan.recv_hi == 0) {
      plan.recv_lo = lo;
      plan.recv_hi = hi;
    } else {
      plan.recv_lo = std::min(plan.recv_lo, lo);
      plan.recv_hi = std::max(plan.recv_hi, hi);
    }
    plan.bytes_recv += args.recv_bytes[p];
  }
  for (int i = 1; i < size; ++i) {
    const int p = (rank + i) % size;
    if (args.send_bytes[p] == 0) continue;
    plan.sends.push_back(
        Block{p, static_cast<const char*>(args.send) + args.send_offsets[p], nullptr, args.send_bytes[p]});
    plan.bytes_sent += args.send_bytes[p];
  }
  for (int p = 0; p < size; ++p) {
    if (p != rank && (args.send_bytes[p] > 0 || args.recv_bytes[p] > 0)) ++plan.num_peers;
  }
  if (args.send_bytes[rank] > 0) {
    plan.self_src = static_cast<const char*>(args.send) + args.send_offsets[rank];
    plan.self_dst = static_cast<char*>(args.recv) + args.recv_offsets[rank];
    plan.self_bytes = args.send_bytes[rank];
  }
  return plan;
}

// One send block's progress: waiting for the receiver's CTS, putting (and flushing), sending the FIN, done.
struct SendState {
  enum Phase { kWaitCts, kPutting, kFin, kDone } phase = kWaitCts;
  Op put;
  Op flush;
  std::unique_ptr<AmSend> fin;
};

// Runs one exchange to completion on the calling thread.
Status RunExchange(UcxState& st, const Plan& plan, absl::Duration timeout) {
  std::vector<SendState> sends(plan.sends.size());
  std::vector<bool> recv_done(plan.recvs.size(), false);
  std::vector<std::unique_ptr<AmSend>> ctss;
  Region* region = nullptr;
  size_t sends_left = plan.sends.size(), recvs_left = plan.recvs.size();
  Status status;

  // Abandons whatever is still in flight (requires mu) and returns the note for the error message.
  auto abandon = [&]() -> std::string {
    int puts = 0;
    for (SendState& s : sends) {
      if (s.put.req != nullptr && Check(&s.put) == UCS_INPROGRESS) {
        ++puts;
        ucp_request_free(s.put.req);
      }
      if (s.flush.req != nullptr && Check(&s.flush) == UCS_INPROGRESS) ucp_request_free(s.flush.req);
      st.AbandonLocked(std::move(s.fin));
    }
    for (auto& c : ctss) st.AbandonLocked(std::move(c));
    if (region != nullptr) --region->in_use;
    if (puts == 0) return "";
    return absl::StrCat(" [", puts,
                        " put(s) still in flight were left to UCX: they may still read their send buffers]");
  };

  {
    std::lock_guard<std::mutex> lock(st.mu);
    if (!st.protocol_error.empty()) {
      return absl::InternalError(WithPrefix(absl::StrCat("ucx: received ", st.protocol_error)));
    }
    if (!plan.recvs.empty()) {
      StatusOr<Region*> r = st.RegisterLocked(plan.recv_lo, plan.recv_hi);
      if (!r.ok()) return Status(r.status().code(), absl::StrCat(What(plan), ": ", r.status().message()));
      region = *r;
      for (const Block& b : plan.recvs) {
        auto m = std::make_unique<AmSend>();
        CtsMsg h{plan.channel, st.rank, plan.seq, reinterpret_cast<uint64_t>(b.dst), b.bytes, region->id, 0};
        if (!region->sent_to[b.peer]) {
          m->data = region->packed;
          h.rkey_len = static_cast<uint32_t>(m->data.size());
          region->sent_to[b.peer] = true;
        }
        m->header.assign(reinterpret_cast<const char*>(&h), sizeof(h));
        status = st.SendAmLocked(b.peer, kAmCts, m);
        ctss.push_back(std::move(m));
        if (!status.ok()) break;
      }
    }
    if (!status.ok()) {
      const std::string note = abandon();
      return Status(status.code(), absl::StrCat(What(plan), ": ", status.message(), note));
    }
  }
  if (plan.self_bytes > 0) std::memcpy(plan.self_dst, plan.self_src, plan.self_bytes);

  Waiter waiter(GetUcxTuning(), timeout);
  std::vector<int> pending_peers;
  for (;;) {
    bool progressed = false;
    {
      std::lock_guard<std::mutex> lock(st.mu);
      progressed = st.ProgressLocked() > 0;
      pending_peers.clear();
      for (size_t i = 0; i < sends.size(); ++i) {
        if (sends[i].phase != SendState::kDone) pending_peers.push_back(plan.sends[i].peer);
      }
      for (size_t i = 0; i < plan.recvs.size(); ++i) {
        if (!recv_done[i]) pending_peers.push_back(plan.recvs[i].peer);
      }
      // A peer that gave up on this exchange fails it here, before anything is put into its buffers.
      for (int p : pending_peers) {
        auto it = st.aborts.find(XKey{plan.channel, plan.seq, p});
        if (it == st.aborts.end()) continue;
        st.aborts.erase(it);
        status = absl::AbortedError(
            WithPrefix(absl::StrCat(What(plan), ": ", st.Peer(p),
                                    " gave up on this exchange (its timeout expired or it failed) before this "
                                    "rank got to it; nothing was put into its buffers")));
        break;
      }
      for (size_t i = 0; i < sends.size() && status.ok(); ++i) {
        SendState& s = sends[i];
        const Block& b = plan.sends[i];
        if (s.phase == SendState::kWaitCts) {
          auto it = st.cts.find(XKey{plan.channel, plan.seq, b.peer});
          if (it == st.cts.end()) continue;
          const Cts cts = it->second;
          if (cts.bytes != b.bytes) {
            status = absl::InvalidArgumentError(WithPrefix(
                absl::StrCat(What(plan), ": ", st.Peer(b.peer), " expects ", cts.bytes, " bytes from this rank where ",
                             b.bytes, " are sent (its recv_bytes disagrees with send_bytes[", b.peer, "])")));
            break;
          }
          StatusOr<ucp_rkey_h> rkey = st.RkeyLocked(b.peer, cts.rkey_id);
          if (!rkey.ok()) {
            status = rkey.status();
            break;
          }
          if (*rkey == nullptr) continue;  // the CTS carrying the key is still on its way
          st.cts.erase(it);
          ucp_request_param_t param{};
          ucs_status_t u = Start(ucp_put_nbx(st.eps[b.peer], b.src, b.bytes, cts.addr, *rkey, &param), &s.put);
          if (u == UCS_OK || u == UCS_INPROGRESS) u = Start(ucp_ep_flush_nbx(st.eps[b.peer], &param), &s.flush);
          if (u != UCS_OK && u != UCS_INPROGRESS) {
            status = st.PeerError(b.peer, absl::StrCat("putting ", b.bytes, " bytes for ", What(plan)), u);
            break;
          }
          s.phase = SendState::kPutting;
          progressed = true;
        }
        if (s.phase == SendState::kPutting) {
          const ucs_status_t u1 = Check(&s.put);
          const ucs_status_t u2 = Check(&s.flush);
          for (ucs_status_t u : {u1, u2}) {
            if (u != UCS_OK && u != UCS_INPROGRESS) {
              status = st.PeerError(b.peer, absl::StrCat("putting ", b.bytes, " bytes for ", What(plan)), u);
            }
          }
          if (!status.ok()) break;
          if (s.put.req != nullptr || s.flush.req != nullptr) continue;
          s.fin = std::make_unique<AmSend>();
          const FinMsg h{plan.channel, st.rank, plan.seq, b.bytes};
          s.fin->header.assign(reinterpret_cast<const char*>(&h), sizeof(h));
          status = st.SendAmLocked(b.peer, kAmFin, s.fin);
          if (!status.ok()) break;
          s.phase = SendState::kFin;
          progressed = true;
        }
        if (s.phase == SendState::kFin) {
          const ucs_status_t u = Check(&s.fin->op);
          if (u == UCS_INPROGRESS) continue;
          if (u != UCS_OK) {
            status = st.PeerError(b.peer, absl::StrCat("signalling the end of ", What(plan)), u);
            break;
          }
          s.fin.reset();
          s.phase = SendState::kDone;
          --sends_left;
          progressed = true;
        }
      }
      for (size_t i = 0; i < plan.recvs.size() && status.ok(); ++i) {
        if (recv_done[i]) continue;
        const Block& b = plan.recvs[i];
        auto it = st.fins.find(XKey{plan.channel, plan.seq, b.peer});
        if (it == st.fins.end()) continue;
        if (it->second != b.bytes) {
          status = absl::InvalidArgumentError(WithPrefix(
              absl::StrCat(What(plan), ": received ", it->second, " bytes from ", st.Peer(b.peer), " where ", b.bytes,
                           " were expected (recv_bytes[", b.peer, "] disagrees with what it sends)")));
          break;
        }
        st.fins.erase(it);
        recv_done[i] = true;
        --recvs_left;
        progressed = true;
      }
      bool ctss_left = false;
      for (auto& c : ctss) {
        if (c == nullptr) continue;
        const ucs_status_t u = Check(&c->op);
        if (u == UCS_INPROGRESS) {
          ctss_left = true;
        } else if (u != UCS_OK && status.ok()) {
          status = st.PeerError(c->peer, absl::StrCat("sending the clear-to-send of ", What(plan)), u);
        } else {
          c.reset();
        }
      }
      if (status.ok() && !st.protocol_error.empty()) {
        status = absl::InternalError(WithPrefix(absl::StrCat("ucx: received ", st.protocol_error)));
      }
      if (status.ok() && sends_left == 0 && recvs_left == 0 && !ctss_left) {
        if (region != nullptr) --region->in_use;
        return absl::OkStatus();
      }
      // A dead peer fails the exchange at once if this rank still waits on it.
      if (status.ok()) status = st.FailedPeer(pending_peers, What(plan));
      if (!status.ok()) {
        st.SendAbortsLocked(plan.channel, plan.seq, pending_peers);
        const std::string note = abandon();
        return Status(status.code(), absl::StrCat(status.message(), note));
      }
    }
    if (!waiter.Next(progressed, st)) break;
  }

  // Timed out: name what is missing.
  std::lock_guard<std::mutex> lock(st.mu);
  PendingPeers pending;
  int waiting_cts = 0;
  for (size_t i = 0; i < sends.size(); ++i) {
    if (sends[i].phase == SendState::kDone) continue;
    pending.Add(plan.sends[i].peer, true, plan.sends[i].bytes, plan.sends[i].bytes);
    if (sends[i].phase == SendState::kWaitCts) ++waiting_cts;
  }
  for (size_t i = 0; i < plan.recvs.size(); ++i) {
    if (!recv_done[i]) pending.Add(plan.recvs[i].peer, false, plan.recvs[i].bytes, plan.recvs[i].bytes);
  }
  st.SendAbortsLocked(plan.channel, plan.seq, pending_peers);
  const std::string note = abandon();
  return absl::DeadlineExceededError(WithPrefix(absl::StrCat(
      What(plan), " (channel ", plan.channel, ", seq ", plan.seq, ") timed out after ", absl::FormatDuration(timeout),
      "; still pending: ", pending.ToString(), "; ", plan.num_peers - pending.num_peers(), " of ", plan.num_peers,
      " peers done",
      waiting_cts > 0 ? absl::StrCat(" (", waiting_cts, " send(s) never got the receiver's clear-to-send)") : "",
      ". Did every rank issue this exchange, in the same order, with matching sizes?", note)));
}

// ---- the communicator --------------------------------------------------------------------------------------------

class UcxCommunicator final : public Communicator {
 public:
  UcxCommunicator(std::shared_ptr<UcxState> st, Options options) : st_(std::move(st)), options_(options) {}

  absl::string_view name() const override { return "ucx"; }
  int rank() const override { return st_->rank; }
  int size() const override { return st_->size; }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.one_sided = true;
    return caps;
  }

  LinkEstimate Estimate(int peer) const override {
    if (peer < 0 || peer >= st_->size) return LinkEstimate{"invalid", 0, 0};
    if (peer == st_->rank) return LinkEstimate{"loopback", kLoopbackBwGbps, kLoopbackLatencyUs};
    if (st_->node_ids[peer] == st_->node_ids[st_->rank]) return LinkEstimate{"shm", kShmBwGbps, kShmLatencyUs};
    return LinkEstimate{"net", kNetBwGbps, kNetLatencyUs};
  }

  Status Barrier() override {
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    return Control(
        "barrier", [](int) { return absl::string_view(); }, [](int, const std::string&) { return Status(); });
  }

  Status Allgather(const void* send, size_t bytes, void* recv) override {
    if (bytes == 0) return absl::OkStatus();
    if (send == nullptr || recv == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("Allgather: null ", send == nullptr ? "send" : "recv", " buffer with bytes = ", bytes));
    }
    if (bytes > kMaxControlBytes) {
      AlltoallvArgs args;
      args.send = send;
      args.recv = recv;
      args.label = "allgather";
      args.send_bytes.assign(st_->size, bytes);
      args.send_offsets.assign(st_->size, 0);
      args.recv_bytes.assign(st_->size, bytes);
      for (int p = 0; p < st_->size; ++p) args.recv_offsets.push_back(static_cast<size_t>(p) * bytes);
      return Alltoallv(args);
    }
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    // Staged: an abandoned collective never touches the caller's buffer.
    const std::string mine(static_cast<const char*>(send), bytes);
    std::vector<std::string> got(st_->size);
    got[st_->rank] = mine;
    WAVEEP_RETURN_IF_ERROR(Control(
        absl::StrCat("allgather of ", bytes, " bytes"), [&](int) { return absl::string_view(mine); },
        [&](int p, const std::string& m) { return Take(p, m, bytes, &got[p]); }));
    for (int p = 0; p < st_->size; ++p) std::memcpy(static_cast<char*>(recv) + p * bytes, got[p].data(), bytes);
    return absl::OkStatus();
  }

  Status AlltoallCounts(const int64_t* send, int64_t n, int64_t* recv) override {
    if (n < 0 || n > static_cast<int64_t>(kMaxControlBytes / sizeof(int64_t))) {
      return absl::InvalidArgumentError(absl::StrCat("AlltoallCounts: n = ", n, " counts per peer, need [0, ",
                                                     kMaxControlBytes / sizeof(int64_t), "] on the ucx backend"));
    }
    if (n == 0) return absl::OkStatus();
    if (send == nullptr || recv == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("AlltoallCounts: null ", send == nullptr ? "send" : "recv", " buffer with n = ", n));
    }
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    const size_t bytes = static_cast<size_t>(n) * sizeof(int64_t);
    const std::string mine(reinterpret_cast<const char*>(send), bytes * st_->size);
    std::vector<std::string> got(st_->size);
    got[st_->rank] = mine.substr(bytes * st_->rank, bytes);
    WAVEEP_RETURN_IF_ERROR(Control(
        absl::StrCat("count exchange (", n, " per peer)"),
        [&](int p) { return absl::string_view(mine).substr(bytes * p, bytes); },
        [&](int p, const std::string& m) { return Take(p, m, bytes, &got[p]); }));
    for (int p = 0; p < st_->size; ++p) std::memcpy(recv + p * n, got[p].data(), bytes);
    return absl::OkStatus();
  }

  Status Alltoallv(const AlltoallvArgs& args) override {
    std::lock_guard<std::mutex> lock(coll_mu_);
    // Every call consumes its sequence number, valid or not (as in the mpi backend).
    const uint64_t seq = blocking_seq_++;
    WAVEEP_ASSIGN_OR_RETURN(Plan plan, MakePlan(args, st_->rank, st_->size));
    plan.channel = kChanBlocking;
    plan.seq = seq;
    plan.label = args.label.empty() ? absl::StrCat("alltoallv (blocking) #", seq) : args.label;
    ScopedSpan span("host", plan.label, "comm");
    span.Arg("bytes_sent", static_cast<double>(plan.bytes_sent));
    span.Arg("bytes_recv", static_cast<double>(plan.bytes_recv));
    return RunExchange(*st_, plan, Timeout());
  }

  Status AlltoallvAsync(AlltoallvArgs args, Stream& stream) override {
    std::lock_guard<std::mutex> lock(p2p_mu_);
    const uint64_t seq = async_seq_++;
    WAVEEP_ASSIGN_OR_RETURN(Plan p, MakePlan(args, st_->rank, st_->size));
    auto plan = std::make_shared<Plan>(std::move(p));
    plan->channel = kChanAsync;
    plan->seq = seq;
    plan->label = args.label.empty() ? absl::StrCat("alltoallv #", seq) : args.label;
    return stream.Enqueue([st = st_, plan, row = std::string(stream.name()), timeout = Timeout()]() {
      ScopedSpan span(row, plan->label, "comm");
      span.Arg("bytes_sent", static_cast<double>(plan->bytes_sent));
      span.Arg("bytes_recv", static_cast<double>(plan->bytes_recv));
      return RunExchange(*st, *plan, timeout);
    });
  }

 private:
  absl::Duration Timeout() const {
    return options_.timeout > absl::ZeroDuration() ? options_.timeout : DefaultTimeout();
  }

  static Status Take(int p, const std::string& m, size_t bytes, std::string* out) {
    if (m.size() != bytes) {
      return absl::InvalidArgumentError(WithPrefix(absl::StrCat("ucx: rank ", p, " contributed ", m.size(),
                                                                " bytes to a collective where this rank expects ",
                                                                bytes, " (the ranks called it with different sizes)")));
    }
    *out = m;
    return absl::OkStatus();
  }

  // One control collective: `out(p)` goes to every other rank p as an eager active message, `in(p, message)` takes
  // what p sent. Matched by its own sequence number. Requires coll_mu_.
  Status Control(const std::string& what, const std::function<absl::string_view(int)>& out,
                 const std::function<Status(int, const std::string&)>& in) {
    UcxState& st = *st_;
    const uint64_t seq = ctl_seq_++;
    const absl::Duration timeout = Timeout();
    std::vector<std::unique_ptr<AmSend>> sends;
    std::vector<bool> got(st.size, false);
    got[st.rank] = true;
    int left = st.size - 1;
    Status status;
    auto abandon = [&]() {
      for (auto& m : sends) st.AbandonLocked(std::move(m));
    };
    {
      std::lock_guard<std::mutex> lock(st.mu);
      for (int i = 1; i < st.size && status.ok(); ++i) {
        const int p = (st.rank + i) % st.size;
        auto m = std::make_unique<AmSend>();
        const CtlMsg h{st.rank, 0, seq};
        m->header.assign(reinterpret_cast<const char*>(&h), sizeof(h));
        const absl::string_view payload = out(p);
        m->data.assign(payload.data(), payload.size());
        status = st.SendAmLocked(p, kAmCtl, m);
        sends.push_back(std::move(m));
      }
      if (!status.ok()) {
        abandon();
        return Status(status.code(), absl::StrCat(what, ": ", status.message()));
      }
    }
    Waiter waiter(GetUcxTuning(), timeout);
    std::vector<int> missing;
    for (;;) {
      bool progressed = false;
      {
        std::lock_guard<std::mutex> lock(st.mu);
        progressed = st.ProgressLocked() > 0;
        for (int p = 0; p < st.size && status.ok(); ++p) {
          if (got[p]) continue;
          auto it = st.ctl.find({seq, p});
          if (it == st.ctl.end()) continue;
          status = in(p, it->second);
          st.ctl.erase(it);
          got[p] = true;
          --left;
          progressed = true;
        }
        bool sends_left = false;
        for (auto& m : sends) {
          if (m == nullptr) continue;
          const ucs_status_t u = Check(&m->op);
          if (u == UCS_INPROGRESS) {
            sends_left = true;
          } else if (u != UCS_OK && status.ok()) {
            status = st.PeerError(m->peer, what, u);
          } else {
            m.reset();
          }
        }
        missing.clear();
        for (int p = 0; p < st.size; ++p) {
          if (!got[p]) missing.push_back(p);
        }
        if (status.ok()) status = st.FailedPeer(missing, what);
        if (status.ok() && !st.protocol_error.empty()) {
          status = absl::InternalError(WithPrefix(absl::StrCat("ucx: received ", st.protocol_error)));
        }
        if (!status.ok()) {
          abandon();
          return status;
        }
        if (left == 0 && !sends_left) return absl::OkStatus();
      }
      if (!waiter.Next(progressed, st)) break;
    }
    std::lock_guard<std::mutex> lock(st.mu);
    abandon();
    std::vector<std::string> names;
    for (int p : missing) {
      if (static_cast<int>(names.size()) == kMaxPeersInMessage) {
        names.push_back(absl::StrCat("and ", missing.size() - kMaxPeersInMessage, " more"));
        break;
      }
      names.push_back(st.Peer(p));
    }
    Status s = absl::DeadlineExceededError(
        WithPrefix(absl::StrCat("ucx communicator: ", what, " timed out after ", absl::FormatDuration(timeout),
                                " waiting for the other ", st.size - 1, " rank(s); nothing arrived from ",
                                absl::StrJoin(names, ", "), " (stopped, or issuing collectives in another order)")));
    // As on the mpi backend: once a collective timed out, the ranks may no longer agree on the collective order, so
    // later blocking collectives are refused rather than matched against the wrong call.
    broken_ = absl::FailedPreconditionError(
        absl::StrCat("ucx communicator unusable for blocking collectives after an earlier timeout: ", s.message()));
    return s;
  }

  std::shared_ptr<UcxState> st_;
  const Options options_;
  std::mutex coll_mu_;  // serialises blocking calls (collective: issued in the same order on every rank)
  Status broken_;
  uint64_t ctl_seq_ = 0;
  uint64_t blocking_seq_ = 0;
  std::mutex p2p_mu_;  // keeps the sequence number and the enqueue order together
  uint64_t async_seq_ = 0;
};

// Node id, host name and worker address of every rank, gathered over MPI.
struct Directory {
  std::vector<int> node_ids;
  std::vector<int64_t> pids;
  std::vector<std::string> hosts;
  std::vector<std::string> addresses;
};

StatusOr<Directory> Exchange(Communicator& mpi, const ProcessContext& ctx, const std::string& address) {
  constexpr size_t kHost = 64;
  struct Rec {
    int32_t node_id;
    uint32_t address_len;
    int64_t pid;
    char host[kHost];
  };
  Rec mine{};
  mine.node_id = ctx.node_id;
  mine.pid = static_cast<int64_t>(getpid());
  mine.address_len = static_cast<uint32_t>(address.size());
  std::strncpy(mine.host, ctx.hostname.c_str(), kHost - 1);
  const int n = mpi.size();
  std::vector<Rec> all(n);
  WAVEEP_RETURN_IF_ERROR(mpi.Allgather(&mine, sizeof(mine), all.data()));
  size_t max_len = 0;
  for (const Rec& r : all) max_len = std::max<size_t>(max_len, r.address_len);
  std::string padded = address;
  padded.resize(max_len);
  std::string flat(max_len * n, '\0');
  WAVEEP_RETURN_IF_ERROR(mpi.Allgather(padded.data(), max_len, flat.data()));
  Directory d;
  for (int p = 0; p < n; ++p) {
    d.node_ids.push_back(all[p].node_id);
    d.pids.push_back(all[p].pid);
    d.hosts.emplace_back(all[p].host, strnlen(all[p].host, kHost));
    d.addresses.push_back(flat.substr(max_len * p, all[p].address_len));
  }
  return d;
}

}  // namespace

UcxTuning GetUcxTuning() {
  std::lock_guard<std::mutex> lock(g_tuning_mu);
  return g_tuning;
}

Status SetUcxTuning(const UcxTuning& tuning) {
  if (tuning.busy_poll < absl::ZeroDuration() || tuning.spin < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("UcxTuning: busy_poll and spin must not be negative");
  }
  if (tuning.max_sleep < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("UcxTuning.max_sleep = ", absl::FormatDuration(tuning.max_sleep),
                                                   ", need >= 1ms (poll(2) counts milliseconds)"));
  }
  std::lock_guard<std::mutex> lock(g_tuning_mu);
  g_tuning = tuning;
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<Communicator>> NewUcxCommunicator(const ProcessContext& ctx, Options options) {
  if (options.timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("comm Options.timeout = ", absl::FormatDuration(options.timeout), " is negative"));
  }
  // The bootstrap: an mpi communicator, for the address exchange and to agree on success.
  WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> mpi, NewMpiCommunicator(ctx, options));
  auto st = std::make_shared<UcxState>(mpi->rank(), mpi->size());

  // Everything local first; every rank then agrees on whether all succeeded, so that no rank connects to a rank
  // that failed (or waits for it).
  std::string address;
  Status local = [&]() -> Status {
    ucp_config_t* config = nullptr;
    ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
    if (s != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "reading the UCX configuration", s);
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS | UCP_PARAM_FIELD_NAME;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    params.estimated_num_eps = static_cast<size_t>(st->size);
    params.name = "waveep";
    s = ucp_init(&params, config, &st->context);
    ucp_config_release(config);
    if (s != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_init", s);
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    s = ucp_worker_create(st->context, &wp, &st->worker);
    if (s != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_worker_create", s);
    if (ucp_worker_get_efd(st->worker, &st->efd) != UCS_OK) st->efd = -1;
    const std::pair<unsigned, ucp_am_recv_callback_t> handlers[] = {
        {kAmCts, OnCts}, {kAmFin, OnFin}, {kAmCtl, OnCtl}, {kAmAbort, OnAbort}};
    for (const auto& [id, cb] : handlers) {
      ucp_am_handler_param_t hp{};
      hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
      hp.id = id;
      hp.cb = cb;
      hp.arg = st.get();
      s = ucp_worker_set_am_recv_handler(st->worker, &hp);
      if (s != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_worker_set_am_recv_handler", s);
    }
    ucp_address_t* addr = nullptr;
    size_t len = 0;
    s = ucp_worker_get_address(st->worker, &addr, &len);
    if (s != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_worker_get_address", s);
    address.assign(reinterpret_cast<const char*>(addr), len);
    ucp_worker_release_address(st->worker, addr);
    return absl::OkStatus();
  }();
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(st->rank, st->size, local,
                                       [&](const void* s, size_t b, void* r) { return mpi->Allgather(s, b, r); }));
  WAVEEP_ASSIGN_OR_RETURN(Directory dir, Exchange(*mpi, ctx, address));
  st->node_ids = dir.node_ids;
  st->hosts = dir.hosts;
  st->pids = dir.pids;
  st->watch_pid.assign(st->size, false);
  for (int p = 0; p < st->size; ++p) {
    st->watch_pid[p] = p != st->rank && dir.node_ids[p] == ctx.node_id && UcxState::ProcessAlive(dir.pids[p]);
  }
  st->eps.assign(st->size, nullptr);
  local = [&]() -> Status {
    for (int p = 0; p < st->size; ++p) {
      if (p == st->rank) continue;
      st->ep_args.push_back(std::make_unique<EpArg>(EpArg{st.get(), p}));
      ucp_ep_params_t ep{};
      ep.field_mask =
          UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
      ep.address = reinterpret_cast<const ucp_address_t*>(dir.addresses[p].data());
      // Peer-failure mode between hosts only: UCX's shared-memory transports do not offer it, and asking for it
      // inside a host would push those peers onto TCP over loopback. Same-host peers are watched by process id.
      const bool same_host = dir.node_ids[p] == ctx.node_id;
      ep.err_mode = same_host ? UCP_ERR_HANDLING_MODE_NONE : UCP_ERR_HANDLING_MODE_PEER;
      ep.err_handler.cb = OnEpError;
      ep.err_handler.arg = st->ep_args.back().get();
      const ucs_status_t s = ucp_ep_create(st->worker, &ep, &st->eps[p]);
      if (s != UCS_OK) {
        st->eps[p] = nullptr;
        return UcxError(absl::StatusCode::kUnavailable, absl::StrCat("connecting to ", st->Peer(p)), s);
      }
    }
    return absl::OkStatus();
  }();
  WAVEEP_RETURN_IF_ERROR(AgreeOnStatus(st->rank, st->size, local,
                                       [&](const void* s, size_t b, void* r) { return mpi->Allgather(s, b, r); }));
  auto comm = std::make_unique<UcxCommunicator>(std::move(st), options);
  // Wire up every endpoint now (a barrier over UCX), so that the first exchange does not pay for it.
  WAVEEP_RETURN_IF_ERROR(comm->Barrier());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace waveep::comm::internal
