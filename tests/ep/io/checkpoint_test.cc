// Copyright 2026 The waveep Authors.
//
// Checkpoints and token files under real mpirun (np 1, 2, 4). Rank 0 writes small multi-file checkpoints (DeepSeek
// and Mixtral naming, BF16 and FP8 with 128x128 block scales) from the synthetic weight generator; every rank loads
// its experts through OpenCheckpoint and runs the layer, which must match the synthetic-weight layer bit for bit
// (BF16) or the dense reference (FP8). Also: what each rank reads, the router, --input / --output files, and one
// test per bad-file case, failing on every rank with the file and tensor named.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>

#include "comm/comm.h"
#include "ep/io/io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/mpi_context.h"
#include "tests/common/mpi_test_main.h"

namespace waveep::ep {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using waveep::testing::MpiTestContext;

constexpr uint64_t kSeed = 9;

ModelConfig DeepSeekModel() {  // sigmoid, groups, bias, scaling, one shared expert; I = 96: partial FP8 blocks
  ModelConfig m;
  m.name = "ds-test";
  m.hidden_size = 256;
  m.moe_intermediate_size = 96;
  m.num_experts = 16;
  m.num_shared_experts = 1;
  m.top_k = 4;
  m.scoring = Scoring::kSigmoid;
  m.n_group = 4;
  m.topk_group = 2;
  m.norm_topk_prob = true;
  m.routed_scaling_factor = 2.5;
  return m;
}

ModelConfig MixtralModel() {
  ModelConfig m;
  m.name = "mixtral-test";
  m.hidden_size = 256;
  m.moe_intermediate_size = 160;
  m.num_experts = 8;
  m.top_k = 2;
  return m;
}

// Rank 0 creates a fresh directory; every rank gets its path.
std::string SharedDir(const ProcessContext& ctx, const std::string& name) {
  std::string d = absl::StrCat(::testing::TempDir(), "/waveep_ckpt_test_", name);
  int pid = getpid();
  MPI_Bcast(&pid, 1, MPI_INT, 0, WorldComm(ctx));
  d = absl::StrCat(d, "_", pid);
  if (ctx.world_rank == 0) {
    fs::remove_all(d);
    fs::create_directories(d);
  }
  MPI_Barrier(WorldComm(ctx));
  return d;
}

enum class Break { kNone, kDtype, kShape, kDropTensor, kDropIndexEntry, kDropScale };

struct Spec {
  CheckpointFamily family = CheckpointFamily::kDeepSeek;
  bool fp8 = false;
  int files = 3;
  int moe_layer = 1;  // layers below are dense (DeepSeek's first_k_dense_replace)
  bool bias = true;
  Break brk = Break::kNone;
};

// What a written checkpoint holds, for comparisons: every matrix as the reader must return it, and tensor sizes.
struct Written {
  std::map<std::string, std::vector<float>> values;  // dequantized (FP8) or exact (BF16) matrices, router, bias
  std::map<std::string, uint64_t> bytes;             // stored bytes per tensor (FP8 scales included)
  std::string victim;                                // the tensor a Break applies to
};

std::string ExpertName(const Spec& s, int layer, int e, int which) {
  static const char* ds[3] = {"gate_proj", "up_proj", "down_proj"};
  static const char* mx[3] = {"w1", "w3", "w2"};
  return s.family == CheckpointFamily::kDeepSeek
             ? absl::StrCat("model.layers.", layer, ".mlp.experts.", e, ".", ds[which], ".weight")
             : absl::StrCat("model.layers.", layer, ".block_sparse_moe.experts.", e, ".", mx[which], ".weight");
}

// 128x128-block FP8 as DeepSeek ships it: q = e4m3(w / s), s = amax / 448 per block, stored as weight_scale_inv.
void QuantizeBlocks128(const float* w, int64_t rows, int64_t cols, std::vector<uint8_t>* q, std::vector<float>* s,
                       std::vector<float>* deq) {
  const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
  q->assign(static_cast<size_t>(rows * cols), 0);
  s->assign(static_cast<size_t>(sr * sc), 1.0f);
  deq->assign(static_cast<size_t>(rows * cols), 0.0f);
  for (int64_t bi = 0; bi < sr; ++bi) {
    for (int64_t bj = 0; bj < sc; ++bj) {
      float amax = 0;
      for (int64_t i = bi * 128; i < std::min(rows, bi * 128 + 128); ++i)
        for (int64_t j = bj * 128; j < std::min(cols, bj * 128 + 128); ++j)
          amax = std::max(amax, std::fabs(w[i * cols + j]));
      const float scale = amax > 0 ? amax / 448.0f : 1.0f;
      (*s)[bi * sc + bj] = scale;
      for (int64_t i = bi * 128; i < std::min(rows, bi * 128 + 128); ++i) {
        for (int64_t j = bj * 128; j < std::min(cols, bj * 128 + 128); ++j) {
          const uint8_t code = kernels::FloatToFp8E4M3(w[i * cols + j] / scale);
          (*q)[i * cols + j] = code;
          (*deq)[i * cols + j] = kernels::Fp8E4M3ToFloat(code) * scale;
        }
      }
    }
  }
}

// Rank 0 writes a checkpoint of `m` with the synthetic weights (seed kSeed) to `dir`; returns what it wrote.
// Experts are spread over `files` files in contiguous runs; file 0 also holds dense layers, router and shared.
Written WriteCheckpoint(const std::string& dir, const ModelConfig& m, const Spec& spec) {
  Written out;
  auto weights = MakeSyntheticWeights(m, kSeed);
  const int64_t h = m.hidden_size, inter = m.moe_intermediate_size;
  std::deque<std::vector<uint8_t>> store;  // keeps tensor bytes alive until written
  std::vector<std::vector<SafetensorsWriteTensor>> groups(static_cast<size_t>(spec.files));
  const int last = m.num_experts - 1;
  out.victim = ExpertName(spec, spec.moe_layer, last, 1);
  auto add = [&](int file, const std::string& name, const float* w, int64_t rows, int64_t cols, bool quantize) {
    std::vector<int64_t> shape = {rows, cols};
    DType dt = DType::kBF16;
    if (name == out.victim && spec.brk == Break::kShape) shape = {cols, rows};
    if (name == out.victim && spec.brk == Break::kDropTensor) return;
    if (spec.fp8 && quantize) {
      std::vector<uint8_t> q;
      std::vector<float> s, deq;
      QuantizeBlocks128(w, rows, cols, &q, &s, &deq);
      out.values[name] = deq;
      store.push_back(std::move(q));
      groups[file].push_back({name, DType::kFP8E4M3, shape, store.back().data()});
      out.bytes[name] = static_cast<uint64_t>(rows * cols);
      if (!(name == out.victim && spec.brk == Break::kDropScale)) {
        store.emplace_back(reinterpret_cast<uint8_t*>(s.data()), reinterpret_cast<uint8_t*>(s.data() + s.size()));
        groups[file].push_back(
            {name + "_scale_inv", DType::kF32, {(rows + 127) / 128, (cols + 127) / 128}, store.back().data()});
        out.bytes[name + "_scale_inv"] = s.size() * 4;
      }
      return;
    }
    if (name == out.victim && spec.brk == Break::kDtype) {
      // Right shape, a type that is not a float: what a wrong dtype looks like to the reader.
      store.push_back(std::vector<uint8_t>(static_cast<size_t>(rows * cols * 4), 0));
      groups[file].push_back({name, DType::kI32, shape, store.back().data()});
      out.bytes[name] = static_cast<uint64_t>(rows * cols * 4);
      return;
    }
    std::vector<uint8_t> b(static_cast<size_t>(rows * cols * 2));
    kernels::ConvertF32ToBf16(w, reinterpret_cast<uint16_t*>(b.data()), rows * cols);
    out.values[name] = std::vector<float>(w, w + rows * cols);  // BF16-representable: stored exactly
    store.push_back(std::move(b));
    groups[file].push_back({name, dt, shape, store.back().data()});
    out.bytes[name] = static_cast<uint64_t>(rows * cols * 2);
  };
  const std::string pre = absl::StrCat("model.layers.", spec.moe_layer,
                                       spec.family == CheckpointFamily::kDeepSeek ? ".mlp." : ".block_sparse_moe.");
  std::vector<float> dense(static_cast<size_t>(8 * h), 0.5f);
  for (int l = 0; l < spec.moe_layer; ++l) {
    for (const char* p : {"gate_proj", "up_proj"})
      add(0, absl::StrCat("model.layers.", l, ".mlp.", p, ".weight"), dense.data(), 8, h, false);
  }
  std::vector<float> gate(static_cast<size_t>(m.num_experts * h)), bias(static_cast<size_t>(m.num_experts));
  for (size_t i = 0; i < gate.size(); ++i)
    gate[i] = kernels::Bf16ToFloat(kernels::FloatToBf16(UniformSym(kSeed, RngStream::kTest, i) / 16.0f));
  add(0, pre + "gate.weight", gate.data(), m.num_experts, h, false);
  if (spec.family == CheckpointFamily::kDeepSeek && spec.bias) {
    for (int e = 0; e < m.num_experts; ++e) bias[e] = 0.05f * UniformSym(kSeed, RngStream::kTest, (1u << 30) + e);
    store.emplace_back(reinterpret_cast<uint8_t*>(bias.data()), reinterpret_cast<uint8_t*>(bias.data() + bias.size()));
    groups[0].push_back({pre + "gate.e_score_correction_bias", DType::kF32, {m.num_experts}, store.back().data()});
    out.values[pre + "gate.e_score_correction_bias"] = bias;
  }
  if (m.num_shared_experts > 0) {
    const int64_t si = inter * m.num_shared_experts;
    std::vector<float> s13(static_cast<size_t>(2 * si * h)), s2(static_cast<size_t>(h * si));
    WAVEEP_CHECK(weights->LoadShared(s13.data(), s2.data()).ok());
    add(0, pre + "shared_experts.gate_proj.weight", s13.data(), si, h, true);
    add(0, pre + "shared_experts.up_proj.weight", s13.data() + si * h, si, h, true);
    add(0, pre + "shared_experts.down_proj.weight", s2.data(), h, si, true);
  }
  const int per = (m.num_experts + spec.files - 1) / spec.files;
  std::vector<float> w13(static_cast<size_t>(2 * inter * h)), w2(static_cast<size_t>(h * inter));
  for (int e = 0; e < m.num_experts; ++e) {
    WAVEEP_CHECK(weights->LoadExpert(e, w13.data(), w2.data()).ok());
    add(e / per, ExpertName(spec, spec.moe_layer, e, 0), w13.data(), inter, h, true);
    add(e / per, ExpertName(spec, spec.moe_layer, e, 1), w13.data() + inter * h, inter, h, true);
    add(e / per, ExpertName(spec, spec.moe_layer, e, 2), w2.data(), h, inter, true);
  }
  nlohmann::json wm = nlohmann::json::object();
  for (int f = 0; f < spec.files; ++f) {
    const std::string file = absl::StrCat("model-", f + 1, "-of-", spec.files, ".safetensors");
    WAVEEP_CHECK(WriteSafetensors(absl::StrCat(dir, "/", file), groups[f], {{"format", "pt"}}).ok());
    for (const auto& t : groups[f]) {
      if (!(t.name == out.victim && spec.brk == Break::kDropIndexEntry)) wm[t.name] = file;
    }
  }
  nlohmann::json index;
  index["metadata"] = {{"total_size", 0}};
  index["weight_map"] = wm;
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(2);
  nlohmann::json cfg;
  cfg["hidden_size"] = h;
  cfg["num_experts_per_tok"] = m.top_k;
  if (spec.family == CheckpointFamily::kDeepSeek) {
    cfg["model_type"] = "deepseek_v3";
    cfg["moe_intermediate_size"] = inter;
    cfg["intermediate_size"] = 4 * inter;  // the dense MLP's; must not be used for experts
    cfg["n_routed_experts"] = m.num_experts;
    cfg["n_shared_experts"] = m.num_shared_experts;
    cfg["scoring_func"] = std::string(ScoringName(m.scoring));
    cfg["n_group"] = m.n_group;
    cfg["topk_group"] = m.topk_group;
    cfg["norm_topk_prob"] = m.norm_topk_prob;
    cfg["routed_scaling_factor"] = m.routed_scaling_factor;
    cfg["first_k_dense_replace"] = spec.moe_layer;
    if (spec.fp8) cfg["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
  } else {
    cfg["model_type"] = "mixtral";
    cfg["intermediate_size"] = inter;
    cfg["num_local_experts"] = m.num_experts;
  }
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  out.values[pre + "gate.weight"] = gate;
  return out;
}

// Rank 0 writes; every rank then loads the config and opens the checkpoint.
struct Opened {
  std::string dir;
  Written written;
  ModelConfig model;
  std::unique_ptr<CheckpointWeights> weights;
};
Opened WriteAndOpen(const ProcessContext& ctx, const std::string& name, const ModelConfig& m, const Spec& spec,
                    int layer = -1) {
  Opened o;
  o.dir = SharedDir(ctx, name);
  if (ctx.world_rank == 0) o.written = WriteCheckpoint(o.dir, m, spec);
  MPI_Barrier(WorldComm(ctx));
  auto cfg = LoadCheckpointConfig(o.dir);
  WAVEEP_CHECK(cfg.ok()) << cfg.status();
  o.model = *cfg;
  auto w = OpenCheckpoint(o.dir, o.model, layer);
  WAVEEP_CHECK(w.ok()) << w.status();
  o.weights = *std::move(w);
  return o;
}

LayerConfig Layer(const ModelConfig& m, DType dt = DType::kBF16, int waves = 2) {
  LayerConfig cfg;
  cfg.model = m;
  cfg.dispatch_dtype = dt;
  cfg.num_waves = waves;
  cfg.timeout = absl::Seconds(60);
  return cfg;
}

StatusOr<std::vector<float>> Forward(const ProcessContext& ctx, const LayerConfig& cfg, const WeightSource& w,
                                     const TokenBatch& batch) {
  WAVEEP_ASSIGN_OR_RETURN(auto comm, comm::CreateCommunicator("mpi", ctx));
  WAVEEP_ASSIGN_OR_RETURN(auto layer, MoeLayer::Create(ctx, comm.get(), cfg, w));
  std::vector<float> out(static_cast<size_t>(batch.num_tokens * cfg.model.hidden_size), std::nanf(""));
  WAVEEP_RETURN_IF_ERROR(layer->Forward(batch, out.data(), nullptr));
  return out;
}

// ---- config ----------------------------------------------------------------------------------------------------

TEST(CheckpointConfig, ReadsHuggingFaceNames) {
  const ProcessContext& ctx = MpiTestContext();
  const std::string dir = SharedDir(ctx, "config");
  if (ctx.world_rank == 0) {
    fs::create_directories(dir + "/DeepSeek-V3");
    std::ofstream(dir + "/DeepSeek-V3/config.json") << R"({"architectures": ["DeepseekV3ForCausalLM"],
      "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256,
      "n_shared_experts": 1, "num_experts_per_tok": 8, "scoring_func": "sigmoid", "n_group": 8, "topk_group": 4,
      "norm_topk_prob": true, "routed_scaling_factor": 2.5, "first_k_dense_replace": 3, "topk_method": "noaux_tc",
      "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}, "rope_scaling": {"factor": 40}})";
    fs::create_directories(dir + "/Mixtral-8x7B");
    std::ofstream(dir + "/Mixtral-8x7B/config.json") << R"({"model_type": "mixtral", "hidden_size": 4096,
      "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2})";
    fs::create_directories(dir + "/Qwen3-30B-A3B");
    std::ofstream(dir + "/Qwen3-30B-A3B/config.json") << R"({"model_type": "qwen3_moe", "hidden_size": 2048,
      "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
      "norm_topk_prob": true})";
    fs::create_directories(dir + "/empty");
  }
  MPI_Barrier(WorldComm(ctx));
  auto ds = LoadCheckpointConfig(dir + "/DeepSeek-V3/");
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->name, "DeepSeek-V3");
  EXPECT_EQ(ds->hidden_size, 7168);
  EXPECT_EQ(ds->moe_intermediate_size, 2048);
  EXPECT_EQ(ds->num_experts, 256);
  EXPECT_EQ(ds->num_shared_experts, 1);
  EXPECT_EQ(ds->top_k, 8);
  EXPECT_EQ(ds->scoring, Scoring::kSigmoid);
  EXPECT_EQ(ds->n_group, 8);
  EXPECT_EQ(ds->topk_group, 4);
  EXPECT_DOUBLE_EQ(ds->routed_scaling_factor, 2.5);
  auto mx = LoadCheckpointConfig(dir + "/Mixtral-8x7B");
  ASSERT_TRUE(mx.ok()) << mx.status();
  EXPECT_EQ(mx->moe_intermediate_size, 14336);
  EXPECT_EQ(mx->num_experts, 8);
  EXPECT_EQ(mx->scoring, Scoring::kSoftmax);
  EXPECT_TRUE(mx->norm_topk_prob);
  auto qw = LoadCheckpointConfig(dir + "/Qwen3-30B-A3B");
  ASSERT_TRUE(qw.ok()) << qw.status();
  EXPECT_EQ(qw->moe_intermediate_size, 768);
  EXPECT_EQ(qw->num_experts, 128);
  EXPECT_EQ(LoadCheckpointConfig(dir + "/empty").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadCheckpointConfig(dir + "/nope").status().code(), absl::StatusCode::kNotFound);
}

