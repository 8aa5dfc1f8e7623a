// Copyright 2026 The waveep Authors.
//
// Shared-memory rings for same-host blocks (see shm_ring_internal.h).
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/shm_ring_internal.h"

namespace waveep::comm::internal {

static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared-memory rings need lock-free atomics");

namespace {
// Receives given up on whose chunks may still come (to be dropped), per inbox, at most.
constexpr size_t kMaxAbandoned = 64;
}  // namespace

struct ShmRing::Header {
  alignas(64) std::atomic<uint64_t> head;  // slots published by the sender
  alignas(64) std::atomic<uint64_t> tail;  // slots consumed by the receiver
};

struct ShmRing::Slot {
  uint64_t seq;
  uint64_t total;   // the whole block's bytes
  uint64_t offset;  // where in the block this chunk goes
  uint32_t len;     // bytes in this slot
  char pad[64 - 28];
};

size_t ShmGeometry::RingBytes() const { return 128 + size_t{slots} * (64 + size_t{chunk}); }

Status ShmGeometry::Check() const {
  if (slots < 2 || slots > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("ring slots = ", slots, ": want 2 to 4096"));
  }
  if (chunk < 4096 || chunk > (uint32_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("ring chunk = ", chunk, " bytes: want 4 KiB to 1 GiB"));
  }
  return absl::OkStatus();
}

ShmRing::Header* ShmRing::header() const { return reinterpret_cast<Header*>(base_); }
ShmRing::Slot* ShmRing::slot(uint64_t pos) const {
  static_assert(sizeof(Slot) == 64 && sizeof(Header) == 128, "a slot header is one cache line, the ring header two");
  return reinterpret_cast<Slot*>(base_ + 128 + (pos % g_.slots) * (64 + size_t{g_.chunk}));
}
char* ShmRing::data(uint64_t pos) const { return reinterpret_cast<char*>(slot(pos)) + 64; }

bool ShmRing::PushSend(Send& s) {
  if (s.done) return false;
  Header* h = header();
  uint64_t head = h->head.load(std::memory_order_relaxed);  // only the (serialized) sender writes it
  const uint64_t tail = h->tail.load(std::memory_order_acquire);
  bool did = false;
  while (head - tail < g_.slots && !s.done) {
    Slot* sl = slot(head);
    const size_t n = std::min<size_t>(g_.chunk, s.bytes - s.pushed);
    sl->seq = s.seq;
    sl->total = s.bytes;
    sl->offset = s.pushed;
    sl->len = static_cast<uint32_t>(n);
    std::memcpy(data(head), s.src + s.pushed, n);
    s.pushed += n;
    h->head.store(++head, std::memory_order_release);
    did = true;
    s.done = s.pushed == s.bytes;
  }
  return did;
}

bool ShmRing::Peek(Chunk* c) const {
  Header* h = header();
  const uint64_t tail = h->tail.load(std::memory_order_relaxed);  // only the receiver writes it
  if (tail == h->head.load(std::memory_order_acquire)) return false;
  const Slot* sl = slot(tail);
  // Bounds come from the other process: never trust them further than the slot.
  *c = Chunk{sl->seq, sl->total, sl->offset, std::min<uint32_t>(sl->len, g_.chunk), data(tail)};
  return true;
}

