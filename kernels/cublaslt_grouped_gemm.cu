// Copyright 2026 The waveep Authors.
//
// Library backends of the grouped GEMM:
//  - CublasLtGroupedGemm: one cublasLtMatmul per non-empty group, BF16 or FP8 with 1x128 block scales
//    (CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F on both operands, Hopper, cuBLAS >= 12.9). The CUDA 13.0 toolkit's
//    cuBLASLt (13.1) has no grouped matmul, so this is a host loop; algorithms are cached per shape. A shape for
//    which cuBLASLt has no algorithm runs on the simt kernel (simt_grouped_gemm.cu), reported once per weight shape on
//    stderr (every shape with WAVEEP_GEMM_VERBOSE=1).
//  - CublasGroupedBatchedGemm: one cublasGemmGroupedBatchedEx (cuBLAS >= 12.5) over all groups, BF16 only.
//
// Row-major C = A * B^T is column-major C^T = B * A^T, so cuBLAS sees A' = B_g ([K, N] column-major, transposed:
// the "TN" layout FP8 requires), B' = A_g ([K, M] column-major) and D' = C_g ([N, M] column-major, ld N).
//
// NOTES (FP8 scales): cuBLAS wants VEC128 scales "GEMM-ready": for a row-major [rows, K] operand, [K / 128,
// pad4(rows)] with rows contiguous (TransformerEngine's blockwise-scaling notes: "rowwise scales [B/128, pad4(A)]
// (transposed, padded)"); PyTorch's _scaled_mm with BlockWise1x128 hands cuBLAS the same (scales made outer-dim-major
// with scale.t().contiguous().t(), rows padded to a multiple of 4). Our API takes the QuantizeFp8Blockwise layout
// [rows, K / 128], so each call transposes both operands' scales into scratch, one kernel for all groups.
// Unverified without a GPU: the M % 4 != 0 test cases in tests/kernels/cuda_grouped_gemm_test.cc check the padding
// assumption.
// TODO(waveep): accept pre-transposed (and 128x128) weight scales so the per-call weight-scale transpose goes away.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda_internal.cuh"
#include "kernels/kernels.h"

// cuBLAS / cuBLASLt return code -> Status with the expression and file:line.
#define WAVEEP_CUBLAS_RETURN_IF_ERROR(expr)                                                                           \
  do {                                                                                                                \
    cublasStatus_t waveep_cublas_rc_ = (expr);                                                                        \
    if (waveep_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                                                   \
      return ::waveep::internal::MakeForeignError(::absl::StatusCode::kInternal, "cuBLAS", #expr, __FILE__, __LINE__, \
                                                  cublasGetStatusString(waveep_cublas_rc_));                          \
  } while (0)

namespace waveep::kernels::cuda_internal {
namespace {

constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;  // what cuBLASLt's Hopper kernels like to have
constexpr size_t kMaxCachedAlgos = 4096;
constexpr uint64_t kPoolKeepBytes = uint64_t{256} << 20;

int64_t Pad4(int64_t x) { return (x + 3) / 4 * 4; }

// ---- process-wide library handles, one per device, created on first use and kept for the process ----------------
struct DeviceHandles {
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  std::mutex blas_mu;  // a cublasHandle_t carries its stream: SetStream + call must not interleave across threads
};

std::mutex g_handles_mu;
std::map<int, DeviceHandles*>& HandleMap() {
  static auto* handles = new std::map<int, DeviceHandles*>();  // never destroyed: handles outlive static dtors
  return *handles;
}

StatusOr<DeviceHandles*> HandlesFor(int device) {
  std::lock_guard<std::mutex> lock(g_handles_mu);
  DeviceHandles*& h = HandleMap()[device];
  if (h == nullptr) {
    auto fresh = std::make_unique<DeviceHandles>();
    WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&fresh->lt));
    WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasCreate(&fresh->blas));
    // NOTES: every call takes its workspace from the stream-ordered pool. With the default release threshold (0)
    // the pool returns that memory to the driver at each synchronisation and the next call maps it again; keeping
    // up to kPoolKeepBytes reserved makes the per-call allocation a pool hit. Process-wide, set once per device.
    cudaMemPool_t pool;
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = kPoolKeepBytes, current = 0;
    WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &current));
    if (current < keep)
      WAVEEP_CUDA_RETURN_IF_ERROR(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    h = fresh.release();
  }
  return h;
}