// ---- weights ---------------------------------------------------------------------------------------------------

class Bf16Checkpoint : public ::testing::TestWithParam<CheckpointFamily> {};

TEST_P(Bf16Checkpoint, LoadsExactlyAndRunsBitIdenticalToSyntheticWeights) {
  const ProcessContext& ctx = MpiTestContext();
  const bool ds = GetParam() == CheckpointFamily::kDeepSeek;
  const ModelConfig m = ds ? DeepSeekModel() : MixtralModel();
  Spec spec;
  spec.family = GetParam();
  spec.moe_layer = ds ? 1 : 0;
  Opened o = WriteAndOpen(ctx, ds ? "bf16_ds" : "bf16_mx", m, spec);
  EXPECT_EQ(o.weights->family(), GetParam());
  EXPECT_EQ(o.weights->layer(), spec.moe_layer);  // layer -1: the first layer with experts
  EXPECT_EQ(o.model.hidden_size, m.hidden_size);
  EXPECT_EQ(o.model.moe_intermediate_size, m.moe_intermediate_size);
  auto synth = MakeSyntheticWeights(m, kSeed);
  const int64_t h = m.hidden_size, inter = m.moe_intermediate_size;
  std::vector<float> a13(2 * inter * h), a2(h * inter), b13(a13.size()), b2(a2.size());
  for (int e = 0; e < m.num_experts; ++e) {
    ASSERT_TRUE(o.weights->LoadExpert(e, a13.data(), a2.data()).ok());
    ASSERT_TRUE(synth->LoadExpert(e, b13.data(), b2.data()).ok());
    ASSERT_EQ(0, std::memcmp(a13.data(), b13.data(), a13.size() * 4)) << "expert " << e;
    ASSERT_EQ(0, std::memcmp(a2.data(), b2.data(), a2.size() * 4)) << "expert " << e;
  }
  // The layer on checkpoint weights = the layer on the generator's weights, bit for bit; and verifies.
  const int64_t t = 24;
  auto batch = MakeSyntheticBatch(m, RoutingMode::kGate, 3, ctx.world_rank * t, t);
  ASSERT_TRUE(batch.ok());
  auto with_ckpt = Forward(ctx, Layer(o.model), *o.weights, *batch);
  ASSERT_TRUE(with_ckpt.ok()) << with_ckpt.status();
  auto with_synth = Forward(ctx, Layer(o.model), *synth, *batch);
  ASSERT_TRUE(with_synth.ok()) << with_synth.status();
  EXPECT_EQ(0, std::memcmp(with_ckpt->data(), with_synth->data(), with_ckpt->size() * 4));
  auto v = VerifyAgainstReference(Layer(o.model), *o.weights, *batch, with_ckpt->data());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(v->passed) << v->max_normalized;
}

