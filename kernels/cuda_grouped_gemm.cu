// Copyright 2026 The waveep Authors.
//
// Entry points of the device grouped GEMM: argument checks, the launch plan (kernels/gemm_heuristics.cc) and the
// dispatch to a backend (cublaslt_grouped_gemm.cu, sm90_grouped_gemm.cu, simt_grouped_gemm.cu).
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "kernels/cuda_internal.cuh"
#include "kernels/gemm_heuristics_internal.h"
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace cuda_internal {

#ifndef WAVEEP_HAVE_SM90A
// Built without sm_90a in CMAKE_CUDA_ARCHITECTURES: the experimental kernel does not exist in this binary.
bool Sm90KernelCompiled() { return false; }
Status Sm90GroupedGemm(const GroupedGemmArgs& /*args*/, int /*tile_m*/, int /*num_ctas*/, cudaStream_t /*stream*/,
                       int /*device*/) {
  return absl::UnavailableError("the sm90 grouped GEMM was not compiled in (needs CMAKE_CUDA_ARCHITECTURES=90a)");
}
#endif

}  // namespace cuda_internal

namespace {

using cuda_internal::CheckCudaStream;
using cuda_internal::DeviceGuard;
using cuda_internal::GroupedGemmArgs;
using cuda_internal::Native;

struct DeviceInfo {
  int sm_count = 0;
  int cc_major = 0;
  int cc_minor = 0;
};

StatusOr<DeviceInfo> InfoFor(int device) {
  static std::mutex mu;
  static auto* cache = new std::map<int, DeviceInfo>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(device);
  if (it != cache->end()) return it->second;
  DeviceInfo info;
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, device));
  WAVEEP_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&info.cc_minor, cudaDevAttrComputeCapabilityMinor, device));
  cache->emplace(device, info);
  return info;
}

bool ExperimentalEnabled() {
  const char* v = std::getenv("WAVEEP_GEMM_EXPERIMENTAL");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

Status Validate(const GroupedGemmArgs& args, const Stream& stream, const char* what) {
  WAVEEP_RETURN_IF_ERROR(CheckCudaStream(stream, what));
  if (args.num_groups < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": num_groups < 0: ", args.num_groups));
  if (args.k < 0 || args.n < 0)
    return absl::InvalidArgumentError(absl::StrCat(what, ": k and n must be >= 0, got k=", args.k, ", n=", args.n));
  if (args.c_dtype != DType::kBF16 && args.c_dtype != DType::kF32)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": c_dtype must be bf16 or f32, got ", DTypeName(args.c_dtype)));
  if (args.num_groups == 0) return absl::OkStatus();
  if (args.group_offsets == nullptr) return absl::InvalidArgumentError(absl::StrCat(what, ": null group_offsets"));
  if (args.group_offsets[0] < 0)
    return absl::InvalidArgumentError(absl::StrCat(what, ": group_offsets[0] = ", args.group_offsets[0], " < 0"));
  bool any_rows = false;
  for (int g = 0; g < args.num_groups; ++g) {
    const int64_t m = args.group_offsets[g + 1] - args.group_offsets[g];
    if (m < 0)
      return absl::InvalidArgumentError(absl::StrCat(what, ": group_offsets decrease at group ", g, " (",
                                                     args.group_offsets[g], " -> ", args.group_offsets[g + 1], ")"));
    if (m > 0 && (args.b == nullptr || args.b[g] == nullptr))
      return absl::InvalidArgumentError(absl::StrCat(what, ": B is null for group ", g, " with ", m, " rows"));
    if (m > 0 && args.fp8 && (args.b_scales == nullptr || args.b_scales[g] == nullptr))
      return absl::InvalidArgumentError(absl::StrCat(what, ": B scales are null for group ", g, " with ", m, " rows"));
    any_rows = any_rows || m > 0;
  }
  if (!any_rows || args.n == 0) return absl::OkStatus();
  if (args.c == nullptr || (args.k > 0 && (args.a == nullptr || (args.fp8 && args.a_scales == nullptr))))
    return absl::InvalidArgumentError(absl::StrCat(what, ": null A, A scales or C"));
  return absl::OkStatus();
}

