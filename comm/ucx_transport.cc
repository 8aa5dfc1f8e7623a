// Copyright 2026 The waveep Authors.
//
// The "ucx" backend: host-memory exchanges as one-sided puts over UCP, progressed by the waiting thread, with peer
// failure detection. See ucx_transport.h for the design (CTS / put / FIN, control messages, waiting, what happens
// after an error).
#include "comm/ucx_transport.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/types.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/comm_internal.h"
#include "comm/mpi_transport.h"
#include "comm/shm_ring_internal.h"

namespace waveep::comm::internal {
namespace {

using Clock = std::chrono::steady_clock;

// Active message ids.
constexpr unsigned kAmCts = 0x57a1;    // receiver -> sender: clear to send, where, and the remote key
constexpr unsigned kAmFin = 0x57a2;    // sender -> receiver: the put has landed
constexpr unsigned kAmCtl = 0x57a3;    // control collectives (barrier, allgather, count exchange)
constexpr unsigned kAmAbort = 0x57a4;  // either side: this rank gave up on an exchange (timeout or error)

// The cause an abort message carries (its header after AbortMsg), at most.
constexpr size_t kMaxAbortReasonBytes = 480;
// The channel of an abort that is about the whole job: its sender lost a rank of the job and is leaving.
constexpr uint32_t kLeavingChannel = 0xffffffffu;

// A block UCX cannot send at once is copied into the message up to this size (see SendLocked): below UCX's
// rendezvous threshold inside a host (a rendezvous block is never sent at once, so copying it only costs: a 16 KiB
// block copied ran at 0.47-0.51x of the mpi backend, one host np 2, 0.92x sent from the caller's block;
// docs/perf/ucx-2026-11-30).
constexpr size_t kCopyBeforeQueueBytes = size_t{8} << 10;

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
  // Every landing buffer of the sender with an id below this is gone (evicted): the receiver of this message may
  // destroy its keys for them (UcxState::PruneRkeysLocked).
  uint32_t live_from;
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
  uint32_t peer_lost;  // 1: the sender gave up because a rank of the job is gone (its reason names it)
  uint32_t reserved;
};
// An abort as received: its sender's reason.
struct AbortNote {
  std::string why;
  bool peer_lost = false;
};
struct CtlMsg {
  int32_t from;
  uint32_t reserved;
  uint64_t seq;
};

using XKey = std::tuple<uint32_t, uint64_t, int>;  // (channel, seq, peer)

// Data path "am", blocks that do not go through the shared-memory rings (between hosts, or inside a host without
// rings): each block is a tagged message (ucp_tag_*), so UCX matches it to the posted receive and lands it in the
// receive block itself, eager fragments included. An active message is reassembled into UCX's buffer and copied from
// there: measured 0.47-0.64x of the mpi backend at 16 KiB per peer and 0.87-0.93x at 64 KiB-1 MiB on one host, np 2,
// and 0.87-0.93x at 4 MiB between two emulated hosts (docs/perf/ucx-2026-11-30). The tag is (sender rank: 20 bits,
// channel: 4 bits, sequence number: its low 40 bits), all 64 bits matched.
constexpr int kTagSeqBits = 40;
constexpr int kTagChannelBits = 4;
constexpr int kMaxTagRanks = 1 << (64 - kTagSeqBits - kTagChannelBits);
constexpr ucp_tag_t kTagMaskAll = ~ucp_tag_t{0};
// Receives this rank gave up on whose tagged block may still come (to be dropped on arrival), at most; and how often
// the worker's unexpected queue is probed for them (the probes run in the waiters' progress loop).
constexpr size_t kMaxAbandonedTags = 64;
constexpr auto kAbandonedTagProbeEvery = std::chrono::milliseconds(1);

ucp_tag_t DataTag(const XKey& key) {
  const auto [channel, seq, from] = key;
  return (static_cast<ucp_tag_t>(from) << (kTagSeqBits + kTagChannelBits)) |
         (static_cast<ucp_tag_t>(channel & ((1u << kTagChannelBits) - 1)) << kTagSeqBits) |
         (seq & ((ucp_tag_t{1} << kTagSeqBits) - 1));
}

struct Cts {
  uint64_t addr = 0;
  uint64_t bytes = 0;
  uint32_t rkey_id = 0;
};

// A block of another size than the receive posted for it (tag path), for recv_errors (the exchange adds its name).
// `got_more`: the block did not fit (a tagged message is not delivered then, so its size is unknown).
Status SizeMismatch(int from, size_t got, size_t want, bool got_more = false) {
  return absl::InvalidArgumentError(absl::StrCat("received ", got_more ? "more than " : "", got, " bytes from rank ",
                                                 from, " where ", want,
                                                 " were expected (recv_bytes disagrees with what it sends)"));
}

// A communicator-owned registered buffer the put path's blocks land in (see AcquireLandingLocked). The receiver copies
// each block out once its FIN came. A landing buffer of an exchange this rank gave up on is never reused: a late
// sender may still put into it.
struct Landing {
  char* base = nullptr;
  size_t capacity = 0;
  ucp_mem_h memh = nullptr;
  uint32_t id = 0;
  std::string packed;         // ucp_rkey_pack's output
  std::vector<bool> sent_to;  // peers that already have `packed`
  uint64_t last_use = 0;
  bool in_use = false;  // an exchange runs on it
};

// Landing buffers: at least this large, each block in them aligned to kLandingAlign, at most kUcxMaxFreeLandings kept
// registered while unused.
constexpr size_t kMinLandingBytes = size_t{64} << 10;
constexpr size_t kLandingAlign = 64;

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// The cores this process may run on (its affinity mask; all online cores when that cannot be read).
int UsableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

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

// A tagged block of a receive this rank gave up on, being received into scratch memory to be dropped.
struct TagDrop {
  Op op;
  std::unique_ptr<char[]> scratch;
};

// An active message with its header and data kept alive until UCX is done with them. `payload` (when set) is sent
// instead of `data` and belongs to the caller (a send block).
struct AmSend {
  std::string header;
  std::string data;
  const void* payload = nullptr;
  size_t payload_bytes = 0;
  Op op;
  int peer = -1;
  // Sent through the packing datatype (UcxState::pack_dt): UCX reads `payload` one fragment at a time, as it sends
  // them, so a send given up on is repointed to a copy of the block (UcxState::AbandonLocked).
  bool packed = false;
};

// The packing datatype's callbacks: the "buffer" UCX is given is the AmSend itself, and each fragment is copied out
// of its payload when UCX sends it. UCX calls these inside ucp_worker_progress or a send call, so under mu.
void* PackStart(void* /*context*/, const void* buffer, size_t /*count*/) { return const_cast<void*>(buffer); }
void* UnpackStart(void* /*context*/, void* /*buffer*/, size_t /*count*/) { return nullptr; }  // never received into
size_t PackedSize(void* state) { return static_cast<AmSend*>(state)->payload_bytes; }
size_t PackFragment(void* state, size_t offset, void* dest, size_t max_length) {
  const auto* m = static_cast<const AmSend*>(state);
  const size_t n = std::min(max_length, m->payload_bytes - offset);
  std::memcpy(dest, static_cast<const char*>(m->payload) + offset, n);
  return n;
}
ucs_status_t Unpack(void* /*state*/, size_t /*offset*/, const void* /*src*/, size_t /*length*/) {
  return UCS_ERR_UNSUPPORTED;
}
void PackFinish(void* /*state*/) {}

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
    peer_live_from.assign(size, 0);
    pruned_below.assign(size, 0);
  }
  ~UcxState();

  const int rank;
  const int size;
  std::vector<int> node_ids;
  std::vector<std::string> hosts;
  std::vector<int64_t> pids;    // every rank's process id, for the liveness check of same-host peers
  std::vector<bool> watch_pid;  // same-host peers whose /proc entry is visible (same PID namespace)
  std::vector<int> all_peers;   // every rank but this one
  std::atomic<int64_t> next_pid_check_ns{0};
  bool oversubscribed = false;  // more ranks on this host than this process may use cores (see Waiter)

  std::mutex mu;  // every ucp_* call on the worker and every table below
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  ucp_datatype_t pack_dt = 0;  // between hosts, blocks go out through it (AmSend::packed); 0: not created
  int efd = -1;                // the worker's event fd, -1: none (waiters sleep instead)
  std::vector<ucp_ep_h> eps;
  std::vector<std::unique_ptr<EpArg>> ep_args;
  std::unique_ptr<std::atomic<int>[]> failed;  // ucs_status_t per peer, UCS_OK while alive
  // Peers that left the job because they lost a rank of it, and why (their kLeavingChannel abort). Written by the
  // abort handler under mu, read by FailedPeer, which may run without mu: its own lock.
  std::mutex left_mu;
  std::map<int, std::string> left_job;

  std::map<XKey, Cts> cts;
  std::map<XKey, uint64_t> fins;     // landed blocks (put path: FIN; am path: tagged receive done)
  std::map<XKey, AbortNote> aborts;  // (channel, seq, peer that gave up) -> why
  bool leaving = false;              // this rank told every peer it is leaving (SendLeavingLocked)
  // Set once this rank knows that a rank of the job is gone (its endpoint failed, its process died, it left, or a
  // peer gave up because of such a loss). From then on the communicator cannot serve the job, and the first error
  // tells every peer so (SendLeavingLocked). A timeout alone does not set it: after one the communicator stays usable.
  mutable std::atomic<bool> peer_lost{false};
  std::map<XKey, Status> recv_errors;  // a block that could not land, and why (no prefix yet)
  std::set<XKey> abandoned_keys;       // put path: receives this rank gave up on (a late FIN for one is dropped)
  // The same on the tag path, with the size the receive expected, until the block came (DropAbandonedTagsLocked).
  std::map<XKey, size_t> abandoned_tags;
  std::list<TagDrop> tag_drops;  // those blocks, being received to be dropped
  Clock::time_point next_tag_probe;
  bool use_put = false;                                 // the data path; the same on every rank (checked at creation)
  std::map<std::pair<uint64_t, int>, std::string> ctl;  // (seq, from) -> payload
  std::vector<std::map<uint32_t, std::string>> packed_rkeys;  // per peer, not unpacked yet
  std::vector<std::map<uint32_t, ucp_rkey_h>> rkeys;          // per peer
  // Per peer: its landing ids below this are gone (its CTS messages' live_from), and below this we destroyed its keys.
  std::vector<uint32_t> peer_live_from, pruned_below;
  std::list<Landing> landings;     // put path: free or in use (AcquireLandingLocked)
  std::list<Landing> quarantined;  // put path: abandoned with puts possibly on their way; freed with the worker
  uint32_t next_landing_id = 1;
  uint64_t use_clock = 0;
  std::string protocol_error;                      // set by a handler that met a message it cannot take
  std::vector<std::unique_ptr<AmSend>> abandoned;  // sends of a failed exchange, drained by DrainAbandonedLocked
  std::vector<std::unique_ptr<AmSend>> released;   // sends left to UCX after an error (their storage lives on)
  // Same-host data through shared-memory rings (SetUpShm; data path "am" only): this rank's segment (the rings its
  // same-host peers send into), and per same-host peer its segment and per channel the ring to send into (its own
  // lock: async exchanges on two streams send at once) and the inbox to receive from. Not under mu.
  struct ShmPeer {
    ShmSegment seg;
    std::array<ShmRing, 2> out;
    std::array<std::mutex, 2> out_mu;
    std::array<ShmInbox, 2> in;
  };
  bool shm = false;
  ShmSegment shm_own;
  std::vector<std::unique_ptr<ShmPeer>> shm_peers;  // [peer], null for peers on other hosts

  // "rank 3 (host wvp-h1)".
  std::string Peer(int p) const {
    if (p < 0 || p >= static_cast<int>(hosts.size())) return absl::StrCat("rank ", p);
    return absl::StrCat("rank ", p, " (host ", hosts[p], ")");
  }

  // Progresses the worker until it has nothing more to do right now, and drops the tagged blocks of receives given up
  // on. Requires mu.
  unsigned ProgressLocked() {
    unsigned total = 0;
    for (int i = 0; i < 64; ++i) {
      const unsigned n = ucp_worker_progress(worker);
      if (n == 0) break;
      total += n;
    }
    if (!abandoned_tags.empty() || !tag_drops.empty()) total += DropAbandonedTagsLocked();
    return total;
  }

  // Whether the blocks between this rank and `peer` go through the shared-memory rings (am path, same host); the
  // other blocks of the am path are tagged messages (between hosts, or inside a host without rings).
  bool ShmPath(int peer) const { return shm && !use_put && node_ids[peer] == node_ids[rank]; }

  // Tag path: posts the receive of block `key` into [dst, +bytes). Always a request (op->req), even for a block that
  // came early, which the exchange tests (ucp_tag_recv_request_test: status and length) and hands to
  // FinishTagReceiveLocked. Requires mu.
  void PostTagReceiveLocked(const XKey& key, char* dst, size_t bytes, Op* op) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    const ucs_status_t s = Start(ucp_tag_recv_nbx(worker, dst, bytes, DataTag(key), kTagMaskAll, &param), op);
    if (s != UCS_INPROGRESS) FinishTagReceiveLocked(key, s, 0, bytes);  // an error (UCS_OK cannot come back)
  }

  // Tag path: a receive's outcome, into fins or recv_errors as on the active-message path. Requires mu.
  void FinishTagReceiveLocked(const XKey& key, ucs_status_t s, size_t got, size_t want) {
    if (s == UCS_OK && got == want) {
      fins[key] = want;
    } else if (s == UCS_OK || s == UCS_ERR_MESSAGE_TRUNCATED) {
      recv_errors[key] = SizeMismatch(std::get<2>(key), s == UCS_OK ? got : want, want, s != UCS_OK);
    } else {
      recv_errors[key] = ReceiveFailed(key, s);
    }
  }

  // Tag path, after an exchange gave up on the receive of block `key` (`bytes` expected; op: its request, if any):
  // cancels it. Returns true if the block was already being received (a rendezvous under way): UCX may still write
  // the receive block. Otherwise the block may still come; it is then dropped on arrival. Requires mu.
  bool AbandonTagReceiveLocked(const XKey& key, size_t bytes, Op* op) {
    if (op->req != nullptr) {
      ucp_request_cancel(worker, op->req);
      const ucs_status_t s = ucp_request_check_status(op->req);
      ucp_request_free(op->req);
      op->req = nullptr;
      if (s == UCS_INPROGRESS) return true;  // matched: it is being received
      if (s == UCS_OK) return false;         // it had landed
    }
    if (abandoned_tags.size() >= kMaxAbandonedTags) abandoned_tags.erase(abandoned_tags.begin());
    abandoned_tags[key] = bytes;
    return false;
  }

  // Receives (into scratch memory, then drops) the tagged blocks of receives this rank gave up on: their senders'
  // requests complete, and UCX does not keep them as unexpected messages forever. Probes at most every
  // kAbandonedTagProbeEvery. The scratch is the size the receive expected: a larger block (a sender that disagrees)
  // is truncated and dropped all the same, so a block's claimed size never decides an allocation. Requires mu.
  unsigned DropAbandonedTagsLocked() {
    unsigned n = 0;
    const Clock::time_point now = Clock::now();
    for (auto it = abandoned_tags.begin(); now >= next_tag_probe && it != abandoned_tags.end();) {
      ucp_tag_recv_info_t info{};
      ucp_tag_message_h msg = ucp_tag_probe_nb(worker, DataTag(it->first), kTagMaskAll, /*remove=*/1, &info);
      if (msg == nullptr) {
        ++it;
        continue;
      }
      TagDrop d;
      const size_t bytes = std::min(info.length, it->second);
      d.scratch = std::make_unique<char[]>(std::max<size_t>(bytes, 1));
      ucp_request_param_t param{};
      if (Start(ucp_tag_msg_recv_nbx(worker, d.scratch.get(), bytes, msg, &param), &d.op) == UCS_INPROGRESS) {
        tag_drops.push_back(std::move(d));
      }
      it = abandoned_tags.erase(it);
      ++n;
    }
    if (now >= next_tag_probe) next_tag_probe = now + kAbandonedTagProbeEvery;
    for (auto it = tag_drops.begin(); it != tag_drops.end();) {
      it = Check(&it->op) == UCS_INPROGRESS ? std::next(it) : tag_drops.erase(it);
    }
    return n;
  }

  // Sends a control message (clear-to-send, FIN, abort, collective payload) to `peer` as an eager active message.
  // Requires mu.
  Status SendAmLocked(int peer, unsigned id, std::unique_ptr<AmSend>& m) {
    const bool same_host = node_ids[peer] == node_ids[rank];
    return SendLocked(peer, m, /*copy_if_queued=*/!same_host, "sending a control message",
                      [&](const void* data, size_t bytes, ucp_request_param_t* param) {
                        param->op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
                        param->flags = UCP_AM_SEND_FLAG_EAGER;
                        return ucp_am_send_nbx(eps[peer], id, m->header.data(), m->header.size(), data, bytes, param);
                      });
  }

  // Tag path: sends block `key` (this rank's block for `peer`) as a tagged message. Requires mu.
  Status SendTagLocked(int peer, const XKey& key, std::unique_ptr<AmSend>& m) {
    const ucp_tag_t tag = DataTag(key);
    if (node_ids[peer] != node_ids[rank]) {
      // Between hosts: eager (UCP_OP_ATTR_FLAG_FAST_CMPL takes RNDV_SEND_NBR_THRESH, which NewUcx sets to inf unless
      // the user set it), a stream of fragments. UCX 1.13's TCP rendezvous makes the two directions of a link take
      // turns (its handshakes queue behind the other direction's bulk data): 0.52-0.64x of the mpi backend at 64 KiB-
      // 16 MiB per peer. The block is read through the packing datatype, not copied before it is queued (a copy of
      // every block cost 4-6% at 4 MiB between two emulated hosts, docs/perf/ucx-2026-11-30).
      m->peer = peer;
      m->packed = true;
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FLAG_FAST_CMPL;
      param.datatype = pack_dt;
      const ucs_status_t s = Start(ucp_tag_send_nbx(eps[peer], m.get(), m->payload_bytes, tag, &param), &m->op);
      if (s == UCS_OK || s == UCS_INPROGRESS) return absl::OkStatus();
      return PeerError(peer, "sending a block", s);
    }
    return SendLocked(peer, m, /*copy_if_queued=*/false, "sending a block",
                      [&](const void* data, size_t bytes, ucp_request_param_t* param) {
                        return ucp_tag_send_nbx(eps[peer], data, bytes, tag, param);
                      });
  }

  // Starts `m` (its `payload` if set, else its `data`) through `send`. A send from the caller's block must not outlive
  // the exchange in UCX's queues (an exchange that fails returns while such a send may still be queued, and the
  // caller may free the block; ASan caught UCX replaying one after an endpoint's wireup). So it first tries to go at
  // once; if UCX would have to queue it, a block of at most kCopyBeforeQueueBytes (any size if `copy_if_queued`: a
  // control message between hosts) is copied into the message and queued from there. Only a tagged block inside a host
  // without rings (rendezvous) is queued from the caller's memory; between hosts blocks go through SendTagLocked's
  // packing datatype instead. Requires mu.
  template <typename SendFn>
  Status SendLocked(int peer, std::unique_ptr<AmSend>& m, bool copy_if_queued, absl::string_view doing,
                    const SendFn& send) {
    m->peer = peer;
    if (m->payload != nullptr) {
      ucp_request_param_t now{};
      now.op_attr_mask = UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
      ucs_status_ptr_t p = send(m->payload, m->payload_bytes, &now);
      if (p == nullptr) return absl::OkStatus();
      if (!UCS_PTR_IS_ERR(p)) {
        Start(p, &m->op);
        return absl::OkStatus();
      }
      if (UCS_PTR_STATUS(p) != UCS_ERR_NO_RESOURCE) return PeerError(peer, doing, UCS_PTR_STATUS(p));
      if (copy_if_queued || m->payload_bytes <= kCopyBeforeQueueBytes) {
        m->data.assign(static_cast<const char*>(m->payload), m->payload_bytes);
        m->payload = nullptr;
      }
    }
    const void* data = m->payload != nullptr ? m->payload : (m->data.empty() ? nullptr : m->data.data());
    const size_t bytes = m->payload != nullptr ? m->payload_bytes : m->data.size();
    ucp_request_param_t param{};
    const ucs_status_t s = Start(send(data, bytes, &param), &m->op);
    if (s == UCS_OK || s == UCS_INPROGRESS) return absl::OkStatus();
    return PeerError(peer, doing, s);
  }

  // A free landing buffer of at least `bytes` (the smallest that fits), allocated and registered by UCX if none is;
  // marked in use. Requires mu.
  StatusOr<Landing*> AcquireLandingLocked(size_t bytes) {
    Landing* best = nullptr;
    int free_count = 0;
    for (Landing& l : landings) {
      if (l.in_use) continue;
      ++free_count;
      if (l.capacity >= bytes && (best == nullptr || l.capacity < best->capacity)) best = &l;
    }
    if (best == nullptr) {
      if (free_count >= kUcxMaxFreeLandings) {  // make room: the least recently used free one goes
        auto lru = landings.end();
        for (auto it = landings.begin(); it != landings.end(); ++it) {
          if (!it->in_use && (lru == landings.end() || it->last_use < lru->last_use)) lru = it;
        }
        ucp_mem_unmap(context, lru->memh);
        landings.erase(lru);
      }
      size_t capacity = kMinLandingBytes;
      while (capacity < bytes) capacity *= 2;
      Landing l;
      ucp_mem_map_params_t mp{};
      mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_FLAGS;
      mp.address = nullptr;
      mp.length = capacity;
      mp.flags = UCP_MEM_MAP_ALLOCATE;
      ucs_status_t s = ucp_mem_map(context, &mp, &l.memh);
      if (s != UCS_OK) {
        return UcxError(absl::StatusCode::kResourceExhausted,
                        absl::StrCat("allocating a registered landing buffer of ", capacity, " bytes"), s);
      }
      ucp_mem_attr_t attr{};
      attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
      s = ucp_mem_query(l.memh, &attr);
      void* key = nullptr;
      size_t key_len = 0;
      if (s == UCS_OK) s = ucp_rkey_pack(context, l.memh, &key, &key_len);
      if (s != UCS_OK) {
        ucp_mem_unmap(context, l.memh);
        return UcxError(absl::StatusCode::kInternal, "registering a landing buffer", s);
      }
      l.packed.assign(static_cast<const char*>(key), key_len);
      ucp_rkey_buffer_release(key);
      l.base = static_cast<char*>(attr.address);
      l.capacity = attr.length;
      l.id = next_landing_id++;
      l.sent_to.assign(size, false);
      landings.push_back(std::move(l));
      best = &landings.back();
    }
    best->in_use = true;
    best->last_use = ++use_clock;
    return best;
  }

  // Ends an exchange's use of its landing buffer: back to the free ones, or, when a peer may still put into it (the
  // exchange was abandoned with blocks not landed), into quarantine until the worker is gone. Requires mu.
  void ReleaseLandingLocked(Landing* l, bool puts_may_follow) {
    if (l == nullptr) return;
    l->in_use = false;
    if (!puts_may_follow) return;
    for (auto it = landings.begin(); it != landings.end(); ++it) {
      if (&*it == l) {
        quarantined.splice(quarantined.end(), landings, it);
        return;
      }
    }
  }

  // The smallest id of a landing buffer this rank still has (free, in use or quarantined); every id below it was
  // evicted. Requires mu.
  uint32_t LiveFromLocked() const {
    uint32_t live_from = next_landing_id;
    for (const std::list<Landing>* list : {&landings, &quarantined}) {
      for (const Landing& l : *list) live_from = std::min(live_from, l.id);
    }
    return live_from;
  }

  // Destroys the keys of `peer`'s landing buffers that it evicted. Safe: a landing buffer is evicted only when free,
  // i.e. after every put into it completed (a sender flushes its put before its FIN, and the buffer was released
  // after the FINs); a quarantined one is never evicted (and holds live_from down: pruning stops there). Requires mu.
  void PruneRkeysLocked(int peer) {
    const uint32_t below = peer_live_from[peer];
    if (below <= pruned_below[peer]) return;
    auto& keys = rkeys[peer];
    for (auto it = keys.begin(); it != keys.end() && it->first < below; it = keys.erase(it))
      ucp_rkey_destroy(it->second);
    auto& packed = packed_rkeys[peer];
    packed.erase(packed.begin(), packed.lower_bound(below));
    pruned_below[peer] = below;
  }

  // How many remote keys (unpacked or not) this rank holds for its peers' landing buffers. Requires mu.
  size_t RemoteKeysHeldLocked() const {
    size_t n = 0;
    for (int p = 0; p < size; ++p) n += rkeys[p].size() + packed_rkeys[p].size();
    return n;
  }

  // The remote key `id` of `peer`, unpacked on first use; nullptr while its CTS has not arrived. Requires mu.
  StatusOr<ucp_rkey_h> RkeyLocked(int peer, uint32_t id) {
    PruneRkeysLocked(peer);
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

  // Aborted naming the peer: its endpoint failed or an operation towards it did. Aborted, not Unavailable: a lost
  // peer is job-fatal (IsJobFatal), seen by the ranks that talked to it only, so each prints it and the job ends.
  Status PeerError(int peer, absl::string_view doing, ucs_status_t s) const {
    return absl::AbortedError(WithPrefix(PeerLostText(peer, doing, s)));
  }
  std::string PeerLostText(int peer, absl::string_view doing, ucs_status_t s) const {
    peer_lost.store(true);
    return absl::StrCat("ucx: ", Peer(peer), " failed or became unreachable while ", doing, ": ", Ucs(s),
                        " (the peer's process died, or its link went down)");
  }
  // A rendezvous receive that failed (over shared memory: the sender's process is gone, cma reads fail). For
  // recv_errors: the exchange adds its name and the rank prefix.
  Status ReceiveFailed(const XKey& key, ucs_status_t s) const {
    return absl::AbortedError(PeerLostText(std::get<2>(key), "this rank read its block", s));
  }

  // The error for the first peer in `peers` whose endpoint failed, OK if none did. Lock-free.
  // Endpoints inside a host run without UCX's peer-failure mode (UCX's shared-memory transports do not offer it), so
  // a dead peer there is found here instead: its process is gone (or a zombie), checked at most every 100 ms.
  Status FailedPeer(const std::vector<int>& peers, absl::string_view doing) {
    {
      // A peer that said why it left: its reason, not the closed endpoint that follows it.
      std::lock_guard<std::mutex> lock(left_mu);
      for (int p : peers) {
        auto it = left_job.find(p);
        if (it == left_job.end()) continue;
        peer_lost.store(true);
        return absl::AbortedError(WithPrefix(
            absl::StrCat("ucx: ", Peer(p), " left the job while ", doing, " (its error: ", it->second, ")")));
      }
    }
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
      peer_lost.store(true);
      return absl::AbortedError(WithPrefix(
          absl::StrCat("ucx: ", Peer(p), " died while ", doing, " (process ", pids[p], " on this host is gone)")));
    }
    return absl::OkStatus();
  }

  // FailedPeer over every peer, for a caller outside this communicator's exchanges (CheckPeerFailures, while the job
  // waits in an MPI collective): progresses the worker first when no exchange is doing so (endpoint errors are
  // delivered by progress), never waiting for the lock.
  Status CheckAllPeers(absl::string_view doing) {
    std::unique_lock<std::mutex> lock(mu, std::try_to_lock);
    if (lock.owns_lock()) ProgressLocked();
    Status s = FailedPeer(all_peers, doing);
    if (!s.ok() && lock.owns_lock()) {
      SendLeavingLocked(s);
      DrainAbandonedLocked(kCancelGrace);
    }
    return s;
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

  // Tells the peers that still expected something from this exchange that this rank gave up on it, and why (the
  // first kMaxAbortReasonBytes of `why`), so that they fail at once instead of waiting for their timeout (and never
  // put into this rank's buffers), their error carrying the cause (a dead rank is named by every rank that waited
  // on it, directly or through this one). Best effort. Requires mu.
  void SendAbortsLocked(uint32_t channel, uint64_t seq, const std::vector<int>& peers, const Status& why) {
    const absl::string_view reason = absl::string_view(why.message()).substr(0, kMaxAbortReasonBytes);
    std::set<int> once(peers.begin(), peers.end());  // a peer both sent to and received from gets one message
    for (int p : once) {
      if (failed[p].load() != UCS_OK) continue;
      auto m = std::make_unique<AmSend>();
      const AbortMsg h{channel, rank, seq, peer_lost.load() ? 1u : 0u, 0};
      m->header.assign(reinterpret_cast<const char*>(&h), sizeof(h));
      m->header.append(reason.data(), reason.size());
      if (SendAmLocked(p, kAmAbort, m).ok()) AbandonLocked(std::move(m));
    }
  }

  // After an error caused by a lost rank (peer_lost) in an exchange or collective: tells every peer still reachable
  // that this rank is leaving the job, and why, once. The CLI ends the job after such an error, and this rank's
  // endpoints close when its communicator goes; a peer waiting on it then reports this reason (which names the rank
  // that died) rather than a closed endpoint. Best effort. Requires mu.
  void SendLeavingLocked(const Status& why) {
    if (leaving || why.ok() || !peer_lost.load()) return;
    leaving = true;
    SendAbortsLocked(kLeavingChannel, 0, all_peers, why);
  }

  // Keeps an in-flight send of an exchange or collective that failed, for DrainAbandonedLocked. Requires mu.
  void AbandonLocked(std::unique_ptr<AmSend> m) {
    if (m == nullptr || Check(&m->op) != UCS_INPROGRESS) return;
    if (m->packed && m->payload != m->data.data()) {
      m->data.assign(static_cast<const char*>(m->payload), m->payload_bytes);
      m->payload = m->data.data();
    }
    abandoned.push_back(std::move(m));
  }

  // After an error: progresses for up to `grace` so that the abandoned sends (the aborts above all, which tell the
  // peers to stop waiting) leave this rank even if it never progresses this worker again; whatever is still in
  // flight then is released to UCX (its header stays allocated until the state is destroyed). Returns how many data
  // blocks were released in flight: UCX may still read those send buffers. Requires mu.
  int DrainAbandonedLocked(absl::Duration grace) {
    const Clock::time_point deadline = Clock::now() + absl::ToChronoNanoseconds(grace);
    for (;;) {
      ProgressLocked();
      bool pending = false;
      for (auto& m : abandoned) pending = (m->op.req != nullptr && Check(&m->op) == UCS_INPROGRESS) || pending;
      if (!pending || Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    int data_in_flight = 0;
    std::vector<std::unique_ptr<AmSend>> keep;
    for (auto& m : abandoned) {
      if (m->op.req == nullptr) continue;  // done: its storage can go
      ucp_request_free(m->op.req);
      m->op.req = nullptr;
      if (m->payload != nullptr && !m->packed) ++data_in_flight;
      keep.push_back(std::move(m));
    }
    released.insert(released.end(), std::make_move_iterator(keep.begin()), std::make_move_iterator(keep.end()));
    abandoned.clear();
    return data_in_flight;
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
  if (m.live_from > m.rkey_id) {  // the buffer it names is live, so live_from <= its id
    st->protocol_error = absl::StrCat("a clear-to-send message from rank ", m.from, " naming landing buffer ",
                                      m.rkey_id, " with live_from ", m.live_from, " (above it)");
    return UCS_OK;
  }
  if (length > 0) st->packed_rkeys[m.from][m.rkey_id].assign(static_cast<const char*>(data), length);
  st->peer_live_from[m.from] = std::max(st->peer_live_from[m.from], m.live_from);
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
  const XKey key{m.channel, m.seq, m.from};
  if (st->abandoned_keys.count(key) > 0) return UCS_OK;  // a late put into a quarantined landing buffer: dropped
  st->fins[key] = m.bytes;
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
  if (header_length < sizeof(m) || header_length > sizeof(m) + kMaxAbortReasonBytes || length != 0) {
    st->protocol_error = absl::StrCat("an abort message of ", header_length, "+", length, " bytes");
    return UCS_OK;
  }
  std::memcpy(&m, header, sizeof(m));
  if (m.from < 0 || m.from >= st->size) {
    st->protocol_error = absl::StrCat("an abort message from rank ", m.from);
    return UCS_OK;
  }
  std::string why(static_cast<const char*>(header) + sizeof(m), header_length - sizeof(m));
  if (m.channel == kLeavingChannel) {
    std::lock_guard<std::mutex> lock(st->left_mu);
    st->left_job[m.from] = std::move(why);
  } else {
    st->aborts[XKey{m.channel, m.seq, m.from}] = AbortNote{std::move(why), m.peer_lost != 0};
  }
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
    for (TagDrop& d : tag_drops) {
      if (d.op.req != nullptr) ucp_request_free(d.op.req);  // its scratch goes with this state, after the worker
    }
    for (Landing& l : landings) ucp_mem_unmap(context, l.memh);
    ucp_worker_destroy(worker);
    // Last: a late put (emulated by an active message over shared memory and TCP) lands while the worker progresses.
    for (Landing& l : quarantined) ucp_mem_unmap(context, l.memh);
  }
  if (pack_dt != 0) ucp_dt_destroy(pack_dt);  // after the worker: a released send may still have been packing
  if (context != nullptr) ucp_cleanup(context);
}

// Waits between progress rounds: busy, then yielding, then asleep on the worker's event fd.
class Waiter {
 public:
  // `oversubscribed` (this host runs more ranks than this process may use cores): no busy polling, the core goes to
  // the peers from the first idle round on (see UcxTuning::busy_poll).
  Waiter(const UcxTuning& t, bool oversubscribed, absl::Duration timeout)
      : busy_(absl::ToChronoNanoseconds(oversubscribed && t.no_busy_poll_when_oversubscribed ? absl::ZeroDuration()
                                                                                             : t.busy_poll)),
        spin_(absl::ToChronoNanoseconds(t.spin)),
        min_sleep_(absl::ToChronoNanoseconds(t.min_sleep)),
        max_sleep_(absl::ToChronoNanoseconds(t.max_sleep)),
        deadline_(Clock::now() + absl::ToChronoNanoseconds(timeout)),
        idle_since_(Clock::now()) {}

  // After a round; false once the deadline passed. Called without the state's mutex. `poll_only`: something this
  // waiter waits for does not wake the worker's event fd (shared-memory rings), so past the spin it sleeps min_sleep
  // at a time instead.
  bool Next(bool progressed, UcxState& st, bool poll_only = false) {
    const Clock::time_point now = Clock::now();
    if (progressed) {
      idle_since_ = now;
      sleep_ = Clock::duration::zero();
      return now < deadline_;
    }
    if (now >= deadline_) return false;
    const Clock::duration idle = now - idle_since_;
    if (idle < busy_) return true;
    if (idle < spin_ || st.efd < 0 || poll_only) {
      if (idle < spin_) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(poll_only ? min_sleep_ : std::chrono::microseconds(50));
      }
      return true;
    }
    ucs_status_t s;
    {
      std::lock_guard<std::mutex> lock(st.mu);
      s = ucp_worker_arm(st.worker);
    }
    if (s == UCS_OK) {
      // Sleeps grow from min_sleep to max_sleep while nothing happens: an event wakes the waiter at once, and where a
      // transport's wakeup is late the loss stays a fraction of the time already spent waiting.
      sleep_ = sleep_ == Clock::duration::zero() ? min_sleep_ : std::min<Clock::duration>(2 * sleep_, max_sleep_);
      const Clock::duration nap = std::min<Clock::duration>(sleep_, deadline_ - now);
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(nap).count();
      timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
      pollfd pfd{st.efd, POLLIN, 0};
      ppoll(&pfd, 1, &ts, nullptr);
    }
    return true;
  }

 private:
  const Clock::duration busy_;
  const Clock::duration spin_;
  const Clock::duration min_sleep_;
  const Clock::duration max_sleep_;
  const Clock::time_point deadline_;
  Clock::time_point idle_since_;
  Clock::duration sleep_ = Clock::duration::zero();
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
  WAVEEP_RETURN_IF_ERROR(CheckSelfBlock(args, rank));
  WAVEEP_RETURN_IF_ERROR(CheckHostBlocks(args.send, args.send_bytes, args.send_offsets, "send"));
  WAVEEP_RETURN_IF_ERROR(CheckHostBlocks(args.recv, args.recv_bytes, args.recv_offsets, "recv"));
  Plan plan;
  // Step i pairs "receive from rank - i" with "send to rank + i", as the mpi backend does.
  for (int i = 1; i < size; ++i) {
    const int p = (rank - i + size) % size;
    if (args.recv_bytes[p] == 0) continue;
    char* dst = static_cast<char*>(args.recv) + args.recv_offsets[p];
    plan.recvs.push_back(Block{p, nullptr, dst, args.recv_bytes[p]});
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
// Data path "am" (the default): tagged block (phase kFin until UCX completes it) -> done. Data path "put": CTS ->
// put + flush -> FIN -> done.
// A block through a shared-memory ring (same host, am path) is in phase kShm until its ring send is done.
struct SendState {
  enum Phase { kWaitCts, kPutting, kFin, kShm, kDone } phase = kWaitCts;
  Op put;
  Op flush;
  std::unique_ptr<AmSend> fin;  // the FIN (put path) or the tagged block (am path)
};

// Runs one exchange to completion on the calling thread.
Status RunExchange(UcxState& st, const Plan& plan, absl::Duration timeout) {
  std::vector<SendState> sends(plan.sends.size());
  std::vector<bool> recv_done(plan.recvs.size(), false);
  std::vector<Op> tag_recvs(plan.recvs.size());  // tag path: receives not done yet
  std::vector<std::unique_ptr<AmSend>> ctss;
  // Put path: the landing buffer, where each receive block lands (landing_offsets[i]), and the blocks whose FIN came
  // this round, copied out of it after the lock is released.
  Landing* landing = nullptr;
  std::vector<size_t> landing_offsets;
  std::vector<size_t> to_copy;
  size_t sends_left = plan.sends.size(), recvs_left = plan.recvs.size();
  Status status;
  // Same-host blocks through the shared-memory rings: their ring state, and which blocks they are.
  const int chan = plan.channel == kChanBlocking ? 1 : 0;
  std::vector<ShmRing::Send> shm_sends(plan.sends.size());
  std::vector<ShmInbox::Recv> shm_recvs(plan.recvs.size());  // begun on their inbox: never reallocated
  std::vector<size_t> shm_send_idx, shm_recv_idx;

  // Gives up on the exchange (requires mu): tells `peers` why at once (and, when a rank is lost, every peer that this
  // rank leaves the job), abandons whatever is still in flight, and returns the note for the error message.
  auto give_up = [&](const std::vector<int>& peers, const Status& why) -> std::string {
    st.SendAbortsLocked(plan.channel, plan.seq, peers, why);
    st.SendLeavingLocked(why);
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
    // Ring receives end here; the rest of a block that did not complete is dropped when it comes. (A ring send
    // needs nothing: what it published is a copy.)
    for (size_t i : shm_recv_idx) st.shm_peers[plan.recvs[i].peer]->in[chan].End(&shm_recvs[i], !recv_done[i]);
    // Blocks that arrive from now on are dropped (a rendezvous already under way still lands).
    int receiving = 0;
    for (size_t i = 0; i < plan.recvs.size(); ++i) {
      // Ring receives were ended above.
      if (recv_done[i] || st.ShmPath(plan.recvs[i].peer)) continue;
      const XKey key{plan.channel, plan.seq, plan.recvs[i].peer};
      if (st.use_put) {
        st.abandoned_keys.insert(key);
        continue;
      }
      receiving += st.AbandonTagReceiveLocked(key, plan.recvs[i].bytes, &tag_recvs[i]) ? 1 : 0;
      st.fins.erase(key);
      st.recv_errors.erase(key);
    }
    const bool puts_may_follow = std::count(recv_done.begin(), recv_done.end(), false) > 0;
    std::string note;
    if (landing != nullptr && puts_may_follow) {
      note = absl::StrCat(" [its landing buffer (", landing->capacity,
                          " bytes) stays reserved until the communicator is destroyed: a late sender may still put "
                          "into it]");
    }
    st.ReleaseLandingLocked(landing, puts_may_follow);
    landing = nullptr;
    puts += st.DrainAbandonedLocked(kCancelGrace);
    if (receiving > 0) {
      note = absl::StrCat(" [", receiving,
                          " block(s) already being received were left to UCX: it may still write their receive "
                          "buffers]",
                          note);
    }
    if (puts == 0) return note;
    return absl::StrCat(" [", puts, " block(s) still in flight were left to UCX: it may still read their send buffers]",
                        note);
  };

  {
    std::lock_guard<std::mutex> lock(st.mu);
    if (!st.protocol_error.empty()) {
      return absl::InternalError(WithPrefix(absl::StrCat("ucx: received ", st.protocol_error)));
    }
    if (!st.use_put) {
      // am path: no handshake. Receives are posted, sends go at once: through the rings inside a host, tagged
      // messages between hosts (and inside a host without rings).
      for (size_t i = 0; i < plan.recvs.size(); ++i) {
        const Block& b = plan.recvs[i];
        const XKey key{plan.channel, plan.seq, b.peer};
        if (st.ShmPath(b.peer)) {
          ShmInbox::Recv& r = shm_recvs[i];
          r.seq = plan.seq;
          r.dst = b.dst;
          r.bytes = b.bytes;
          st.shm_peers[b.peer]->in[chan].Begin(&r);
          shm_recv_idx.push_back(i);
        } else {
          st.PostTagReceiveLocked(key, b.dst, b.bytes, &tag_recvs[i]);
        }
      }
      for (size_t i = 0; i < plan.sends.size() && status.ok(); ++i) {
        const Block& b = plan.sends[i];
        SendState& s = sends[i];
        if (st.ShmPath(b.peer)) {
          ShmRing::Send& r = shm_sends[i];
          r.seq = plan.seq;
          r.src = b.src;
          r.bytes = b.bytes;
          shm_send_idx.push_back(i);
          s.phase = SendState::kShm;
          continue;
        }
        s.fin = std::make_unique<AmSend>();
        s.fin->payload = b.src;
        s.fin->payload_bytes = b.bytes;
        // The receiver's key for this block names this rank.
        status = st.SendTagLocked(b.peer, XKey{plan.channel, plan.seq, st.rank}, s.fin);
        s.phase = SendState::kFin;
      }
    } else if (!plan.recvs.empty()) {
      size_t need = 0;
      for (const Block& b : plan.recvs) {
        landing_offsets.push_back(need);
        need += AlignUp(b.bytes, kLandingAlign);
      }
      StatusOr<Landing*> l = st.AcquireLandingLocked(need);
      if (!l.ok()) return Status(l.status().code(), absl::StrCat(What(plan), ": ", l.status().message()));
      landing = *l;
      for (size_t i = 0; i < plan.recvs.size(); ++i) {
        const Block& b = plan.recvs[i];
        auto m = std::make_unique<AmSend>();
        CtsMsg h{plan.channel, st.rank,     plan.seq, reinterpret_cast<uint64_t>(landing->base + landing_offsets[i]),
                 b.bytes,      landing->id, 0,        st.LiveFromLocked()};
        if (!landing->sent_to[b.peer]) {
          m->data = landing->packed;
          h.rkey_len = static_cast<uint32_t>(m->data.size());
          landing->sent_to[b.peer] = true;
        }
        m->header.assign(reinterpret_cast<const char*>(&h), sizeof(h));
        status = st.SendAmLocked(b.peer, kAmCts, m);
        ctss.push_back(std::move(m));
        if (!status.ok()) break;
      }
    }
    if (!status.ok()) {
      // Every peer of the exchange hears why, as on the later error paths. Without it a peer on this host saw this
      // rank's process end (it exits after the job-fatal grace) before anything named the rank that died
      // (cluster.ucx_2x2 in CI).
      std::vector<int> peers;
      for (const Block& b : plan.sends) peers.push_back(b.peer);
      for (const Block& b : plan.recvs) peers.push_back(b.peer);
      const std::string note = give_up(peers, status);
      return Status(status.code(), absl::StrCat(What(plan), ": ", status.message(), note));
    }
  }
  if (plan.self_bytes > 0) std::memcpy(plan.self_dst, plan.self_src, plan.self_bytes);

  Waiter waiter(GetUcxTuning(), st.oversubscribed, timeout);
  std::vector<int> pending_peers;
  for (;;) {
    bool progressed = false;
    // The shared-memory rings need neither UCX nor the communicator's mutex (each ring's senders share its out_mu,
    // each inbox locks itself).
    Status shm_status;
    size_t shm_left = 0;
    for (size_t i : shm_send_idx) {
      if (sends[i].phase != SendState::kShm) continue;
      UcxState::ShmPeer& sp = *st.shm_peers[plan.sends[i].peer];
      {
        std::lock_guard<std::mutex> lock(sp.out_mu[chan]);
        progressed = sp.out[chan].PushSend(shm_sends[i]) || progressed;
      }
      if (shm_sends[i].done) {
        sends[i].phase = SendState::kDone;
        --sends_left;
      } else {
        ++shm_left;
      }
    }
    for (size_t i : shm_recv_idx) {
      if (recv_done[i] || !shm_status.ok()) continue;
      const int p = plan.recvs[i].peer;
      ShmInbox& inbox = st.shm_peers[p]->in[chan];
      ShmInbox::Recv r;
      progressed = inbox.Poll(&shm_recvs[i], &r) || progressed;
      if (r.other_total != 0) {
        shm_status = absl::InvalidArgumentError(WithPrefix(
            absl::StrCat(What(plan), ": ", st.Peer(p), " sends ", r.other_total, " bytes to this rank where ", r.bytes,
                         " are expected (recv_bytes[", p, "] disagrees with what it sends)")));
      } else if (r.done()) {
        recv_done[i] = true;
        --recvs_left;
      } else {
        ++shm_left;
      }
    }
    {
      std::lock_guard<std::mutex> lock(st.mu);
      progressed = st.ProgressLocked() > 0 || progressed;
      pending_peers.clear();
      for (size_t i = 0; i < sends.size(); ++i) {
        if (sends[i].phase != SendState::kDone && sends[i].phase != SendState::kShm) {
          pending_peers.push_back(plan.sends[i].peer);
        }
      }
      // A peer that gave up on this exchange fails it here, before anything is put into its buffers. On the am
      // path only a peer this rank still waits for counts: one it receives from, or one whose ring send is not done
      // (a block sent to it otherwise is simply dropped there).
      const size_t aborts_from = st.use_put ? 0 : pending_peers.size();
      for (size_t i = 0; i < sends.size(); ++i) {
        if (sends[i].phase == SendState::kShm) pending_peers.push_back(plan.sends[i].peer);
      }
      for (size_t i = 0; i < plan.recvs.size(); ++i) {
        if (!recv_done[i]) pending_peers.push_back(plan.recvs[i].peer);
      }
      for (size_t k = aborts_from; k < pending_peers.size() && status.ok(); ++k) {
        const int p = pending_peers[k];
        auto it = st.aborts.find(XKey{plan.channel, plan.seq, p});
        if (it == st.aborts.end() || st.fins.count(it->first) > 0) continue;  // its block landed before it gave up
        const std::string why = std::move(it->second.why);
        if (it->second.peer_lost) st.peer_lost.store(true);
        st.aborts.erase(it);
        status = absl::AbortedError(WithPrefix(
            absl::StrCat(What(plan), ": ", st.Peer(p), " gave up on this exchange before this rank got to it",
                         why.empty() ? " (its timeout expired or it failed)" : absl::StrCat(" (its error: ", why, ")"),
                         "; nothing was put into its buffers")));
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
            status = st.PeerError(
                b.peer, absl::StrCat(st.use_put ? "signalling the end of " : "sending its block of ", What(plan)), u);
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
        if (tag_recvs[i].req != nullptr) {
          ucp_tag_recv_info_t info{};
          const ucs_status_t u = ucp_tag_recv_request_test(tag_recvs[i].req, &info);
          if (u == UCS_INPROGRESS) continue;
          ucp_request_free(tag_recvs[i].req);
          tag_recvs[i].req = nullptr;
          st.FinishTagReceiveLocked(XKey{plan.channel, plan.seq, b.peer}, u, info.length, b.bytes);
        }
        if (auto e = st.recv_errors.find(XKey{plan.channel, plan.seq, b.peer}); e != st.recv_errors.end()) {
          status = Status(e->second.code(), WithPrefix(absl::StrCat(What(plan), ": ", e->second.message())));
          st.recv_errors.erase(e);
          break;
        }
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
        if (landing != nullptr) {
          to_copy.push_back(i);  // counted as received once copied out (below)
        } else {
          --recvs_left;
        }
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
      if (status.ok()) status = shm_status;
      if (status.ok() && sends_left == 0 && recvs_left == 0 && !ctss_left) {
        st.ReleaseLandingLocked(landing, /*puts_may_follow=*/false);
        for (size_t i : shm_recv_idx) st.shm_peers[plan.recvs[i].peer]->in[chan].End(&shm_recvs[i], false);
        return absl::OkStatus();
      }
      // A dead peer fails the exchange at once if this rank still waits on it.
      if (status.ok()) status = st.FailedPeer(pending_peers, What(plan));
      if (!status.ok()) {
        const std::string note = give_up(pending_peers, status);
        return Status(status.code(), absl::StrCat(status.message(), note));
      }
    }
    // Blocks that landed: out of the landing buffer (ours until this exchange releases it) into the receive blocks,
    // without holding the lock.
    for (size_t i : to_copy) {
      std::memcpy(plan.recvs[i].dst, landing->base + landing_offsets[i], plan.recvs[i].bytes);
      --recvs_left;
    }
    to_copy.clear();
    if (!waiter.Next(progressed, st, /*poll_only=*/shm_left > 0)) break;
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
  const std::string text = absl::StrCat(
      What(plan), " (channel ", plan.channel, ", seq ", plan.seq, ") timed out after ", absl::FormatDuration(timeout),
      "; still pending: ", pending.ToString(), "; ", plan.num_peers - pending.num_peers(), " of ", plan.num_peers,
      " peers done",
      waiting_cts > 0 ? absl::StrCat(" (", waiting_cts, " send(s) never got the receiver's clear-to-send)") : "",
      ". Did every rank issue this exchange, in the same order, with matching sizes?");
  const Status timed_out = absl::DeadlineExceededError(WithPrefix(text));
  const std::string note = give_up(pending_peers, timed_out);
  return Status(timed_out.code(), absl::StrCat(timed_out.message(), note));
}

// ---- the communicator --------------------------------------------------------------------------------------------

class UcxCommunicator final : public Communicator {
 public:
  UcxCommunicator(std::shared_ptr<UcxState> st, Options options) : st_(std::move(st)), options_(options) {
    // While this communicator lives, the job's bounded MPI collectives (between steps, e.g. the per-step statistics)
    // fail at once when it knows a peer died, instead of after their timeout.
    peer_check_ = AddPeerFailureCheck([s = st_.get()](absl::string_view doing) { return s->CheckAllPeers(doing); });
  }
  ~UcxCommunicator() override { RemovePeerFailureCheck(peer_check_); }

  absl::string_view name() const override { return st_->use_put ? "ucx_put" : "ucx"; }
  int rank() const override { return st_->rank; }
  int size() const override { return st_->size; }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.one_sided = st_->use_put;
    return caps;
  }

  LinkEstimate Estimate(int peer) const override { return HostLinkEstimate(st_->rank, peer, st_->node_ids); }
  size_t RemoteKeysHeld() const {
    std::lock_guard<std::mutex> lock(st_->mu);
    return st_->RemoteKeysHeldLocked();
  }

  // Waits until every endpoint is wired up and has nothing outstanding (ucp_worker_flush_nbx), progressing.
  Status FlushEndpoints() {
    UcxState& st = *st_;
    Op op;
    ucs_status_t u;
    {
      std::lock_guard<std::mutex> lock(st.mu);
      ucp_request_param_t param{};
      u = Start(ucp_worker_flush_nbx(st.worker, &param), &op);
    }
    Waiter waiter(GetUcxTuning(), st_->oversubscribed, Timeout());
    while (u == UCS_INPROGRESS) {
      bool progressed;
      {
        std::lock_guard<std::mutex> lock(st.mu);
        progressed = st.ProgressLocked() > 0;
        u = Check(&op);
        if (u == UCS_INPROGRESS && !waiter.Next(progressed, st)) {
          ucp_request_free(op.req);
          return absl::DeadlineExceededError(WithPrefix(
              absl::StrCat("ucx: connecting the endpoints timed out after ", absl::FormatDuration(Timeout()))));
        }
      }
    }
    if (u != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "connecting the endpoints", u);
    return absl::OkStatus();
  }

  Status Barrier() override {
    std::lock_guard<std::mutex> lock(coll_mu_);
    WAVEEP_RETURN_IF_ERROR(broken_);
    return Control(
        "barrier", [](int) { return absl::string_view(); }, [](int, const std::string&) { return Status(); });
  }

  Status Allgather(const void* send, size_t bytes, void* recv) override {
    WAVEEP_RETURN_IF_ERROR(CheckAllgatherArgs(send, bytes, recv));
    if (bytes == 0) return absl::OkStatus();
    if (bytes > kMaxControlBytes) return Alltoallv(AllgatherAsAlltoallv(send, bytes, recv, st_->size));
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
    WAVEEP_RETURN_IF_ERROR(
        CheckCountsArgs(send, n, recv, static_cast<int64_t>(kMaxControlBytes / sizeof(int64_t)), "ucx"));
    if (n == 0) return absl::OkStatus();
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
  absl::Duration Timeout() const { return EffectiveTimeout(options_); }

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
    // Gives up (requires mu): when a rank is lost, every peer hears that this rank leaves the job and why.
    auto give_up = [&](const Status& why) {
      st.SendLeavingLocked(why);
      for (auto& m : sends) st.AbandonLocked(std::move(m));
      st.DrainAbandonedLocked(kCancelGrace);
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
        give_up(status);
        return Status(status.code(), absl::StrCat(what, ": ", status.message()));
      }
    }
    Waiter waiter(GetUcxTuning(), st.oversubscribed, timeout);
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
          give_up(status);
          return status;
        }
        if (left == 0 && !sends_left) return absl::OkStatus();
      }
      if (!waiter.Next(progressed, st)) break;
    }
    std::lock_guard<std::mutex> lock(st.mu);
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
    give_up(s);
    // As on the mpi backend: once a collective timed out, the ranks may no longer agree on the collective order, so
    // later blocking collectives are refused rather than matched against the wrong call.
    broken_ = absl::FailedPreconditionError(
        absl::StrCat("ucx communicator unusable for blocking collectives after an earlier timeout: ", s.message()));
    return s;
  }

  std::shared_ptr<UcxState> st_;
  const Options options_;
  int64_t peer_check_ = 0;
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

StatusOr<Directory> Exchange(Communicator& mpi, const ProcessContext& ctx, const std::string& address, bool use_put) {
  constexpr size_t kHost = 64;
  struct Rec {
    int32_t node_id;
    uint32_t address_len;
    int64_t pid;
    int32_t use_put;
    char host[kHost];
  };
  Rec mine{};
  mine.node_id = ctx.node_id;
  mine.pid = static_cast<int64_t>(getpid());
  mine.use_put = use_put ? 1 : 0;
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
    if (all[p].use_put != all[0].use_put) {
      return absl::InvalidArgumentError(absl::StrCat("ucx: rank ", p, " uses the ", all[p].use_put ? "put" : "am",
                                                     " data path but rank 0 the ", all[0].use_put ? "put" : "am",
                                                     " one (every rank must create the same backend: ucx or "
                                                     "ucx_put)"));
    }
    d.node_ids.push_back(all[p].node_id);
    d.pids.push_back(all[p].pid);
    d.hosts.emplace_back(all[p].host, strnlen(all[p].host, kHost));
    d.addresses.push_back(flat.substr(max_len * p, all[p].address_len));
  }
  return d;
}