INSTANTIATE_TEST_SUITE_P(Families, Bf16Checkpoint,
                         ::testing::Values(CheckpointFamily::kDeepSeek, CheckpointFamily::kMixtral),
                         [](const ::testing::TestParamInfo<CheckpointFamily>& p) {
                           return std::string(CheckpointFamilyName(p.param));
                         });

TEST(Fp8Checkpoint, DequantizesBlockScalesAndVerifies) {
  const ProcessContext& ctx = MpiTestContext();
  const ModelConfig m = DeepSeekModel();
  Spec spec;
  spec.fp8 = true;
  spec.files = 4;
  Opened o = WriteAndOpen(ctx, "fp8", m, spec);
  auto dt = o.weights->ExpertDTypeName(0);
  ASSERT_TRUE(dt.ok());
  EXPECT_EQ(*dt, "F8_E4M3");
  // Every expert and the shared expert equal the independently dequantized values (written on rank 0).
  const int64_t h = m.hidden_size, inter = m.moe_intermediate_size;
  std::vector<float> w13(2 * inter * h), w2(h * inter);
  for (int e = 0; e < m.num_experts; ++e) {
    ASSERT_TRUE(o.weights->LoadExpert(e, w13.data(), w2.data()).ok());
    if (ctx.world_rank != 0) continue;
    const auto& g = o.written.values.at(o.weights->ExpertTensorName(e, 0));
    const auto& d = o.written.values.at(o.weights->ExpertTensorName(e, 2));
    ASSERT_EQ(0, std::memcmp(w13.data(), g.data(), g.size() * 4)) << "expert " << e;
    ASSERT_EQ(0, std::memcmp(w2.data(), d.data(), d.size() * 4)) << "expert " << e;
  }
  // FP8 is close to, not equal to, the original weights (sanity of the scales: 3 mantissa bits).
  auto synth = MakeSyntheticWeights(m, kSeed);
  std::vector<float> s13(w13.size()), s2(w2.size());
  ASSERT_TRUE(synth->LoadExpert(3, s13.data(), s2.data()).ok());
  ASSERT_TRUE(o.weights->LoadExpert(3, w13.data(), w2.data()).ok());
  double num = 0, den = 0;
  for (size_t i = 0; i < s13.size(); ++i) {
    num += (w13[i] - s13[i]) * (w13[i] - s13[i]);
    den += s13[i] * s13[i];
  }
  EXPECT_GT(std::sqrt(num / den), 1e-3);
  EXPECT_LT(std::sqrt(num / den), 0.07);
  for (DType dispatch : {DType::kBF16, DType::kFP8E4M3}) {
    const int64_t t = 20 + ctx.world_rank;  // uneven token counts
    int64_t first = 0;
    for (int r = 0; r < ctx.world_rank; ++r) first += 20 + r;
    auto batch = MakeSyntheticBatch(o.model, RoutingMode::kGate, 4, first, t);
    ASSERT_TRUE(batch.ok());
    auto out = Forward(ctx, Layer(o.model, dispatch), *o.weights, *batch);
    ASSERT_TRUE(out.ok()) << out.status();
    auto v = VerifyAgainstReference(Layer(o.model, dispatch), *o.weights, *batch, out->data());
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(v->passed) << DTypeName(dispatch) << ": " << v->max_normalized;
  }
}

