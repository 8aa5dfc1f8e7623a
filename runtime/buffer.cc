// Copyright 2026 The waveep Authors.
#include "runtime/buffer.h"

#include <cstdlib>
#include <utility>

#include "runtime/stream_internal.h"

namespace waveep {

StatusOr<Buffer> Buffer::Allocate(Device device, MemoryKind kind, size_t bytes) {
  Buffer b;
  b.device_ = device;
  b.kind_ = kind;
  b.bytes_ = bytes;
  if (bytes == 0) return b;
  if (kind == MemoryKind::kDevice) {
    if (device.is_cpu()) return absl::InvalidArgumentError("Buffer::Allocate: device memory requested on the CPU");
    WAVEEP_ASSIGN_OR_RETURN(b.data_, internal::CudaAlloc(device, bytes, /*pinned=*/false));
    return b;
  }
  if (kind == MemoryKind::kPinnedHost && BuiltWithCuda() && CudaDeviceCount() > 0) {
    WAVEEP_ASSIGN_OR_RETURN(b.data_, internal::CudaAlloc(device, bytes, /*pinned=*/true));
    return b;
  }
  b.kind_ = MemoryKind::kHost;
  size_t rounded = (bytes + 63) / 64 * 64;
  b.data_ = std::aligned_alloc(64, rounded);
  if (b.data_ == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("host allocation of ", bytes, " bytes failed"));
  }
  return b;
}

Buffer::~Buffer() { Release(); }

Buffer::Buffer(Buffer&& o) noexcept { *this = std::move(o); }

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    Release();
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    device_ = o.device_;
    kind_ = o.kind_;
  }
  return *this;
}

void Buffer::Release() {
  if (data_ == nullptr) return;
  if (kind_ == MemoryKind::kHost) {
    std::free(data_);
  } else {
    internal::CudaFree(data_, kind_ == MemoryKind::kPinnedHost);
  }
  data_ = nullptr;
  bytes_ = 0;
}

}  // namespace waveep