std::atomic<uint64_t> g_shm_serial{0};  // names this process's segments apart

// Sets up the same-host rings (UcxTuning::shm_rings), collectively: every rank creates its segment and opens its
// same-host peers' ones; the rings are used only if every rank succeeded (otherwise same-host blocks stay UCX tagged
// messages and the ranks that failed say why on stderr). The segment names are removed once every rank mapped them,
// so nothing stays in /dev/shm, also after a crash.
Status SetUpShm(UcxState& st, Communicator& mpi, const UcxTuning& t) {
  struct Rec {
    char name[64];
    uint64_t bytes;
    uint32_t slots;
    uint32_t chunk;
    int32_t ok;
  };
  // Same-host peers, in rank order; a ring's index in a segment is its sender's place in its owner's list.
  auto local_peers_of = [&](int r) {
    std::vector<int> v;
    for (int p = 0; p < st.size; ++p) {
      if (p != r && st.node_ids[p] == st.node_ids[r]) v.push_back(p);
    }
    return v;
  };
  const std::vector<int> mine_peers = local_peers_of(st.rank);
  Rec mine{};
  ShmGeometry g;
  g.slots = t.shm_slots;
  g.chunk = t.shm_chunk_bytes;
  const size_t rings = 2 * mine_peers.size();
  while (rings * g.RingBytes() > (size_t{32} << 20) && g.chunk > 4096) g.chunk /= 2;
  mine.slots = g.slots;
  mine.chunk = g.chunk;
  Status local;
  if (t.shm_rings && rings > 0) {
    const std::string name = absl::StrCat("/waveep-", getpid(), "-", g_shm_serial.fetch_add(1), "-r", st.rank);
    StatusOr<ShmSegment> seg = ShmSegment::Create(name, rings * g.RingBytes());
    if (seg.ok()) {
      st.shm_own = std::move(*seg);
      std::strncpy(mine.name, name.c_str(), sizeof(mine.name) - 1);
      mine.bytes = st.shm_own.bytes();
      mine.ok = 1;
    } else {
      local = seg.status();
    }
  }
  std::vector<Rec> all(st.size);
  WAVEEP_RETURN_IF_ERROR(mpi.Allgather(&mine, sizeof(mine), all.data()));
  // Map the peers' segments.
  int32_t ok = t.shm_rings ? 1 : 0;
  if (t.shm_rings && local.ok() && !mine_peers.empty()) {
    st.shm_peers.resize(st.size);
    for (size_t i = 0; i < mine_peers.size() && local.ok(); ++i) {
      const int p = mine_peers[i];
      const Rec& r = all[p];
      if (!r.ok) {
        local = absl::UnavailableError(absl::StrCat("rank ", p, " could not create its segment"));
        break;
      }
      const std::vector<int> theirs = local_peers_of(p);
      const size_t my_place = std::find(theirs.begin(), theirs.end(), st.rank) - theirs.begin();
      const ShmGeometry pg{r.slots, r.chunk};
      // The peer's word on its geometry decides where this rank writes: it must describe its segment.
      if (Status g_ok = pg.Check(); !g_ok.ok()) {
        local = absl::InvalidArgumentError(absl::StrCat("rank ", p, " announced ", g_ok.message()));
        break;
      }
      if ((2 * my_place + 2) * pg.RingBytes() > r.bytes) {
        local =
            absl::InvalidArgumentError(absl::StrCat("rank ", p, " announced rings of ", r.slots, " slots of ", r.chunk,
                                                    " bytes that do not fit its segment of ", r.bytes, " bytes"));
        break;
      }
      const std::string peer_name(r.name, strnlen(r.name, sizeof(r.name)));
      StatusOr<ShmSegment> seg = ShmSegment::Open(peer_name, r.bytes);
      if (!seg.ok()) {
        local = seg.status();
        break;
      }
      auto sp = std::make_unique<UcxState::ShmPeer>();
      sp->seg = std::move(*seg);
      for (int c = 0; c < 2; ++c) {
        sp->out[c] = ShmRing(sp->seg.base() + (2 * my_place + c) * pg.RingBytes(), pg);
        sp->in[c].Attach(ShmRing(st.shm_own.base() + (2 * i + c) * g.RingBytes(), g));
      }
      st.shm_peers[p] = std::move(sp);
    }
  }
  if (!local.ok()) ok = 0;
  std::vector<int32_t> oks(st.size);
  WAVEEP_RETURN_IF_ERROR(mpi.Allgather(&ok, sizeof(ok), oks.data()));
  st.shm_own.Unlink();  // every rank has opened it (or given up)
  st.shm = t.shm_rings && std::count(oks.begin(), oks.end(), 0) == 0;
  if (!st.shm) {
    if (t.shm_rings && !local.ok()) {
      std::fprintf(stderr, "[waveep] rank %d: ucx: same-host blocks go through UCX, not shared-memory rings: %s\n",
                   st.rank, std::string(local.message()).c_str());
    }
    st.shm_peers.clear();
    st.shm_own = ShmSegment();
  }
  return absl::OkStatus();
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
  if (tuning.min_sleep <= absl::ZeroDuration() || tuning.max_sleep < tuning.min_sleep) {
    return absl::InvalidArgumentError(absl::StrCat("UcxTuning: need 0 < min_sleep (",
                                                   absl::FormatDuration(tuning.min_sleep), ") <= max_sleep (",
                                                   absl::FormatDuration(tuning.max_sleep), ")"));
  }
  if (Status s = ShmGeometry{tuning.shm_slots, tuning.shm_chunk_bytes}.Check(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("UcxTuning (shm_slots, shm_chunk_bytes): ", s.message()));
  }
  std::lock_guard<std::mutex> lock(g_tuning_mu);
  g_tuning = tuning;
  return absl::OkStatus();
}

