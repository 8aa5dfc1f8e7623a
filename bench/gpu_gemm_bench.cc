// Copyright 2026 The waveep Authors.
//
// Grouped GEMM throughput on one GPU at the expert shapes of V4-Flash, V4-Pro, DeepSeek-V3 and Qwen3-235B:
// gate+up [M, H] x [2I, H]^T and down [M, I] x [H, I]^T, 32 local experts, 256 .. 65536 routed rows per GPU,
// uniform and skewed (Zipf, s = 1) rows per expert, BF16 and FP8 (1x128 block scales), every backend; next to a
// dense GEMM of the same total FLOPs (one group of all rows through cuBLASLt) as the roofline reference.
//
//   build-gpu/bench/waveep_gpu_gemm_bench --benchmark_filter='V4-Pro/gate_up/bf16'
//       --benchmark_format=json --benchmark_out=gemm.json    (one command line)
//   python3 scripts/gpu_torch_compare.py --ours gemm.json      # torch._grouped_mm side by side
//
// Names: BM_GpuGroupedGemm/<model>/<gate_up|down>/<bf16|fp8>/<uniform|skewed>/rows:<R>/<backend>
//        BM_GpuDenseGemm/<model>/<gate_up|down>/<bf16|fp8>/rows:<R>
// Counters: TFLOP/s = 2 * sum(M_g) * N * K / time; us = time per grouped GEMM; label = backend (auto: the one the
// heuristic picked). Each benchmark first checks sampled outputs against a double-precision host reference (the
// tolerance of tests/kernels/cuda_grouped_gemm_test.cc) and reports an error instead of a time if they disagree.
// Timing: CUDA events around a batch of back-to-back calls on one stream, so host launch overhead that the GPU
// cannot hide (one cuBLASLt call per expert) is part of the number, as it is in the layer.
// Without a CUDA device every benchmark reports SkipWithError.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/gemm_heuristics_internal.h"  // only to label which backend kAuto picked
#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

constexpr int kExperts = 32;
constexpr int kScaleBlock = 128;
constexpr int64_t kPattern = int64_t{1} << 21;  // host pattern the device buffers repeat (elements)
// 256 .. 65536 routed rows per GPU (the range), plus 131072 = 4096 rows per expert: the "large M" of the
// 80%-of-dense target.
constexpr int64_t kRowCounts[] = {256, 1024, 4096, 16384, 65536, 131072};

struct ModelShape {
  const char* name;
  int64_t hidden, inter;
};
constexpr ModelShape kModels[] = {
    {"V4-Flash", 4096, 2048}, {"V4-Pro", 7168, 3072}, {"DeepSeek-V3", 7168, 2048}, {"Qwen3-235B", 4096, 1536}};

