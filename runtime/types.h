// Copyright 2026 The waveep Authors.
//
// runtime/types.h — element types, devices, the deterministic generator and sample summaries shared by all modules.
//
//   DType t = DType::kBF16;  DTypeSize(t) == 2;  ParseDType("fp8") -> DType::kFP8E4M3
//   Device d = Device::Cpu();  d.ToString() == "cpu"
//   float v = UniformSym(seed, RngStream::kWeights, index);   // same value on every rank, every run
//   Summarize({3, 1, 2}).median == 2
#ifndef WAVEEP_RUNTIME_TYPES_H_
#define WAVEEP_RUNTIME_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/status.h"

namespace waveep {

// Element types that travel or are stored. FP8 is OCP e4m3fn (max 448, no infinities).
enum class DType { kF32, kBF16, kF16, kFP8E4M3, kI32, kI64 };

// Bytes per element.
size_t DTypeSize(DType t);
// "f32", "bf16", "f16", "fp8", "i32", "i64".
absl::string_view DTypeName(DType t);
// Accepts the names above plus "fp32", "float32", "bfloat16", "e4m3", "fp8_e4m3". InvalidArgument otherwise.
StatusOr<DType> ParseDType(absl::string_view name);

enum class DeviceKind { kCpu, kCuda };

// A compute device: the host CPU or one CUDA ordinal. Cheap value type.
struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int ordinal = 0;
  static Device Cpu() { return Device{}; }
  static Device Cuda(int ordinal) { return Device{DeviceKind::kCuda, ordinal}; }
  bool is_cpu() const { return kind == DeviceKind::kCpu; }
  std::string ToString() const;  // "cpu" or "cuda:N"
  bool operator==(const Device& o) const { return kind == o.kind && ordinal == o.ordinal; }
};

// Opaque native stream handle: cudaStream_t for CUDA streams, nullptr for CPU streams. Public headers never
// include CUDA headers; CUDA code casts this back.
using StreamHandle = void*;

// ---- deterministic counter-based random numbers ----------------------------------------------------------------
// Values depend only on (seed, stream, index), so any rank — or a single process — regenerates exactly the same
// weights and inputs with no communication. Not cryptographic.
enum class RngStream : uint64_t {
  kHidden = 1,   // token hidden states, index = global_token * H + col
  kLogits = 2,   // router logits, index = global_token * E + expert
  kW1 = 3,       // expert gate weights, index = expert * I * H + row * H + col
  kW3 = 4,       // expert up weights
  kW2 = 5,       // expert down weights, index = expert * H * I + row * I + col
  kRouting = 6,  // synthetic routing choices
  kTest = 100,   // tests
};

// SplitMix64 finaliser over the three inputs.
uint64_t RngHash(uint64_t seed, RngStream stream, uint64_t index);
// Uniform in [-1, 1), 24 random bits.
float UniformSym(uint64_t seed, RngStream stream, uint64_t index);
// Uniform integer in [0, n), n > 0.
uint64_t UniformInt(uint64_t seed, RngStream stream, uint64_t index, uint64_t n);

// 64-bit FNV-1a over bytes; `h` chains calls. Used for config fingerprints and output checksums.
uint64_t Fnv1a64(const void* data, size_t bytes, uint64_t h = 0xcbf29ce484222325ull);

// Median (the mean of the middle two for an even count), min and max of a sample; zeros for an empty one.
struct Summary {
  double median = 0, min = 0, max = 0;
};
Summary Summarize(std::vector<double> v);

}  // namespace waveep

#endif  // WAVEEP_RUNTIME_TYPES_H_