namespace {

StatusOr<std::unique_ptr<Communicator>> NewUcx(const ProcessContext& ctx, Options options, bool use_put) {
  WAVEEP_RETURN_IF_ERROR(CheckOptions(options));
  // The bootstrap: an mpi communicator, for the address exchange and to agree on success.
  WAVEEP_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> mpi, NewMpiCommunicator(ctx, options));
  if (!use_put && mpi->size() > kMaxTagRanks) {
    return absl::InvalidArgumentError(absl::StrCat("ucx: ", mpi->size(),
                                                   " ranks; the tags of its data blocks name at most ", kMaxTagRanks,
                                                   " (use --backend=ucx_put or mpi)"));
  }
  auto st = std::make_shared<UcxState>(mpi->rank(), mpi->size());

  // Everything local first; every rank then agrees on whether all succeeded, so that no rank connects to a rank
  // that failed (or waits for it).
  std::string address;
  Status local = [&]() -> Status {
    ucp_config_t* config = nullptr;
    ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
    if (s != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "reading the UCX configuration", s);
    // Blocks between hosts go eagerly (SendTagLocked). Without it they would take UCX's rendezvous and run slower.
    if (getenv("UCX_RNDV_SEND_NBR_THRESH") == nullptr) {
      const ucs_status_t m = ucp_config_modify(config, "RNDV_SEND_NBR_THRESH", "inf");
      if (m != UCS_OK) {
        std::fprintf(stderr,
                     "[waveep] ucx: cannot set RNDV_SEND_NBR_THRESH=inf (%s): blocks between hosts may go by "
                     "rendezvous, which is slower over TCP\n",
                     ucs_status_string(m));
      }
    }
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS | UCP_PARAM_FIELD_NAME;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP | (use_put ? 0 : UCP_FEATURE_TAG);
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
    static const ucp_generic_dt_ops_t kPackOps = {PackStart, UnpackStart, PackedSize, PackFragment, Unpack, PackFinish};
    s = ucp_dt_create_generic(&kPackOps, nullptr, &st->pack_dt);
    if (s != UCS_OK) return UcxError(absl::StatusCode::kUnavailable, "ucp_dt_create_generic", s);
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
  st->use_put = use_put;
  st->oversubscribed = ctx.local_size > UsableCores();
  WAVEEP_ASSIGN_OR_RETURN(Directory dir, Exchange(*mpi, ctx, address, st->use_put));
  st->node_ids = dir.node_ids;
  st->hosts = dir.hosts;
  st->pids = dir.pids;
  st->watch_pid.assign(st->size, false);
  for (int p = 0; p < st->size; ++p) {
    st->watch_pid[p] = p != st->rank && dir.node_ids[p] == ctx.node_id && UcxState::ProcessAlive(dir.pids[p]);
    if (p != st->rank) st->all_peers.push_back(p);
  }
  if (!use_put) WAVEEP_RETURN_IF_ERROR(SetUpShm(*st, *mpi, GetUcxTuning()));
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
  // Wire up every endpoint now, so that the first exchange does not pay for it and, above all, so that no send is
  // ever left waiting in UCX for a wireup reply that only the peer's progress would bring (a rank that gives up on an
  // exchange could not otherwise count on its last messages leaving). A barrier starts the wireup, a worker flush
  // waits for it on every endpoint, and a second barrier keeps every rank progressing until all have flushed.
  WAVEEP_RETURN_IF_ERROR(comm->Barrier());
  WAVEEP_RETURN_IF_ERROR(comm->FlushEndpoints());
  WAVEEP_RETURN_IF_ERROR(comm->Barrier());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace

StatusOr<std::unique_ptr<Communicator>> NewUcxCommunicator(const ProcessContext& ctx, Options options) {
  return NewUcx(ctx, options, /*use_put=*/false);
}

int64_t UcxRemoteKeysHeld(const Communicator& comm) {
  const auto* ucx = dynamic_cast<const UcxCommunicator*>(&comm);
  return ucx == nullptr ? -1 : static_cast<int64_t>(ucx->RemoteKeysHeld());
}

StatusOr<std::unique_ptr<Communicator>> NewUcxPutCommunicator(const ProcessContext& ctx, Options options) {
  return NewUcx(ctx, options, /*use_put=*/true);
}

}  // namespace waveep::comm::internal
