// Copyright 2026 The waveep Authors.
//
// runtime/buffer.h — owned, aligned memory on the host, pinned host, or a CUDA device.
//
//   WAVEEP_ASSIGN_OR_RETURN(Buffer b, Buffer::Allocate(Device::Cpu(), MemoryKind::kHost, 1 << 20));
//   float* p = b.as<float>();        // 64-byte aligned, uninitialised
//   Buffer moved = std::move(b);     // move-only; freed in the destructor
#ifndef WAVEEP_RUNTIME_BUFFER_H_
#define WAVEEP_RUNTIME_BUFFER_H_

#include <cstddef>

#include "runtime/status.h"
#include "runtime/types.h"

namespace waveep {

enum class MemoryKind {
  kHost,        // pageable host memory (CPU device)
  kPinnedHost,  // page-locked host memory for async copies (CUDA builds; falls back to kHost without CUDA)
  kDevice,      // GPU memory (CUDA device only)
};

class Buffer {
 public:
  Buffer() = default;
  // Allocates `bytes` (0 is allowed and yields data() == nullptr). ResourceExhausted when allocation fails,
  // InvalidArgument for kDevice on a CPU device, Unavailable for CUDA memory in a build without CUDA.
  static StatusOr<Buffer> Allocate(Device device, MemoryKind kind, size_t bytes);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  MemoryKind kind() const { return kind_; }

 private:
  void Release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  MemoryKind kind_ = MemoryKind::kHost;
};

// Number of CUDA devices visible to this process (0 in a build without CUDA, or with no driver/GPU).
int CudaDeviceCount();
// True when this binary was built with CUDA support.
bool BuiltWithCuda();

}  // namespace waveep

#endif  // WAVEEP_RUNTIME_BUFFER_H_