// ---- algorithm cache: cublasLtMatmulAlgoGetHeuristic costs tens of microseconds, so once per shape --------------
using AlgoKey = std::tuple<int /*device*/, bool /*fp8*/, int /*c dtype*/, int /*alignment*/, int64_t /*m*/,
                           int64_t /*n*/, int64_t /*k*/>;
// What runs one shape: cuBLASLt's algorithm, or (cuBLASLt has none for it) the simt kernel.
struct ShapePlan {
  bool simt = false;
  cublasLtMatmulAlgo_t algo{};
};
std::mutex g_algo_mu;
std::map<AlgoKey, ShapePlan>& AlgoCache() {
  static auto* cache = new std::map<AlgoKey, ShapePlan>();
  return *cache;
}
// Shapes already reported as running on the simt kernel: one line per weight shape (fp8, c dtype, n, k), or, with
// WAVEEP_GEMM_VERBOSE=1 in the environment, one per (M, alignment) too (which M cuBLASLt refuses, for diagnosis).
using ReportKey = std::tuple<bool, int, int64_t, int64_t, int64_t, uint32_t>;
std::set<ReportKey>& ReportedSimtShapes() {
  static auto* reported = new std::set<ReportKey>();
  return *reported;
}
bool VerboseGemm() {
  static const bool verbose = [] {
    const char* v = std::getenv("WAVEEP_GEMM_VERBOSE");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return verbose;
}

// RAII for the cuBLASLt descriptors of one call.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescriptors() {
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};
struct LtLayouts {
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  // Destroys the layouts that depend on M (b: the rows of A, d: the rows of C).
  void ResetRows() {
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    b = d = nullptr;
  }
  ~LtLayouts() {
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    ResetRows();
  }
};

// ---- scale transposition: [rows, cols] row-major -> [cols, ld] (rows contiguous), for many groups at once ---------
struct TransposeJob {
  const float* src;
  float* dst;
  int64_t rows;
  int64_t ld;
};
constexpr int kMaxJobsPerLaunch = 127;  // 32 bytes each + 8: the parameter block stays under the 4 KB classic limit
struct TransposeJobs {
  TransposeJob jobs[kMaxJobsPerLaunch];
  int64_t cols;
};

__global__ void __launch_bounds__(256) TransposeScalesKernel(const __grid_constant__ TransposeJobs p) {
  const TransposeJob& job = p.jobs[blockIdx.y];
  const int64_t n = job.rows * p.cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // Consecutive threads write consecutive rows of one column: coalesced stores, strided (L2-resident) loads.
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t col = i / job.rows, row = i - col * job.rows;
    job.dst[col * job.ld + row] = job.src[row * p.cols + col];
  }
}

Status LaunchTransposes(const std::vector<TransposeJob>& jobs, int64_t cols, cudaStream_t stream) {
  for (size_t first = 0; first < jobs.size(); first += kMaxJobsPerLaunch) {
    TransposeJobs p{};
    const size_t count = std::min<size_t>(kMaxJobsPerLaunch, jobs.size() - first);
    int64_t max_elems = 0;
    for (size_t j = 0; j < count; ++j) {
      p.jobs[j] = jobs[first + j];
      max_elems = std::max(max_elems, jobs[first + j].rows * cols);
    }
    p.cols = cols;
    const dim3 grid(GridFor(max_elems, 256, 64), static_cast<unsigned>(count));
    TransposeScalesKernel<<<grid, 256, 0, stream>>>(p);
    WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  }
  return absl::OkStatus();
}

// ---- device pointer tables for cublasGemmGroupedBatchedEx (written by a kernel: no pageable-memory copies, which
// could synchronise the stream) -----------------------------------------------------------------------------------
constexpr int kMaxPointersPerLaunch = 480;
struct PointerTable {
  const void* ptrs[kMaxPointersPerLaunch];
  int count;
};

__global__ void WritePointersKernel(const __grid_constant__ PointerTable table, const void** dst) {
  for (int i = threadIdx.x; i < table.count; i += blockDim.x) dst[i] = table.ptrs[i];
}

Status WritePointers(const std::vector<const void*>& ptrs, const void** dst, cudaStream_t stream) {
  for (size_t first = 0; first < ptrs.size(); first += kMaxPointersPerLaunch) {
    PointerTable table{};
    table.count = static_cast<int>(std::min<size_t>(kMaxPointersPerLaunch, ptrs.size() - first));
    std::copy(ptrs.begin() + first, ptrs.begin() + first + table.count, table.ptrs);
    WritePointersKernel<<<1, 128, 0, stream>>>(table, dst + first);
    WAVEEP_CUDA_RETURN_IF_LAUNCH_FAILED();
  }
  return absl::OkStatus();
}