// What a rank reads when it builds its layer: exactly its own experts' tensors (+ the shared expert), nothing of
// the other ranks' experts; files holding only other ranks' experts are not even opened.
void CheckOwnBytesOnly(const ProcessContext& ctx, const Opened& o, bool fp8) {
  auto comm = comm::CreateCommunicator("mpi", ctx);
  ASSERT_TRUE(comm.ok());
  auto layer = MoeLayer::Create(ctx, comm->get(), Layer(o.model, DType::kBF16, 1), *o.weights);
  ASSERT_TRUE(layer.ok()) << layer.status();
  const int per_rank = o.model.num_experts / ctx.world_size;
  std::set<std::string> mine;
  const int64_t h = o.model.hidden_size, inter = o.model.moe_intermediate_size;
  uint64_t expected = 0;
  auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
    mine.insert(name);
    expected += static_cast<uint64_t>(rows * cols) * (fp8 ? 1 : 2);
    if (fp8) {
      mine.insert(name + "_scale_inv");
      expected += static_cast<uint64_t>((rows + 127) / 128 * ((cols + 127) / 128)) * 4;
    }
  };
  for (int e = ctx.world_rank * per_rank; e < (ctx.world_rank + 1) * per_rank; ++e) {
    add(o.weights->ExpertTensorName(e, 0), inter, h);
    add(o.weights->ExpertTensorName(e, 1), inter, h);
    add(o.weights->ExpertTensorName(e, 2), h, inter);
  }
  for (const char* p : {"gate_proj", "up_proj", "down_proj"}) {
    const std::string n = absl::StrCat("model.layers.1.mlp.shared_experts.", p, ".weight");
    add(n, p[0] == 'd' ? h : inter, p[0] == 'd' ? inter : h);
  }
  std::set<std::string> seen;
  for (const auto& u : o.weights->files().Usage()) {
    for (const std::string& t : u.tensors_read) {
      EXPECT_TRUE(mine.count(t)) << "rank " << ctx.world_rank << " read " << t << " from " << u.path;
      seen.insert(t);
    }
    bool has_mine = false;
    for (const std::string& t : mine)
      has_mine = has_mine || o.weights->files().FileOf(t) == fs::path(u.path).filename().string();
    if (!has_mine) {
      EXPECT_FALSE(u.opened) << "rank " << ctx.world_rank << " opened " << u.path;
    }
  }
  EXPECT_EQ(seen, mine);
  EXPECT_EQ(o.weights->files().bytes_read(), expected) << "rank " << ctx.world_rank;
}