Status Run(const GroupedGemmArgs& args, GemmBackend requested, Stream& stream, const char* what) {
  WAVEEP_RETURN_IF_ERROR(Validate(args, stream, what));
  if (args.num_groups == 0) return absl::OkStatus();
  const int device = stream.device().ordinal;
  DeviceGuard guard;
  WAVEEP_RETURN_IF_ERROR(guard.Enter(device));
  WAVEEP_ASSIGN_OR_RETURN(const DeviceInfo info, InfoFor(device));

  internal::GroupedGemmProblem problem;
  problem.rows_per_group.reserve(args.num_groups);
  for (int g = 0; g < args.num_groups; ++g)
    problem.rows_per_group.push_back(args.group_offsets[g + 1] - args.group_offsets[g]);
  problem.n = args.n;
  problem.k = args.k;
  problem.dtype = args.fp8 ? DType::kFP8E4M3 : DType::kBF16;
  problem.c_dtype = args.c_dtype;
  problem.sm_count = info.sm_count;
  problem.sm90_kernel_available = cuda_internal::Sm90KernelCompiled() && info.cc_major == 9 && info.cc_minor == 0;
  problem.allow_experimental = ExperimentalEnabled();
  StatusOr<internal::GroupedGemmPlan> plan = internal::PlanGroupedGemm(problem, requested);
  if (!plan.ok()) return Annotate(plan.status(), what);
  if (plan->no_op) return absl::OkStatus();

  const cudaStream_t s = Native(stream);
  if (plan->zero_fill) {
    const int64_t rows = args.group_offsets[args.num_groups] - args.group_offsets[0];
    const size_t row_bytes = static_cast<size_t>(args.n) * DTypeSize(args.c_dtype);
    WAVEEP_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(static_cast<char*>(args.c) + args.group_offsets[0] * row_bytes, 0, rows * row_bytes, s));
    return absl::OkStatus();
  }
  const auto dispatch = [&]() -> Status {
    switch (plan->backend) {
      case GemmBackend::kCublasGrouped:
        return cuda_internal::CublasGroupedBatchedGemm(args, s, device);
      case GemmBackend::kSm90:
        return cuda_internal::Sm90GroupedGemm(args, plan->tile.m, plan->num_ctas, s, device);
      case GemmBackend::kSimt:
        return cuda_internal::SimtGroupedGemm(args, s);
      case GemmBackend::kAuto:  // never planned
      case GemmBackend::kCublasLt:
        break;
    }
    return cuda_internal::CublasLtGroupedGemm(args, s, device);
  };
  return Annotate(dispatch(), absl::StrCat(what, " [", GemmBackendName(plan->backend), "]"));
}

}  // namespace

Status CudaGroupedGemmNTBf16(const uint16_t* a_dev, const int64_t* group_offsets, int num_groups, int64_t k,
                             const uint16_t* const* b_dev, int64_t n, void* c_dev, DType c_dtype, Stream& stream,
                             GemmBackend backend) {
  GroupedGemmArgs args;
  args.fp8 = false;
  args.a = a_dev;
  args.group_offsets = group_offsets;
  args.num_groups = num_groups;
  args.k = k;
  args.b = reinterpret_cast<const void* const*>(b_dev);
  args.n = n;
  args.c = c_dev;
  args.c_dtype = c_dtype;
  return Run(args, backend, stream, "CudaGroupedGemmNTBf16");
}

Status CudaGroupedGemmNTFp8(const uint8_t* a_dev, const float* a_scales_dev, const int64_t* group_offsets,
                            int num_groups, int64_t k, const uint8_t* const* b_dev, const float* const* b_scales_dev,
                            int64_t n, void* c_dev, DType c_dtype, Stream& stream, GemmBackend backend) {
  GroupedGemmArgs args;
  args.fp8 = true;
  args.a = a_dev;
  args.a_scales = a_scales_dev;
  args.group_offsets = group_offsets;
  args.num_groups = num_groups;
  args.k = k;
  args.b = reinterpret_cast<const void* const*>(b_dev);
  args.b_scales = b_scales_dev;
  args.n = n;
  args.c = c_dev;
  args.c_dtype = c_dtype;
  return Run(args, backend, stream, "CudaGroupedGemmNTFp8");
}

}  // namespace waveep::kernels
