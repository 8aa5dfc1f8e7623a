// Copyright 2026 The waveep Authors.
//
// runtime/runtime.h — the public header of the runtime module. Other modules include only this file.
//
// The runtime is the bottom of waveep's dependency graph (runtime <- comm, kernels, topology <- ep <- CLI):
//   status.h   Status/StatusOr, WAVEEP_RETURN_IF_ERROR / ASSIGN_OR_RETURN / CHECK / MPI_RETURN_IF_ERROR
//   types.h    DType, Device, StreamHandle, deterministic counter-based RNG, FNV-1a
//   config.h   ModelConfig presets (configs/models/*.json), validation
//   context.h  MPI bootstrap: ProcessContext, cross-rank config check, status agreement
//   buffer.h   Buffer (host, pinned host, device)
//   stream.h   Stream/Event (CPU worker threads or CUDA streams), timeouts with diagnostics
//   trace.h    spans -> Chrome trace JSON
//
//   #include "runtime/runtime.h"
//   WAVEEP_ASSIGN_OR_RETURN(waveep::ModelConfig m, waveep::LoadModelConfig("tiny"));
#ifndef WAVEEP_RUNTIME_RUNTIME_H_
#define WAVEEP_RUNTIME_RUNTIME_H_

#include "runtime/buffer.h"   // IWYU pragma: export
#include "runtime/config.h"   // IWYU pragma: export
#include "runtime/context.h"  // IWYU pragma: export
#include "runtime/status.h"   // IWYU pragma: export
#include "runtime/stream.h"   // IWYU pragma: export
#include "runtime/trace.h"    // IWYU pragma: export
#include "runtime/types.h"    // IWYU pragma: export

#endif  // WAVEEP_RUNTIME_RUNTIME_H_