TEST(CheckpointReads, RankReadsOnlyItsOwnExpertsBf16) {
  const ProcessContext& ctx = MpiTestContext();
  Spec spec;
  spec.files = 4;  // with np 4, each rank's experts sit in one file; file 0 also has the shared expert
  Opened o = WriteAndOpen(ctx, "reads_bf16", DeepSeekModel(), spec);
  CheckOwnBytesOnly(ctx, o, false);
}

TEST(CheckpointReads, RankReadsOnlyItsOwnExpertsFp8) {
  const ProcessContext& ctx = MpiTestContext();
  Spec spec;
  spec.fp8 = true;
  spec.files = 8;
  Opened o = WriteAndOpen(ctx, "reads_fp8", DeepSeekModel(), spec);
  CheckOwnBytesOnly(ctx, o, true);
}

// ---- router and token files ------------------------------------------------------------------------------------

TEST(TokenFiles, RouterInputSplitAndGatheredOutput) {
  const ProcessContext& ctx = MpiTestContext();
  Opened o = WriteAndOpen(ctx, "tokens", DeepSeekModel(), Spec{});
  const ModelConfig& m = o.model;
  const int64_t h = m.hidden_size, t_total = 37;  // not a multiple of 2 or 4
  const std::string in_path = o.dir + "/input.safetensors", out_path = o.dir + "/output.safetensors";
  std::vector<float> x(static_cast<size_t>(t_total * h));
  for (size_t i = 0; i < x.size(); ++i) x[i] = UniformSym(5, RngStream::kTest, i);  // not BF16-representable
  if (ctx.world_rank == 0) {
    EXPECT_TRUE(WriteSafetensors(in_path, {{"hidden_states", DType::kF32, {t_total, h}, x.data()}}).ok());
  }
  MPI_Barrier(WorldComm(ctx));

  auto in = ReadTokenFile(in_path, m, ctx.world_rank, ctx.world_size);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->total_tokens, t_total);
  EXPECT_FALSE(in->has_routing);
  const auto [begin, end] = TokenRangeOfRank(t_total, ctx.world_rank, ctx.world_size);
  EXPECT_EQ(in->batch.first_token, begin);
  EXPECT_EQ(in->batch.num_tokens, end - begin);
  for (int64_t i = 0; i < (end - begin) * h; ++i) {  // rounded to BF16 on read
    ASSERT_EQ(in->batch.x[i], kernels::Bf16ToFloat(kernels::FloatToBf16(x[begin * h + i]))) << i;
  }
  // Router: same selection as TopkGating on independently computed logits.
  std::vector<float> gate, bias;
  ASSERT_TRUE(o.weights->LoadRouter(&gate, &bias).ok());
  ASSERT_EQ(bias.size(), static_cast<size_t>(m.num_experts));
  if (ctx.world_rank == 0) {
    EXPECT_EQ(gate, o.written.values.at("model.layers.1.mlp.gate.weight"));
    EXPECT_EQ(bias, o.written.values.at("model.layers.1.mlp.gate.e_score_correction_bias"));
  }
  TokenBatch batch = in->batch;
  ASSERT_TRUE(RouteWithGate(m, gate.data(), bias.data(), &batch).ok());
  std::vector<float> logits(static_cast<size_t>(batch.num_tokens * m.num_experts));
  for (int64_t t = 0; t < batch.num_tokens; ++t)
    for (int e = 0; e < m.num_experts; ++e) {
      double s = 0;
      for (int64_t c = 0; c < h; ++c) s += static_cast<double>(batch.x[t * h + c]) * gate[e * h + c];
      logits[t * m.num_experts + e] = static_cast<float>(s);
    }
  std::vector<int32_t> idx(batch.topk_idx.size());
  std::vector<float> w(batch.topk_weights.size());
  ASSERT_TRUE(kernels::TopkGating(logits.data(), bias.data(), batch.num_tokens, kernels::GateParamsFrom(m), idx.data(),
                                  w.data())
                  .ok());
  EXPECT_EQ(batch.topk_idx, idx);
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(batch.topk_weights[i], w[i], 1e-6);

  // Layer + gathered output file, in global token order.
  auto out = Forward(ctx, Layer(m), *o.weights, batch);
  ASSERT_TRUE(out.ok()) << out.status();
  auto v = VerifyAgainstReference(Layer(m), *o.weights, batch, out->data());
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->passed) << v->max_normalized;
  ASSERT_TRUE(WriteTokenOutputs(ctx, out_path, batch, out->data(), {{"format", "test"}}).ok());
  // Each rank checks its own rows in the file rank 0 wrote.
  auto of = SafetensorsFile::Open(out_path);
  ASSERT_TRUE(of.ok()) << of.status();
  EXPECT_EQ((*of)->metadata().at("format"), "test");
  std::vector<float> rows(static_cast<size_t>((end - begin) * h));
  ASSERT_TRUE((*of)->ReadRowsF32("output", {t_total, h}, begin, end, rows.data()).ok());
  EXPECT_EQ(0, std::memcmp(rows.data(), out->data(), rows.size() * 4));
  std::vector<int32_t> ridx(batch.topk_idx.size());
  ASSERT_TRUE((*of)->ReadRowsI32("topk_idx", {t_total, m.top_k}, begin, end, ridx.data()).ok());
  EXPECT_EQ(ridx, batch.topk_idx);
  std::vector<float> rw(batch.topk_weights.size());
  ASSERT_TRUE((*of)->ReadRowsF32("topk_weights", {t_total, m.top_k}, begin, end, rw.data()).ok());
  EXPECT_EQ(rw, batch.topk_weights);

  // The same tokens with routing in the file (I64 ids): read back as given.
  const std::string routed = o.dir + "/routed.safetensors";
  std::vector<int64_t> ids(static_cast<size_t>(t_total * m.top_k));
  std::vector<float> wts(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int64_t>((i * 7 + i / m.top_k) % m.num_experts);
    wts[i] = 0.25f;
  }
  if (ctx.world_rank == 0) {
    EXPECT_TRUE(WriteSafetensors(routed, {{"hidden_states", DType::kF32, {t_total, h}, x.data()},
                                          {"topk_idx", DType::kI64, {t_total, m.top_k}, ids.data()},
                                          {"topk_weights", DType::kF32, {t_total, m.top_k}, wts.data()}})
                    .ok());
  }
  MPI_Barrier(WorldComm(ctx));
  auto r = ReadTokenFile(routed, m, ctx.world_rank, ctx.world_size);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->has_routing);
  for (int64_t i = 0; i < (end - begin) * m.top_k; ++i) EXPECT_EQ(r->batch.topk_idx[i], ids[begin * m.top_k + i]);
}

