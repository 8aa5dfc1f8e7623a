// Copyright 2026 The waveep Authors.
// IWYU pragma: private, include "runtime/runtime.h"
//
// Backend factories behind Stream::Create / Event::Create / Buffer::Allocate. The CUDA ones live in
// cuda_backend.cc (CUDA builds) or cuda_backend_stub.cc (UnavailableError).
#ifndef WAVEEP_RUNTIME_STREAM_INTERNAL_H_
#define WAVEEP_RUNTIME_STREAM_INTERNAL_H_

#include <memory>
#include <string>

#include "runtime/stream.h"

namespace waveep::internal {

std::unique_ptr<Stream> NewCpuStream(StreamOptions options);
std::unique_ptr<Event> NewCpuEvent(std::string name);

StatusOr<std::unique_ptr<Stream>> NewCudaStream(Device device, StreamOptions options);
StatusOr<std::unique_ptr<Event>> NewCudaEvent(Device device, std::string name);
// Device / pinned-host allocation. `pinned` selects cudaMallocHost instead of cudaMalloc.
StatusOr<void*> CudaAlloc(Device device, size_t bytes, bool pinned);
void CudaFree(void* p, bool pinned);

}  // namespace waveep::internal

#endif  // WAVEEP_RUNTIME_STREAM_INTERNAL_H_
