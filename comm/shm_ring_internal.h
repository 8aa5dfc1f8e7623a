// Copyright 2026 The waveep Authors.
//
// comm/shm_ring_internal.h — single-producer single-consumer rings in POSIX shared memory, through which a rank
// sends blocks to a rank of the same host (the ucx backend's same-host data path; internal to comm/).
//
// Why: on one host a block can cross by one copy that the kernel makes (cma: process_vm_readv, what UCX's and Open
// MPI's rendezvous use) or by two copies through shared memory (the sender copies in, the receiver copies out, in
// parallel, chunk by chunk). cma pins every 4 KiB page of the sender's block before copying; on the 2-vCPU VM the
// pinning took 3x the time of the copy itself (perf, 256 KiB blocks), and these rings ran at 1.06-1.42x of Open
// MPI's shared-memory path (cma) from 64 KiB to 16 MiB per peer in every run (docs/perf/ucx-2026-11-30).
//
// Layout: each rank maps one segment (ShmSegment) holding one ring per (same-host sender, channel). A ring is a
// header (head: slots published by the sender; tail: slots consumed by the receiver; 64-byte lines apart) and
// `slots` slots of a 64-byte slot header and `chunk` bytes of data. The sender writes a slot, then publishes it
// (head, release); the receiver reads it after an acquire of head and frees it (tail, release). Each slot names its
// block (sequence number, total bytes, offset), so blocks of several exchanges may interleave.
//
// Matching (ShmInbox): exchanges on one channel carry the same sequence number on every rank (the Communicator
// contract), but async exchanges on different streams run concurrently and in any order. So a ring is drained by
// whichever receiving thread polls it: a chunk of a receive that has begun lands in its block, a chunk of a sequence
// number not begun here yet is kept (copied) until it begins, a chunk of a receive this rank gave up on is dropped.
// Nothing waits behind a block nobody receives yet, so no order of exchanges can deadlock the ring.
#ifndef WAVEEP_COMM_SHM_RING_INTERNAL_H_
#define WAVEEP_COMM_SHM_RING_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "runtime/runtime.h"

namespace waveep::comm::internal {

struct ShmGeometry {
  uint32_t slots = 4;                   // per ring
  uint32_t chunk = uint32_t{64} << 10;  // data bytes per slot
  // Bytes of one ring in a segment.
  size_t RingBytes() const;
  // InvalidArgument naming the field unless 2 <= slots <= 4096 and 4 KiB <= chunk <= 1 GiB. Both the tuning and a
  // peer's announced geometry (which decides where this rank writes) go through it.
  Status Check() const;
};

// A mapped POSIX shared-memory segment (shm_open + mmap). Movable, unmaps on destruction.
class ShmSegment {
 public:
  ShmSegment() = default;
  ShmSegment(ShmSegment&& o) noexcept;
  ShmSegment& operator=(ShmSegment&& o) noexcept;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;
  ~ShmSegment();

  // Creates `name` (a "/..." name, exclusive, mode 0600) of `bytes`, zeroed, and maps it. The name stays until
  // Unlink(): peers open it by name meanwhile.
  static StatusOr<ShmSegment> Create(const std::string& name, size_t bytes);
  // Maps an existing segment; FailedPrecondition if its size is not `bytes`.
  static StatusOr<ShmSegment> Open(const std::string& name, size_t bytes);
  // Removes the name (the mappings stay). Idempotent.
  void Unlink();

  char* base() const { return base_; }
  size_t bytes() const { return bytes_; }

 private:
  void Reset();  // unlinks an owned name, unmaps

  std::string name_;  // set while this object owns the name (created it, not unlinked yet)
  char* base_ = nullptr;
  size_t bytes_ = 0;
};

// One ring, a view into a mapped segment (either side's mapping). The sender side must be serialized by the caller.
class ShmRing {
 public:
  ShmRing() = default;
  ShmRing(char* base, ShmGeometry g) : base_(base), g_(g) {}
  bool valid() const { return base_ != nullptr; }
  const ShmGeometry& geometry() const { return g_; }

  struct Send {
    uint64_t seq = 0;
    const char* src = nullptr;
    size_t bytes = 0;
    size_t pushed = 0;  // bytes published so far
    bool done = false;  // all published (the sender's block is no longer needed)
  };
  // Publishes as many chunks of `s` as there are free slots; sets s.done after the last. True if it published any.
  bool PushSend(Send& s);

  // A published slot (receiver side).
  struct Chunk {
    uint64_t seq;
    uint64_t total;
    uint64_t offset;
    uint32_t len;
    const char* data;
  };
  // The oldest published slot not consumed yet; false if none.
  bool Peek(Chunk* c) const;
  // Frees the slot Peek returned.
  void Pop();

 private:
  struct Header;
  struct Slot;
  Header* header() const;
  Slot* slot(uint64_t pos) const;
  char* data(uint64_t pos) const;

  char* base_ = nullptr;
  ShmGeometry g_;
};

// The receiving side of one ring, shared by the threads that receive on its channel (see the top of this file).
class ShmInbox {
 public:
  struct Recv {
    uint64_t seq = 0;
    char* dst = nullptr;
    size_t bytes = 0;
    size_t received = 0;
    uint64_t other_total = 0;  // != 0: the sender sends this many bytes, not `bytes`
    bool done() const { return received == bytes && other_total == 0; }
  };

  void Attach(ShmRing ring) { ring_ = ring; }
  bool valid() const { return ring_.valid(); }
  // Starts receive `r` (its seq not begun before on this inbox) and lands what came early for it. `r` must stay
  // valid until End.
  void Begin(Recv* r);
  // Drains the ring; true if anything was consumed. With `r`: copies r's state (received, other_total) into `*state`
  // under the inbox's lock (another thread polling this inbox may land r's chunks: read r's fields only this way while
  // other receivers are active).
  bool Poll(const Recv* r = nullptr, Recv* state = nullptr);
  // Ends `r`; `abandoned`: it did not complete, and chunks of its block that come later are dropped.
  void End(Recv* r, bool abandoned);

  // Bytes kept for receives not begun yet (tests, diagnostics).
  size_t early_bytes() const;

 private:
  // A chunk that came before its receive began, kept as sent (LandLocked checks it when the receive begins).
  struct EarlyChunk {
    uint64_t total;
    uint64_t offset;
    std::string data;
  };
  void LandLocked(Recv* r, const ShmRing::Chunk& c);

  mutable std::mutex mu_;
  ShmRing ring_;
  std::map<uint64_t, Recv*> active_;
  std::map<uint64_t, std::vector<EarlyChunk>> early_;
  std::set<uint64_t> abandoned_;  // at most kMaxAbandoned, the oldest forgotten first
};

}  // namespace waveep::comm::internal

#endif  // WAVEEP_COMM_SHM_RING_INTERNAL_H_