TEST(TokenFiles, BadInputsNameFileAndTensor) {
  const ProcessContext& ctx = MpiTestContext();
  const std::string dir = SharedDir(ctx, "bad_tokens");
  const ModelConfig m = DeepSeekModel();
  const int64_t h = m.hidden_size, t = 6, k = m.top_k;
  std::vector<float> x(t * (h + 8), 0.5f), w(t * k, 0.25f);
  std::vector<int32_t> idx(t * k, 1), far(t * k, 99);
  std::vector<int32_t> xi(t * h, 1);
  std::vector<float> huge(t * h, 3.4e38f);  // finite in F32, inf once rounded to BF16
  struct Case {
    std::string name;
    std::vector<SafetensorsWriteTensor> tensors;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"no_hidden", {{"x", DType::kF32, {t, h}, x.data()}}, {"no tensor 'hidden_states'"}},
      {"wrong_hidden",
       {{"hidden_states", DType::kF32, {t, h + 8}, x.data()}},
       {"'hidden_states'", "[6, 264]", "H=256"}},
      {"hidden_as_int", {{"hidden_states", DType::kI32, {t, h}, xi.data()}}, {"'hidden_states'", "I32"}},
      {"hidden_beyond_bf16", {{"hidden_states", DType::kF32, {t, h}, huge.data()}}, {"'hidden_states'", "non-finite"}},
      {"idx_without_weights",
       {{"hidden_states", DType::kF32, {t, h}, x.data()}, {"topk_idx", DType::kI32, {t, k}, idx.data()}},
       {"topk_idx", "without 'topk_weights'"}},
      {"idx_shape",
       {{"hidden_states", DType::kF32, {t, h}, x.data()},
        {"topk_idx", DType::kI32, {t, k - 1}, idx.data()},
        {"topk_weights", DType::kF32, {t, k - 1}, w.data()}},
       {"'topk_idx'", "[6, 3]", "K=4"}},
      {"idx_out_of_range",
       {{"hidden_states", DType::kF32, {t, h}, x.data()},
        {"topk_idx", DType::kI32, {t, k}, far.data()},
        {"topk_weights", DType::kF32, {t, k}, w.data()}},
       {"'topk_idx'", "expert 99", "[0, 16)"}},
      {"idx_as_float",
       {{"hidden_states", DType::kF32, {t, h}, x.data()},
        {"topk_idx", DType::kF32, {t, k}, w.data()},
        {"topk_weights", DType::kF32, {t, k}, w.data()}},
       {"'topk_idx'", "F32", "I32 or I64"}},
  };
  for (const Case& c : cases) {
    const std::string path = dir + "/" + c.name + ".safetensors";
    if (ctx.world_rank == 0) {
      EXPECT_TRUE(WriteSafetensors(path, c.tensors).ok()) << c.name;
    }
    MPI_Barrier(WorldComm(ctx));
    auto in = ReadTokenFile(path, m, ctx.world_rank, ctx.world_size);
    ASSERT_FALSE(in.ok()) << c.name;
    EXPECT_THAT(std::string(in.status().message()), HasSubstr(path)) << c.name;
    for (const std::string& p : c.parts) EXPECT_THAT(std::string(in.status().message()), HasSubstr(p)) << c.name;
  }
}

