// Copyright 2026 The waveep Authors.
//
// Built instead of cuda_backend.cc when CUDA is off: CUDA streams, events and memory are Unavailable.
#include "runtime/buffer.h"
#include "runtime/stream_internal.h"

namespace waveep {
namespace internal {
namespace {
Status NoCuda() { return absl::UnavailableError("waveep was built without CUDA (WAVEEP_ENABLE_CUDA=OFF or no nvcc)"); }
}  // namespace

StatusOr<std::unique_ptr<Stream>> NewCudaStream(Device, StreamOptions) { return NoCuda(); }
StatusOr<std::unique_ptr<Event>> NewCudaEvent(Device, std::string) { return NoCuda(); }
StatusOr<void*> CudaAlloc(Device, size_t, bool) { return NoCuda(); }
void CudaFree(void*, bool) {}
}  // namespace internal

int CudaDeviceCount() { return 0; }
bool BuiltWithCuda() { return false; }

}  // namespace waveep
