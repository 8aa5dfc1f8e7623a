// Copyright 2026 The waveep Authors.
//
// Microbenchmarks of the CPU kernels (the reference path every rank runs without a GPU).
//
//   build-kernels/bench/waveep_kernels_bench --benchmark_filter=GroupedGemm
//
// GEMM benchmarks report FLOP/s (2*M*N*K per GEMM) next to the BLAS build and thread count, so a number can be
// compared with the topology module's measured GEMM rate. Memory-bound kernels report bytes/s (bytes read plus
// bytes written once). All timings are wall clock (UseRealTime): OpenBLAS runs its own threads, whose CPU time the
// calling thread's clock would not see.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace waveep::kernels {
namespace {

std::vector<float> RandomVector(int64_t n, uint64_t seed, float magnitude = 1.0f) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = magnitude * UniformSym(seed, RngStream::kTest, i);
  return v;
}

// Uneven routing: experts alternate between half and one-and-a-half times the average rows, as skewed real
// routing would give, so the grouped GEMM sees varying M.
std::vector<int64_t> UnevenOffsets(int num_experts, int64_t avg_rows) {
  std::vector<int64_t> offsets = {0};
  for (int e = 0; e < num_experts; ++e)
    offsets.push_back(offsets.back() + (e % 2 == 0 ? avg_rows / 2 : avg_rows * 3 / 2));
  return offsets;
}

std::string BlasLabel() { return absl::StrCat(BlasInfo(), " threads=", SetBlasThreads(0)); }

struct ExpertWeights {
  std::vector<std::vector<float>> w13, w2;
  std::vector<const float*> w13_ptrs, w2_ptrs;
};

ExpertWeights MakeWeights(int num_experts, int64_t hidden, int64_t inter) {
  ExpertWeights w;
  for (int e = 0; e < num_experts; ++e) {
    w.w13.push_back(RandomVector(2 * inter * hidden, 100 + e, 0.05f));
    w.w2.push_back(RandomVector(hidden * inter, 200 + e, 0.05f));
    w.w13_ptrs.push_back(w.w13.back().data());
    w.w2_ptrs.push_back(w.w2.back().data());
  }
  return w;
}