// ---- bad checkpoints -------------------------------------------------------------------------------------------

// The last expert's up projection is broken; it lives in the last file, which only the last rank reads. Building
// the layer must fail on every rank (collectively, no hang) with the file and tensor in the message.
struct BadCase {
  std::string name;
  Break brk;
  bool fp8;
  std::string file_op;  // "", "header_json", "truncate", "header_len"
  std::vector<std::string> parts;
};

class BadCheckpoint : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadCheckpoint, FailsOnEveryRankNamingFileAndTensor) {
  const ProcessContext& ctx = MpiTestContext();
  const BadCase& c = GetParam();
  const ModelConfig m = DeepSeekModel();
  Spec spec;
  spec.fp8 = c.fp8;
  spec.files = 4;
  spec.brk = c.brk;
  const std::string dir = SharedDir(ctx, "bad_" + c.name);
  const std::string last_file = dir + "/model-4-of-4.safetensors";
  if (ctx.world_rank == 0) {
    WriteCheckpoint(dir, m, spec);
    if (c.file_op == "header_json") {
      std::fstream f(last_file, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(9);
      f.write("{{{ not json", 12);
    } else if (c.file_op == "truncate") {
      fs::resize_file(last_file, fs::file_size(last_file) - 100);
    } else if (c.file_op == "header_len") {
      std::fstream f(last_file, std::ios::in | std::ios::out | std::ios::binary);
      const uint64_t n = fs::file_size(last_file) * 3;
      f.write(reinterpret_cast<const char*>(&n), 8);
    }
  }
  MPI_Barrier(WorldComm(ctx));
  auto cfg = LoadCheckpointConfig(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  Status st = absl::OkStatus();
  auto w = OpenCheckpoint(dir, *cfg, -1);
  st = AgreeOnStatus(ctx, w.status());
  if (st.ok()) {
    auto comm = comm::CreateCommunicator("mpi", ctx);
    ASSERT_TRUE(comm.ok());
    st = MoeLayer::Create(ctx, comm->get(), Layer(*cfg), **w).status();
  }
  ASSERT_FALSE(st.ok()) << c.name;
  const std::string msg(st.message());
  for (const std::string& p : c.parts) EXPECT_THAT(msg, HasSubstr(p)) << c.name;
  // The same message everywhere (other ranks see the failing rank's message, prefixed with "rank R: ").
  const int owner = ctx.world_size - 1;
  const bool index_level = c.brk == Break::kDropTensor || c.brk == Break::kDropIndexEntry;  // every rank sees it
  if (ctx.world_rank != owner && !index_level) {
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("rank ", owner, ": ")));
  }
}