cudaDataType_t CudaType(DType t) { return t == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF; }

// The alignment cuBLASLt may assume for group g's A, B and C: the largest power of two <= 256 that divides the bases of
// A and C, the row strides of A and C, and B[g] (cuBLASLt's heuristic assumes 256 bytes unless told otherwise, and an
// algorithm picked under that assumption may not run on a row offset into A or C). NOTES: a lower bound for any row
// offset, deliberately not the group's actual pointers: a group's first row moves with the wave size, and if the
// alignment did, so could the algorithm and the rounding (the layer's output must be bitwise identical for every W).
uint32_t GroupAlignment(const GroupedGemmArgs& args, int g, size_t in_bytes, size_t c_bytes) {
  uintptr_t bits = 256;
  for (const void* p : {args.a, static_cast<const void*>(args.c), args.b[g]}) bits |= reinterpret_cast<uintptr_t>(p);
  bits |= static_cast<uintptr_t>(args.k) * in_bytes;
  bits |= static_cast<uintptr_t>(args.n) * c_bytes;
  return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

}  // namespace

Status CublasLtGroupedGemm(const GroupedGemmArgs& args, cudaStream_t stream, int device) {
  WAVEEP_ASSIGN_OR_RETURN(DeviceHandles * handles, HandlesFor(device));
  const int64_t k = args.k, n = args.n;
  const size_t in_bytes = args.fp8 ? 1 : 2;
  const size_t c_bytes = DTypeSize(args.c_dtype);
  const cudaDataType_t in_type = args.fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  const cudaDataType_t c_type = CudaType(args.c_dtype);

  // Each group's shape key and what the cache knows about it, looked up once per call (a shape known to run on simt
  // needs neither transposed scales nor descriptors; a shape not cached yet is planned in the loop below).
  std::vector<AlgoKey> keys(args.num_groups);
  std::vector<ShapePlan> plans(args.num_groups);
  std::vector<char> cached(args.num_groups, 0), known_simt(args.num_groups, 0);
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    for (int g = 0; g < args.num_groups; ++g) {
      const int64_t m = args.group_offsets[g + 1] - args.group_offsets[g];
      if (m == 0) continue;
      keys[g] = AlgoKey{device,
                        args.fp8,
                        static_cast<int>(args.c_dtype),
                        static_cast<int>(GroupAlignment(args, g, in_bytes, c_bytes)),
                        m,
                        n,
                        k};
      auto it = AlgoCache().find(keys[g]);
      if (it == AlgoCache().end()) continue;
      plans[g] = it->second;
      cached[g] = 1;
      known_simt[g] = it->second.simt;
    }
  }
  // Scratch: the cuBLASLt workspace, then (FP8) the transposed A and B scales of every group that may run on
  // cuBLASLt, 16-byte aligned each.
  const int64_t kb = k / kGemmScaleBlock;
  std::vector<int64_t> a_scale_at(args.num_groups, -1), b_scale_at(args.num_groups, -1);
  size_t scratch_bytes = kLtWorkspaceBytes;
  if (args.fp8) {
    for (int g = 0; g < args.num_groups; ++g) {
      const int64_t m = args.group_offsets[g + 1] - args.group_offsets[g];
      if (m == 0 || known_simt[g]) continue;
      a_scale_at[g] = static_cast<int64_t>(scratch_bytes);
      scratch_bytes += sizeof(float) * kb * Pad4(m);
      b_scale_at[g] = static_cast<int64_t>(scratch_bytes);
      scratch_bytes += sizeof(float) * kb * Pad4(n);
    }
  }
  StreamScratch scratch(stream);
  WAVEEP_RETURN_IF_ERROR(scratch.Allocate(scratch_bytes));
  char* base = scratch.as<char>();
  if (args.fp8) {
    // The pad4 rows of the scale tables are never used for real rows; zero them so nothing reads garbage.
    WAVEEP_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(base + kLtWorkspaceBytes, 0, scratch_bytes - kLtWorkspaceBytes, stream));
    std::vector<TransposeJob> jobs;
    for (int g = 0; g < args.num_groups; ++g) {
      const int64_t row0 = args.group_offsets[g], m = args.group_offsets[g + 1] - row0;
      if (m == 0 || known_simt[g]) continue;
      jobs.push_back({args.a_scales + row0 * kb, reinterpret_cast<float*>(base + a_scale_at[g]), m, Pad4(m)});
      jobs.push_back({args.b_scales[g], reinterpret_cast<float*>(base + b_scale_at[g]), n, Pad4(n)});
    }
    WAVEEP_RETURN_IF_ERROR(LaunchTransposes(jobs, kb, stream));
  }

  LtDescriptors desc;
  WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  WAVEEP_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  WAVEEP_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  if (args.fp8) {
    const cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    WAVEEP_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
    WAVEEP_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
  }
  WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&desc.pref));
  const size_t workspace_bytes = kLtWorkspaceBytes;
  WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
      desc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));

  const float alpha = 1.0f, beta = 0.0f;
  const char* a_bytes = static_cast<const char*>(args.a);
  char* c_base = static_cast<char*>(args.c);
  uint32_t pref_alignment = 0;  // what desc.pref says now (0: not set yet)
  LtLayouts layout;
  int64_t layout_m = -1;  // the M layout.b and layout.d describe (-1: none yet)
  for (int g = 0; g < args.num_groups; ++g) {
    const int64_t row0 = args.group_offsets[g], m = args.group_offsets[g + 1] - row0;
    if (m == 0) continue;
    if (known_simt[g]) {  // a shape cuBLASLt has no algorithm for (see below): no scales or descriptors needed
      WAVEEP_RETURN_IF_ERROR(SimtGemmGroup(args, g, stream));
      continue;
    }
    const AlgoKey& key = keys[g];
    const uint32_t alignment = static_cast<uint32_t>(std::get<3>(key));
    ShapePlan& plan = plans[g];
    // Layouts: the weights' once per call, the rows' when M changes (groups of equal M, e.g. the shared expert's
    // blocks, share them).
    if (layout.a == nullptr) WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&layout.a, in_type, k, n, k));
    if (m != layout_m) {
      layout.ResetRows();
      WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&layout.b, in_type, k, m, k));
      WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&layout.d, c_type, n, m, n));
      layout_m = m;
    }
    if (args.fp8) {
      const void* a_scale = base + b_scale_at[g];  // cuBLAS "A" is our weight B_g
      const void* b_scale = base + a_scale_at[g];
      WAVEEP_CUBLAS_RETURN_IF_ERROR(
          cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
      WAVEEP_CUBLAS_RETURN_IF_ERROR(
          cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)));
    }
    if (!cached[g]) {
      if (alignment != pref_alignment) {
        for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
          WAVEEP_CUBLAS_RETURN_IF_ERROR(
              cublasLtMatmulPreferenceSetAttribute(desc.pref, attr, &alignment, sizeof(alignment)));
        }
        pref_alignment = alignment;
      }
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      // No algorithm for this shape (seen for small FP8 block-scaled groups): the simt kernel runs it, for this
      // shape every time, so which code computes a group still depends only on (M, N, K). cuBLASLt says so either
      // with found == 0 or with CUBLAS_STATUS_NOT_SUPPORTED ("no heuristic available for this configuration").
      const cublasStatus_t heuristic = cublasLtMatmulAlgoGetHeuristic(
          handles->lt, desc.op, layout.a, layout.b, layout.d, layout.d, desc.pref, 1, &result, &found);
      if (heuristic != CUBLAS_STATUS_NOT_SUPPORTED) WAVEEP_CUBLAS_RETURN_IF_ERROR(heuristic);
      plan.simt = heuristic == CUBLAS_STATUS_NOT_SUPPORTED || found == 0 || result.state != CUBLAS_STATUS_SUCCESS;
      plan.algo = result.algo;
      std::lock_guard<std::mutex> lock(g_algo_mu);
      if (AlgoCache().size() >= kMaxCachedAlgos) AlgoCache().clear();  // routing makes M vary; keep it bounded
      AlgoCache().emplace(key, plan);
      for (int h = g + 1; h < args.num_groups; ++h) {  // later groups of this call with the same shape: planned now
        if (!cached[h] && keys[h] == key) plans[h] = plan, cached[h] = 1;
      }
      const bool verbose = VerboseGemm();
      if (plan.simt &&
          ReportedSimtShapes()
              .emplace(args.fp8, static_cast<int>(args.c_dtype), n, k, verbose ? m : 0, verbose ? alignment : 0)
              .second) {
        std::fprintf(stderr,
                     "[waveep] cuBLASLt has no %s algorithm for m=%lld n=%lld k=%lld (C %s, %u-byte alignment): such "
                     "groups run on the simt kernel (slower; %s)\n",
                     args.fp8 ? "fp8" : "bf16", static_cast<long long>(m), static_cast<long long>(n),
                     static_cast<long long>(k), std::string(DTypeName(args.c_dtype)).c_str(), alignment,
                     verbose ? "WAVEEP_GEMM_VERBOSE=1: every such shape" : "reported once per n, k");
      }
    }
    if (plan.simt) {
      WAVEEP_RETURN_IF_ERROR(SimtGemmGroup(args, g, stream));
      continue;
    }
    const cublasLtMatmulAlgo_t algo = plan.algo;
    const void* b_g = args.b[g];
    const void* a_g = a_bytes + row0 * k * in_bytes;
    void* c_g = c_base + row0 * n * c_bytes;
    WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(handles->lt, desc.op, &alpha, b_g, layout.a, a_g, layout.b, &beta, c_g,
                                                 layout.d, c_g, layout.d, &algo, base, kLtWorkspaceBytes, stream));
  }
  scratch.Free();
  return absl::OkStatus();
}