// Args: hidden H, intermediate I, experts, average rows per expert. One grouped GEMM: the gate+up projection
// [M, H] x [2I, H]^T per expert.
void BM_GroupedGemm(benchmark::State& state) {
  const int64_t hidden = state.range(0), inter = state.range(1);
  const int num_experts = static_cast<int>(state.range(2));
  const std::vector<int64_t> offsets = UnevenOffsets(num_experts, state.range(3));
  const int64_t rows = offsets.back();
  const ExpertWeights w = MakeWeights(num_experts, hidden, inter);
  const std::vector<float> x = RandomVector(rows * hidden, 1);
  std::vector<float> gate_up(rows * 2 * inter);
  for (auto _ : state) {
    Status s =
        GroupedGemmNT(x.data(), offsets.data(), num_experts, hidden, w.w13_ptrs.data(), 2 * inter, gate_up.data());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(gate_up.data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * rows * 2 * inter * hidden, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["rows"] = static_cast<double>(rows);
  state.SetLabel(BlasLabel());
}
BENCHMARK(BM_GroupedGemm)
    ->ArgNames({"H", "I", "E", "avg_M"})
    ->Args({256, 128, 16, 16})    // tiny preset, a handful of tokens per expert
    ->Args({256, 128, 16, 256})   // tiny preset, prefill-sized
    ->Args({2048, 768, 8, 16})    // qwen3-30b-a3b, decode-like small M
    ->Args({2048, 768, 8, 256})   // qwen3-30b-a3b, prefill-sized
    ->Args({7168, 2048, 2, 128})  // deepseek-v3
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The whole expert FFN: gate+up GEMM, SwiGLU, down GEMM; 6*H*I FLOPs per row (docs/topology.md §2).
void BM_ExpertFfn(benchmark::State& state) {
  const int64_t hidden = state.range(0), inter = state.range(1);
  const int num_experts = static_cast<int>(state.range(2));
  const std::vector<int64_t> offsets = UnevenOffsets(num_experts, state.range(3));
  const int64_t rows = offsets.back();
  const ExpertWeights w = MakeWeights(num_experts, hidden, inter);
  const std::vector<float> x = RandomVector(rows * hidden, 1);
  std::vector<float> gate_up(rows * 2 * inter), act(rows * inter), y(rows * hidden);
  for (auto _ : state) {
    Status s =
        GroupedGemmNT(x.data(), offsets.data(), num_experts, hidden, w.w13_ptrs.data(), 2 * inter, gate_up.data());
    SwiGLU(gate_up.data(), rows, inter, act.data());
    if (s.ok()) s = GroupedGemmNT(act.data(), offsets.data(), num_experts, inter, w.w2_ptrs.data(), hidden, y.data());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(6.0 * rows * inter * hidden, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(BlasLabel());
}
BENCHMARK(BM_ExpertFfn)
    ->ArgNames({"H", "I", "E", "avg_M"})
    ->Args({256, 128, 16, 16})
    ->Args({2048, 768, 8, 256})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Args: rows (tokens), cols (H), block.
void BM_QuantizeFp8(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const int block = static_cast<int>(state.range(2));
  const std::vector<float> x = RandomVector(rows * cols, 2, 10.0f);
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(rows * cols / block);
  for (auto _ : state) {
    Status s = QuantizeFp8Blockwise(x.data(), rows, cols, block, q.data(), scales.data());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(q.data());
    benchmark::ClobberMemory();
  }
  // Read FP32, write FP8 codes and FP32 scales.
  state.SetBytesProcessed(state.iterations() * (rows * cols * 5 + static_cast<int64_t>(scales.size()) * 4));
}
BENCHMARK(BM_QuantizeFp8)
    ->ArgNames({"T", "H", "block"})
    ->Args({256, 2048, 128})
    ->Args({256, 7168, 128})
    ->Args({256, 7168, 32})
    ->UseRealTime();

void BM_DequantizeFp8(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const int block = static_cast<int>(state.range(2));
  const std::vector<float> x = RandomVector(rows * cols, 3, 10.0f);
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(rows * cols / block), out(rows * cols);
  if (!QuantizeFp8Blockwise(x.data(), rows, cols, block, q.data(), scales.data()).ok()) {
    state.SkipWithError("quantize failed");
    return;
  }
  for (auto _ : state) {
    Status s = DequantizeFp8Blockwise(q.data(), scales.data(), rows, cols, block, out.data());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * (rows * cols * 5 + static_cast<int64_t>(scales.size()) * 4));
}
BENCHMARK(BM_DequantizeFp8)->ArgNames({"T", "H", "block"})->Args({256, 7168, 128})->UseRealTime();

void BM_ConvertF32ToBf16(benchmark::State& state) {
  const int64_t n = state.range(0);
  const std::vector<float> x = RandomVector(n, 4);
  std::vector<uint16_t> out(n);
  for (auto _ : state) {
    ConvertF32ToBf16(x.data(), out.data(), n);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * n * 6);
}
BENCHMARK(BM_ConvertF32ToBf16)->Arg(256 * 7168)->UseRealTime();

// Args: tokens, preset (0 = deepseek-v3: 256 experts, sigmoid, bias, 8 groups keep 4, top-8;
//                       1 = qwen3-30b-a3b: 128 experts, softmax, top-8).
void BM_TopkGating(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  GateParams p;
  if (state.range(1) == 0) {
    p.num_experts = 256;
    p.top_k = 8;
    p.scoring = Scoring::kSigmoid;
    p.n_group = 8;
    p.topk_group = 4;
    p.routed_scaling_factor = 2.5f;
    state.SetLabel("deepseek-v3");
  } else {
    p.num_experts = 128;
    p.top_k = 8;
    p.scoring = Scoring::kSoftmax;
    state.SetLabel("qwen3-30b-a3b");
  }
  const std::vector<float> logits = RandomVector(tokens * p.num_experts, 5, 4.0f);
  const std::vector<float> bias = RandomVector(p.num_experts, 6, 0.1f);
  std::vector<int32_t> idx(tokens * p.top_k);
  std::vector<float> w(tokens * p.top_k);
  for (auto _ : state) {
    Status s = TopkGating(logits.data(), p.scoring == Scoring::kSigmoid ? bias.data() : nullptr, tokens, p, idx.data(),
                          w.data());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * tokens);  // tokens/s
}
BENCHMARK(BM_TopkGating)->ArgNames({"T", "preset"})->Args({4096, 0})->Args({4096, 1})->UseRealTime();

// Args: tokens, top_k, experts, hidden. BuildExpertPermutation plus the FP32 row gather it drives.
void BM_Permute(benchmark::State& state) {
  const int64_t tokens = state.range(0), hidden = state.range(3);
  const int top_k = static_cast<int>(state.range(1)), num_experts = static_cast<int>(state.range(2));
  std::vector<int32_t> idx(tokens * top_k);
  for (int64_t i = 0; i < tokens * top_k; ++i)
    idx[i] = static_cast<int32_t>(UniformInt(7, RngStream::kTest, i, static_cast<uint64_t>(num_experts)));
  const std::vector<float> x = RandomVector(tokens * hidden, 8);
  std::vector<float> x_perm(tokens * top_k * hidden);
  std::vector<int64_t> token_of_row(tokens * top_k);
  ExpertPermutation perm;
  for (auto _ : state) {
    Status s = BuildExpertPermutation(idx.data(), tokens, top_k, num_experts, &perm);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    for (int64_t r = 0; r < perm.num_rows(); ++r) token_of_row[r] = perm.pair_of_row[r] / top_k;
    GatherRows(x.data(), hidden * sizeof(float), token_of_row.data(), perm.num_rows(), x_perm.data());
    benchmark::DoNotOptimize(x_perm.data());
    benchmark::ClobberMemory();
  }
  // Each permuted row is read once and written once.
  state.SetBytesProcessed(state.iterations() * tokens * top_k * hidden * 2 * static_cast<int64_t>(sizeof(float)));
}
BENCHMARK(BM_Permute)
    ->ArgNames({"T", "K", "E", "H"})
    ->Args({512, 8, 128, 2048})
    ->Args({512, 4, 16, 256})
    ->UseRealTime();

// Args: tokens, top_k, hidden, bf16 rows (0/1).
void BM_CombineReduce(benchmark::State& state) {
  const int64_t tokens = state.range(0), hidden = state.range(2);
  const int top_k = static_cast<int>(state.range(1));
  const bool bf16 = state.range(3) != 0;
  const int64_t num_rows = tokens * top_k;
  const std::vector<float> rows = RandomVector(num_rows * hidden, 9);
  std::vector<uint16_t> rows_bf16(rows.size());
  ConvertF32ToBf16(rows.data(), rows_bf16.data(), static_cast<int64_t>(rows.size()));
  const std::vector<float> w = RandomVector(num_rows, 10);
  std::vector<int64_t> row_of_pair(num_rows);
  // A scattered permutation, like the expert-major order: consecutive slots read distant rows.
  for (int64_t i = 0; i < num_rows; ++i) row_of_pair[i] = (i * 7919) % num_rows;
  std::vector<float> out(tokens * hidden);
  for (auto _ : state) {
    if (bf16) {
      CombineReduceBf16(rows_bf16.data(), row_of_pair.data(), w.data(), tokens, top_k, hidden, out.data());
    } else {
      CombineReduceF32(rows.data(), row_of_pair.data(), w.data(), tokens, top_k, hidden, out.data());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const int64_t row_bytes = bf16 ? 2 : 4;
  state.SetBytesProcessed(state.iterations() * (num_rows * hidden * row_bytes + tokens * hidden * 4));
  state.SetLabel(bf16 ? "bf16 rows" : "f32 rows");
}
BENCHMARK(BM_CombineReduce)
    ->ArgNames({"T", "K", "H", "bf16"})
    ->Args({512, 8, 2048, 0})
    ->Args({512, 8, 2048, 1})
    ->UseRealTime();

}  // namespace
}  // namespace waveep::kernels