const std::string kVictim = "model.layers.1.mlp.experts.15.up_proj.weight";
INSTANTIATE_TEST_SUITE_P(
    Cases, BadCheckpoint,
    ::testing::Values(
        BadCase{
            "corrupt_header_json", Break::kNone, false, "header_json", {"model-4-of-4.safetensors", "malformed JSON"}},
        BadCase{"truncated_data",
                Break::kNone,
                false,
                "truncate",
                {"model-4-of-4.safetensors", "experts.15.down_proj.weight", "truncated"}},
        BadCase{"header_length_beyond_file",
                Break::kNone,
                false,
                "header_len",
                {"model-4-of-4.safetensors", "exceeds the file size"}},
        BadCase{"dtype_mismatch", Break::kDtype, false, "", {"model-4-of-4.safetensors", kVictim, "I32"}},
        BadCase{"shape_mismatch",
                Break::kShape,
                false,
                "",
                {"model-4-of-4.safetensors", kVictim, "shape [256, 96]", "expected [96, 256]"}},
        BadCase{"missing_tensor", Break::kDropTensor, false, "", {kVictim, "model.safetensors.index.json"}},
        BadCase{"missing_index_entry", Break::kDropIndexEntry, false, "", {kVictim, "not in the checkpoint"}},
        BadCase{"missing_fp8_scale", Break::kDropScale, true, "", {kVictim + "_scale_inv", "F8_E4M3"}}),
    [](const ::testing::TestParamInfo<BadCase>& p) { return p.param.name; });

TEST(CheckpointLayers, LayerSelectionAndConfigMismatches) {
  const ProcessContext& ctx = MpiTestContext();
  Opened o = WriteAndOpen(ctx, "layers", DeepSeekModel(), Spec{});
  EXPECT_EQ(o.weights->layer(), 1);
  // Layer 0 is dense: the error lists the MoE layers and the first_k_dense_replace hint.
  auto dense = OpenCheckpoint(o.dir, o.model, 0);
  ASSERT_FALSE(dense.ok());
  EXPECT_THAT(std::string(dense.status().message()),
              AllOf(HasSubstr("--layer=0"), HasSubstr("layers with experts: 1"), HasSubstr("first_k_dense_replace")));
  // More experts in the checkpoint than the config says.
  ModelConfig fewer = o.model;
  fewer.num_experts = 8;
  fewer.n_group = 4;
  auto extra = OpenCheckpoint(o.dir, fewer, 1);
  ASSERT_FALSE(extra.ok());
  EXPECT_THAT(std::string(extra.status().message()),
              AllOf(HasSubstr("experts.8.gate_proj.weight"), HasSubstr("n_routed_experts=8")));
  // Fewer: the first missing expert is named.
  ModelConfig more = o.model;
  more.num_experts = 32;
  more.topk_group = 2;
  auto missing = OpenCheckpoint(o.dir, more, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("experts.16.gate_proj.weight"));
  // Shared experts required by the config but absent (Mixtral naming has none).
  Spec mx;
  mx.family = CheckpointFamily::kMixtral;
  mx.moe_layer = 0;
  Opened m = WriteAndOpen(ctx, "layers_mx", MixtralModel(), mx);
  ModelConfig with_shared = m.model;
  with_shared.num_shared_experts = 1;
  auto s = OpenCheckpoint(m.dir, with_shared, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("no shared experts"));
  EXPECT_TRUE(m.weights->has_router());
  std::vector<float> gate, bias;
  ASSERT_TRUE(m.weights->LoadRouter(&gate, &bias).ok());
  EXPECT_TRUE(bias.empty());  // Mixtral: no correction bias
}

}  // namespace
}  // namespace waveep::ep