#define BENCH_CUDA_OR_RETURN(expr, state)                                                \
  do {                                                                                   \
    const cudaError_t rc_ = (expr);                                                      \
    if (rc_ != cudaSuccess) {                                                            \
      (state).SkipWithError(absl::StrCat(#expr, ": ", cudaGetErrorString(rc_)).c_str()); \
      return;                                                                            \
    }                                                                                    \
  } while (0)

// Rows per expert summing to `total`: equal shares, or Zipf(1) shares (expert e gets ~1/(e+1)), remainder to 0.
std::vector<int64_t> RowsPerExpert(int64_t total, bool skewed) {
  std::vector<int64_t> rows(kExperts, skewed ? 0 : total / kExperts);
  if (skewed) {
    double norm = 0;
    for (int e = 0; e < kExperts; ++e) norm += 1.0 / (e + 1);
    for (int e = 0; e < kExperts; ++e) rows[e] = static_cast<int64_t>(total / norm / (e + 1));
  }
  int64_t sum = 0;
  for (int64_t r : rows) sum += r;
  rows[0] += total - sum;
  return rows;
}

// Device operands for one (N, K, dtype) at the largest row count; reallocated only when the shape changes
// (benchmarks are registered shape-major). Every buffer repeats a host pattern, so any element can be recomputed
// on the host for the correctness check.
class Operands {
 public:
  static Operands* For(int64_t n, int64_t k, bool fp8, std::string* error) {
    static std::unique_ptr<Operands> current;
    if (current && current->n_ == n && current->k_ == k && current->fp8_ == fp8) return current.get();
    current.reset();  // free the previous shape first
    auto fresh = std::unique_ptr<Operands>(new Operands(n, k, fp8));
    *error = fresh->Init();
    if (!error->empty()) return nullptr;
    current = std::move(fresh);
    return current.get();
  }

  // Value of A[row, col] / B_g[row, col] as the GEMM sees it (dequantized for FP8).
  double A(int64_t row, int64_t col) const {
    return Value(row * k_ + col, row * (k_ / kScaleBlock) + col / kScaleBlock);
  }
  double B(int g, int64_t row, int64_t col) const {
    const int64_t base = static_cast<int64_t>(g) * n_;
    return Value((base + row) * k_ + col, (base + row) * (k_ / kScaleBlock) + col / kScaleBlock);
  }

  const void* a() const { return a_.data(); }
  const float* a_scales() const { return a_scales_.as<float>(); }
  void* c() const { return c_.data(); }
  const std::vector<const void*>& b() const { return b_ptrs_; }
  const std::vector<const float*>& b_scales() const { return b_scale_ptrs_; }

 private:
  Operands(int64_t n, int64_t k, bool fp8) : n_(n), k_(k), fp8_(fp8) {}

 public:
  bool fp8() const { return fp8_; }

 private:
  double Value(int64_t index, int64_t scale_index) const {
    const uint16_t code = pattern_[index % kPattern];
    if (!fp8_) return Bf16ToFloat(code);
    return static_cast<double>(Fp8E4M3ToFloat(static_cast<uint8_t>(code))) * scales_[scale_index % scales_.size()];
  }

  // Fills `bytes` of device memory at `dst` by repeating the device copy of the pattern.
  std::string Replicate(void* dst, const void* pattern_dev, size_t pattern_bytes, size_t bytes) {
    for (size_t off = 0; off < bytes; off += pattern_bytes) {
      const cudaError_t rc = cudaMemcpy(static_cast<char*>(dst) + off, pattern_dev,
                                        std::min(pattern_bytes, bytes - off), cudaMemcpyDeviceToDevice);
      if (rc != cudaSuccess) return cudaGetErrorString(rc);
    }
    return "";
  }

  std::string Init() {
    std::mt19937 rng(1234);
    pattern_.resize(kPattern);
    if (fp8_) {
      // Magnitudes 2^-3 .. 2^4 with random mantissas and signs; never the NaN codes.
      for (uint16_t& c : pattern_) c = static_cast<uint16_t>(((rng() & 1) << 7) | ((4 + rng() % 8) << 3) | (rng() % 8));
      scales_.resize(4099);  // co-prime with the row lengths, so scales vary along both axes
      std::uniform_real_distribution<float> s(0x1p-9f, 0x1p-7f);
      for (float& v : scales_) v = s(rng);
    } else {
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      for (uint16_t& c : pattern_) c = FloatToBf16(u(rng));
    }
    const size_t elem = fp8_ ? 1 : 2;
    const int64_t max_rows = kRowCounts[std::size(kRowCounts) - 1];
    auto alloc = [](size_t bytes, Buffer* out) -> std::string {
      StatusOr<Buffer> b = Buffer::Allocate(Device::Cuda(0), MemoryKind::kDevice, bytes);
      if (!b.ok()) return std::string(b.status().message());
      *out = std::move(*b);
      return "";
    };
    Buffer pattern_dev, scales_dev;
    std::string err;
    if (!(err = alloc(kPattern * elem, &pattern_dev)).empty()) return err;
    std::vector<uint8_t> packed(kPattern * elem);
    for (int64_t i = 0; i < kPattern; ++i) {
      if (fp8_) {
        packed[i] = static_cast<uint8_t>(pattern_[i]);
      } else {
        std::memcpy(&packed[2 * i], &pattern_[i], 2);
      }
    }
    if (cudaMemcpy(pattern_dev.data(), packed.data(), packed.size(), cudaMemcpyHostToDevice) != cudaSuccess)
      return "pattern upload failed";
    if (!(err = alloc(max_rows * k_ * elem, &a_)).empty()) return err;
    if (!(err = alloc(static_cast<size_t>(kExperts) * n_ * k_ * elem, &b_)).empty()) return err;
    if (!(err = alloc(max_rows * n_ * sizeof(float), &c_)).empty()) return err;  // room for F32 output
    if (!(err = Replicate(a_.data(), pattern_dev.data(), packed.size(), max_rows * k_ * elem)).empty()) return err;
    if (!(err = Replicate(b_.data(), pattern_dev.data(), packed.size(), kExperts * n_ * k_ * elem)).empty()) return err;
    const size_t b_bytes = static_cast<size_t>(n_) * k_ * elem;
    for (int g = 0; g < kExperts; ++g) b_ptrs_.push_back(b_.as<char>() + g * b_bytes);
    if (fp8_) {
      const int64_t kb = k_ / kScaleBlock;
      // Scales follow the same repeat rule as the values: index % scales_.size().
      std::vector<float> a_s(max_rows * kb), b_s(static_cast<size_t>(kExperts) * n_ * kb);
      for (size_t i = 0; i < a_s.size(); ++i) a_s[i] = scales_[i % scales_.size()];
      for (size_t i = 0; i < b_s.size(); ++i) b_s[i] = scales_[i % scales_.size()];
      if (!(err = alloc(a_s.size() * 4, &a_scales_)).empty()) return err;
      if (!(err = alloc(b_s.size() * 4, &b_scales_)).empty()) return err;
      if (cudaMemcpy(a_scales_.data(), a_s.data(), a_s.size() * 4, cudaMemcpyHostToDevice) != cudaSuccess ||
          cudaMemcpy(b_scales_.data(), b_s.data(), b_s.size() * 4, cudaMemcpyHostToDevice) != cudaSuccess)
        return "scale upload failed";
      for (int g = 0; g < kExperts; ++g) b_scale_ptrs_.push_back(b_scales_.as<float>() + g * n_ * kb);
    }
    return "";
  }

  int64_t n_, k_;
  bool fp8_;
  std::vector<uint16_t> pattern_;  // BF16 bits or FP8 codes
  std::vector<float> scales_;
  Buffer a_, b_, c_, a_scales_, b_scales_;
  std::vector<const void*> b_ptrs_;
  std::vector<const float*> b_scale_ptrs_;
};

struct Case {
  ModelShape model;
  bool gate_up;
  bool fp8;
  bool skewed;
  int64_t rows;
  GemmBackend backend;
  bool dense;  // one group of all rows through cuBLASLt: the roofline reference
};

Status RunGemm(const Case& c, Operands& ops, const std::vector<int64_t>& offsets, int64_t n, int64_t k,
               Stream& stream) {
  const int groups = static_cast<int>(offsets.size()) - 1;
  if (c.fp8) {
    return CudaGroupedGemmNTFp8(static_cast<const uint8_t*>(ops.a()), ops.a_scales(), offsets.data(), groups, k,
                                reinterpret_cast<const uint8_t* const*>(ops.b().data()), ops.b_scales().data(), n,
                                ops.c(), DType::kBF16, stream, c.backend);
  }
  return CudaGroupedGemmNTBf16(static_cast<const uint16_t*>(ops.a()), offsets.data(), groups, k,
                               reinterpret_cast<const uint16_t* const*>(ops.b().data()), n, ops.c(), DType::kBF16,
                               stream, c.backend);
}

// Samples rows (first and last of up to 8 groups) x 64 columns against a double-precision host reference.
std::string CheckOutput(const Operands& ops, const std::vector<int64_t>& offsets, int64_t n, int64_t k) {
  const int groups = static_cast<int>(offsets.size()) - 1;
  std::vector<uint16_t> row(n);
  int checked_groups = 0;
  for (int g = 0; g < groups && checked_groups < 8; ++g) {
    if (offsets[g + 1] == offsets[g]) continue;
    ++checked_groups;
    for (int64_t r : {offsets[g], offsets[g + 1] - 1}) {
      if (cudaMemcpy(row.data(), static_cast<const uint16_t*>(ops.c()) + r * n, n * 2, cudaMemcpyDeviceToHost) !=
          cudaSuccess)
        return "copy back failed";
      for (int64_t j = 0; j < n; j += std::max<int64_t>(1, n / 64)) {
        double want = 0, bound = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
          const double p = ops.A(r, kk) * ops.B(g, j, kk);
          want += p;
          bound += std::fabs(p);
        }
        const double got = Bf16ToFloat(row[j]);
        // FP8: Hopper's FP8 MMA keeps ~14 bits in its accumulator within a scale block (see the test's header).
        const double tol = (ops.fp8() ? 0x1p-13 : 0x1p-18) * bound + 0x1p-8 * std::fabs(want) + 1e-30;
        if (std::fabs(got - want) > tol)
          return absl::StrCat("mismatch at group ", g, " row ", r, " col ", j, ": got ", got, ", want ", want);
      }
    }
  }
  return "";
}

std::string BackendLabel(const Case& c, const std::vector<int64_t>& rows, int64_t n, int64_t k, bool sm90_available) {
  if (c.backend != GemmBackend::kAuto) return std::string(GemmBackendName(c.backend));
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  internal::GroupedGemmProblem p;
  p.rows_per_group = rows;
  p.n = n;
  p.k = k;
  p.dtype = c.fp8 ? DType::kFP8E4M3 : DType::kBF16;
  p.sm_count = sms;
  p.sm90_kernel_available = sm90_available;
  const char* env = std::getenv("WAVEEP_GEMM_EXPERIMENTAL");
  p.allow_experimental = env != nullptr && std::string(env) == "1";
  StatusOr<internal::GroupedGemmPlan> plan = internal::PlanGroupedGemm(p, GemmBackend::kAuto);
  return plan.ok() ? absl::StrCat("auto=", GemmBackendName(plan->backend)) : "auto=?";
}

void BM_Gemm(benchmark::State& state, Case c) {
  if (!CudaKernelsCompiledIn() || CudaDeviceCount() == 0) {
    state.SkipWithError("no CUDA device (or waveep built without CUDA)");
    return;
  }
  const int64_t n = c.gate_up ? 2 * c.model.inter : c.model.hidden;
  const int64_t k = c.gate_up ? c.model.hidden : c.model.inter;
  std::string error;
  Operands* ops = Operands::For(n, k, c.fp8, &error);
  if (ops == nullptr) {
    state.SkipWithError(absl::StrCat("allocating operands: ", error).c_str());
    return;
  }
  const std::vector<int64_t> rows = c.dense ? std::vector<int64_t>{c.rows} : RowsPerExpert(c.rows, c.skewed);
  std::vector<int64_t> offsets = {0};
  for (int64_t r : rows) offsets.push_back(offsets.back() + r);
  StreamOptions options;
  options.name = "gemm";
  StatusOr<std::unique_ptr<Stream>> stream = Stream::Create(Device::Cuda(0), options);
  if (!stream.ok()) {
    state.SkipWithError(std::string(stream.status().message()).c_str());
    return;
  }
  // Is the experimental kernel in this binary? An all-empty problem answers without launching anything.
  const std::vector<int64_t> probe_offsets = {0, 0};
  const void* probe_b[] = {nullptr};
  const bool sm90_available =
      CudaGroupedGemmNTBf16(nullptr, probe_offsets.data(), 1, 64, reinterpret_cast<const uint16_t* const*>(probe_b), 64,
                            nullptr, DType::kBF16, **stream, GemmBackend::kSm90)
          .ok();

  // Correctness first (also warms up the algorithm cache).
  Status s = RunGemm(c, *ops, offsets, n, k, **stream);
  if (s.ok()) s = (*stream)->Synchronize();
  if (!s.ok()) {
    state.SkipWithError(std::string(s.message()).c_str());
    return;
  }
  const std::string mismatch = CheckOutput(*ops, offsets, n, k);
  if (!mismatch.empty()) {
    state.SkipWithError(absl::StrCat("correctness check failed: ", mismatch).c_str());
    return;
  }

  cudaEvent_t start, stop;
  BENCH_CUDA_OR_RETURN(cudaEventCreate(&start), state);
  BENCH_CUDA_OR_RETURN(cudaEventCreate(&stop), state);
  const cudaStream_t native = static_cast<cudaStream_t>((*stream)->native());
  constexpr int kBatch = 10;
  for (auto _ : state) {
    BENCH_CUDA_OR_RETURN(cudaEventRecord(start, native), state);
    for (int i = 0; i < kBatch && s.ok(); ++i) s = RunGemm(c, *ops, offsets, n, k, **stream);
    BENCH_CUDA_OR_RETURN(cudaEventRecord(stop, native), state);
    BENCH_CUDA_OR_RETURN(cudaEventSynchronize(stop), state);
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
    float ms = 0;
    BENCH_CUDA_OR_RETURN(cudaEventElapsedTime(&ms, start, stop), state);
    state.SetIterationTime(ms / 1e3 / kBatch);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double flops = 2.0 * static_cast<double>(c.rows) * n * k;
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["rows"] = static_cast<double>(c.rows);
  state.counters["n"] = static_cast<double>(n);
  state.counters["k"] = static_cast<double>(k);
  state.SetLabel(c.dense ? "dense cublaslt" : BackendLabel(c, rows, n, k, sm90_available));
}

// Measured time per benchmark. Each iteration runs kBatch GEMMs and reports one GEMM's time, so the wall time is
// about kBatch x this. With 0.2, run1 of docs/perf/2026-11-29-NVIDIA-H200 took 135.5 s for 36 benchmarks (3.8 s
// each), so gpu_check.sh's 144 would pass its 200 s step limit; 0.02 is a tenth of that (not measured yet).
constexpr double kMinTimeS = 0.02;

void RegisterAll() {
  for (const ModelShape& model : kModels) {
    for (bool gate_up : {true, false}) {
      for (bool fp8 : {false, true}) {
        const std::string prefix =
            absl::StrCat(model.name, "/", gate_up ? "gate_up" : "down", "/", fp8 ? "fp8" : "bf16");
        std::vector<GemmBackend> backends = {GemmBackend::kAuto, GemmBackend::kCublasLt};
        if (!fp8) {
          backends.push_back(GemmBackend::kCublasGrouped);
          backends.push_back(GemmBackend::kSm90);
        }
        for (int64_t rows : kRowCounts) {
          Case dense{model, gate_up, fp8, false, rows, GemmBackend::kCublasLt, true};
          benchmark::RegisterBenchmark(absl::StrCat("BM_GpuDenseGemm/", prefix, "/rows:", rows).c_str(), BM_Gemm, dense)
              ->UseManualTime()
              ->Unit(benchmark::kMicrosecond)
              ->MinTime(kMinTimeS);
          for (bool skewed : {false, true}) {
            for (GemmBackend backend : backends) {
              Case c{model, gate_up, fp8, skewed, rows, backend, false};
              benchmark::RegisterBenchmark(
                  absl::StrCat("BM_GpuGroupedGemm/", prefix, "/", skewed ? "skewed" : "uniform", "/rows:", rows, "/",
                               GemmBackendName(backend))
                      .c_str(),
                  BM_Gemm, c)
                  ->UseManualTime()
                  ->Unit(benchmark::kMicrosecond)
                  ->MinTime(kMinTimeS);
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace waveep::kernels

int main(int argc, char** argv) {
  waveep::kernels::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