void ShmRing::Pop() {
  Header* h = header();
  h->tail.store(h->tail.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

// ---- the receiving side ------------------------------------------------------------------------------------------

void ShmInbox::LandLocked(Recv* r, const ShmRing::Chunk& c) {
  if (r->other_total != 0) return;  // already failed
  if (c.total != r->bytes || c.offset != r->received || c.len > r->bytes - r->received) {
    // Another size, or chunks that do not add up (a sender that disagrees with itself): bytes + 1 says "more".
    r->other_total = c.total != r->bytes && c.total != 0 ? c.total : r->bytes + 1;
    return;
  }
  std::memcpy(r->dst + c.offset, c.data, c.len);
  r->received += c.len;
}

void ShmInbox::Begin(Recv* r) {
  std::lock_guard<std::mutex> lock(mu_);
  active_[r->seq] = r;
  abandoned_.erase(r->seq);
  auto it = early_.find(r->seq);
  if (it == early_.end()) return;
  for (const EarlyChunk& e : it->second) {
    LandLocked(r, ShmRing::Chunk{r->seq, e.total, e.offset, static_cast<uint32_t>(e.data.size()), e.data.data()});
  }
  early_.erase(it);
}

bool ShmInbox::Poll(const Recv* r, Recv* state) {
  std::lock_guard<std::mutex> lock(mu_);
  bool did = false;
  ShmRing::Chunk c;
  while (ring_.Peek(&c)) {
    did = true;
    if (auto a = active_.find(c.seq); a != active_.end()) {
      LandLocked(a->second, c);
    } else if (abandoned_.count(c.seq) == 0) {  // a receive not begun here yet: keep the chunk
      early_[c.seq].push_back(EarlyChunk{c.total, c.offset, std::string(c.data, c.len)});
    }
    ring_.Pop();
  }
  if (r != nullptr) *state = *r;
  return did;
}

void ShmInbox::End(Recv* r, bool abandoned) {
  std::lock_guard<std::mutex> lock(mu_);
  active_.erase(r->seq);
  if (!abandoned) return;
  if (abandoned_.size() >= kMaxAbandoned) abandoned_.erase(abandoned_.begin());
  abandoned_.insert(r->seq);
}

size_t ShmInbox::early_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [seq, chunks] : early_) {
    for (const EarlyChunk& e : chunks) n += e.data.size();
  }
  return n;
}

// ---- segments ----------------------------------------------------------------------------------------------------

ShmSegment::ShmSegment(ShmSegment&& o) noexcept { *this = std::move(o); }

ShmSegment& ShmSegment::operator=(ShmSegment&& o) noexcept {
  if (this != &o) {
    Reset();
    name_ = std::exchange(o.name_, std::string());
    base_ = std::exchange(o.base_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

ShmSegment::~ShmSegment() { Reset(); }

void ShmSegment::Reset() {
  Unlink();
  if (base_ != nullptr) munmap(base_, bytes_);
  base_ = nullptr;
  bytes_ = 0;
}

void ShmSegment::Unlink() {
  if (!name_.empty()) shm_unlink(name_.c_str());
  name_.clear();
}

namespace {

StatusOr<char*> Map(int fd, size_t bytes, const std::string& name) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) {
    return absl::UnavailableError(
        absl::StrCat("mmap of shared-memory segment ", name, " (", bytes, " bytes): ", std::strerror(err)));
  }
  return static_cast<char*>(p);
}

}  // namespace

StatusOr<ShmSegment> ShmSegment::Create(const std::string& name, size_t bytes) {
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("shm_open(", name, ") for the same-host rings: ", std::strerror(errno),
                                               " (is /dev/shm mounted?)"));
  }
  ShmSegment seg;
  seg.name_ = name;  // from here on the destructor removes it
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("sizing shared-memory segment ", name, " to ", bytes,
                                               " bytes: ", std::strerror(err), " (is /dev/shm full?)"));
  }
  StatusOr<char*> base = Map(fd, bytes, name);
  if (!base.ok()) return base.status();
  seg.base_ = *base;
  seg.bytes_ = bytes;
  return seg;
}

StatusOr<ShmSegment> ShmSegment::Open(const std::string& name, size_t bytes) {
  const int fd = shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("opening a peer's shared-memory segment ", name, ": ", std::strerror(errno)));
  }
  struct stat sb {};
  if (fstat(fd, &sb) != 0 || static_cast<size_t>(sb.st_size) != bytes) {
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("shared-memory segment ", name, " has ", sb.st_size, " bytes where ", bytes, " were announced"));
  }
  StatusOr<char*> base = Map(fd, bytes, name);
  if (!base.ok()) return base.status();
  ShmSegment seg;
  seg.base_ = *base;
  seg.bytes_ = bytes;
  return seg;
}

}  // namespace waveep::comm::internal