Status CublasGroupedBatchedGemm(const GroupedGemmArgs& args, cudaStream_t stream, int device) {
  if (args.fp8) return absl::InvalidArgumentError("cublasGemmGroupedBatchedEx has no fp8 path");
  WAVEEP_ASSIGN_OR_RETURN(DeviceHandles * handles, HandlesFor(device));
  const int64_t k = args.k, n = args.n;
  const size_t c_bytes = DTypeSize(args.c_dtype);
  std::vector<cublasOperation_t> trans_a, trans_b;
  std::vector<int64_t> m_arr, n_arr, k_arr, lda, ldb, ldc, group_size;
  std::vector<float> alpha, beta;
  std::vector<const void*> ptrs_a, ptrs_b, ptrs_c;  // C pointers are written, but travel in the same table type
  const char* a_bytes = static_cast<const char*>(args.a);
  char* c_base = static_cast<char*>(args.c);
  for (int g = 0; g < args.num_groups; ++g) {
    const int64_t row0 = args.group_offsets[g], m = args.group_offsets[g + 1] - row0;
    if (m == 0) continue;
    trans_a.push_back(CUBLAS_OP_T);
    trans_b.push_back(CUBLAS_OP_N);
    m_arr.push_back(n);
    n_arr.push_back(m);
    k_arr.push_back(k);
    lda.push_back(k);
    ldb.push_back(k);
    ldc.push_back(n);
    group_size.push_back(1);
    alpha.push_back(1.0f);
    beta.push_back(0.0f);
    ptrs_a.push_back(args.b[g]);
    ptrs_b.push_back(a_bytes + row0 * k * 2);
    ptrs_c.push_back(c_base + row0 * n * c_bytes);
  }
  const size_t count = ptrs_a.size();
  StreamScratch tables(stream);
  WAVEEP_RETURN_IF_ERROR(tables.Allocate(3 * count * sizeof(void*)));
  const void** dev_a = tables.as<const void*>();
  const void** dev_b = dev_a + count;
  void** dev_c = tables.as<void*>() + 2 * count;
  WAVEEP_RETURN_IF_ERROR(WritePointers(ptrs_a, dev_a, stream));
  WAVEEP_RETURN_IF_ERROR(WritePointers(ptrs_b, dev_b, stream));
  WAVEEP_RETURN_IF_ERROR(WritePointers(ptrs_c, const_cast<const void**>(dev_c), stream));
  {
    std::lock_guard<std::mutex> lock(handles->blas_mu);
    WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handles->blas, stream));
    WAVEEP_CUBLAS_RETURN_IF_ERROR(cublasGemmGroupedBatchedEx_64(
        handles->blas, trans_a.data(), trans_b.data(), m_arr.data(), n_arr.data(), k_arr.data(), alpha.data(), dev_a,
        CUDA_R_16BF, lda.data(), dev_b, CUDA_R_16BF, ldb.data(), beta.data(), dev_c, CudaType(args.c_dtype), ldc.data(),
        static_cast<int64_t>(count), group_size.data(), CUBLAS_COMPUTE_32F));
  }
  tables.Free();
  return absl::OkStatus();
}

}  // namespace waveep::kernels::cuda_internal
