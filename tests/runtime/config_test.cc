// Copyright 2026 The waveep Authors.
#include <cstdlib>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/runtime.h"

namespace waveep {
namespace {

using ::testing::HasSubstr;

TEST(ModelConfig, AllPresetsLoadWithDesignShapes) {
  struct Want {
    const char* name;
    int64_t h, i;
    int e, shared, k;
  };
  const Want wants[] = {{"deepseek-v3", 7168, 2048, 256, 1, 8},     {"deepseek-v4-flash", 4096, 2048, 256, 1, 6},
                        {"deepseek-v4-pro", 7168, 3072, 384, 1, 6}, {"qwen3-235b-a22b", 4096, 1536, 128, 0, 8},
                        {"qwen3-30b-a3b", 2048, 768, 128, 0, 8},    {"mixtral-8x7b", 4096, 14336, 8, 0, 2}};
  for (const Want& w : wants) {
    auto m = LoadModelConfig(w.name);
    ASSERT_TRUE(m.ok()) << w.name << ": " << m.status();
    EXPECT_EQ(m->name, w.name);
    EXPECT_EQ(m->hidden_size, w.h) << w.name;
    EXPECT_EQ(m->moe_intermediate_size, w.i) << w.name;
    EXPECT_EQ(m->num_experts, w.e) << w.name;
    EXPECT_EQ(m->num_shared_experts, w.shared) << w.name;
    EXPECT_EQ(m->top_k, w.k) << w.name;
  }
  auto tiny = LoadModelConfig("tiny");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->hidden_size % 128, 0);
  EXPECT_THAT(ListModelPresets(), ::testing::IsSupersetOf({"tiny", "deepseek-v3", "deepseek-v4-pro", "mixtral-8x7b"}));
}

TEST(ModelConfig, UnknownPresetListsKnownOnes) {
  auto m = LoadModelConfig("gpt-17");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("gpt-17"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("tiny"));
}

TEST(ModelConfig, MalformedJsonNamesTheFile) {
  auto m = ParseModelConfig("{\"hidden_size\": 256,,}", "bad.json");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("bad.json"));
}

TEST(ModelConfig, MissingFieldIsNamed) {
  auto m = ParseModelConfig(R"({"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 8})", "x.json");
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("num_experts_per_tok"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("missing"));
}

TEST(ModelConfig, WrongTypeIsNamed) {
  auto m = ParseModelConfig(
      R"({"hidden_size": "big", "moe_intermediate_size": 128, "n_routed_experts": 8, "num_experts_per_tok": 2})",
      "x.json");
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("hidden_size"));
}

TEST(ModelConfig, IntegersAreNeverWrappedOrNarrowed) {
  for (const char* big : {"18446744073709551615", "4294967304"}) {
    auto m = ParseModelConfig(absl::StrCat(R"({"hidden_size": 256, "moe_intermediate_size": 128, )",
                                           R"("n_routed_experts": )", big, R"(, "num_experts_per_tok": 2})"),
                              "x.json");
    ASSERT_FALSE(m.ok()) << big;
    EXPECT_THAT(std::string(m.status().message()),
                HasSubstr(absl::StrCat("'n_routed_experts' is out of range: ", big)));
  }
  EXPECT_EQ(JsonInteger(nlohmann::json::parse("-7"), -10, 10).value(), -7);
  EXPECT_FALSE(JsonInteger(nlohmann::json::parse("11"), -10, 10).ok());
  EXPECT_THAT(std::string(JsonInteger(nlohmann::json::parse("\"7\""), 0, 10).status().message()),
              HasSubstr("must be an integer, got \"7\""));
}

TEST(ModelConfig, ValidationNamesTheField) {
  const char* base = R"({"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 8, )";
  struct Case {
    std::string tail, field;
  };
  const Case cases[] = {
      {R"("num_experts_per_tok": 9})", "num_experts_per_tok"},
      {R"("num_experts_per_tok": 0})", "num_experts_per_tok"},
      {R"("num_experts_per_tok": 2, "n_group": 3})", "n_group"},
      {R"("num_experts_per_tok": 2, "n_group": 4, "topk_group": 5})", "topk_group"},
      {R"("num_experts_per_tok": 4, "n_group": 4, "topk_group": 1})", "topk_group"},
      {R"("num_experts_per_tok": 2, "scoring_func": "relu"})", "scoring_func"},
      {R"("num_experts_per_tok": 2, "routed_scaling_factor": -1})", "routed_scaling_factor"},
  };
  for (const Case& c : cases) {
    auto m = ParseModelConfig(std::string(base) + c.tail, "case.json");
    ASSERT_FALSE(m.ok()) << c.tail;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.field)) << c.tail;
  }
}

TEST(ModelConfig, HuggingFaceNamesAreAccepted) {
  // Mixtral/Qwen-style config.json keys.
  auto m = ParseModelConfig(
      R"({"hidden_size": 4096, "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2})",
      "mixtral.json");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->moe_intermediate_size, 14336);
  EXPECT_EQ(m->num_experts, 8);
  EXPECT_EQ(m->name, "mixtral");
}

TEST(ModelConfig, LoadsByPathAndCanonicalJsonIsStable) {
  std::string path = ::testing::TempDir() + "/my_model.json";
  {
    std::ofstream f(path);
    f << R"({"name": "mine", "hidden_size": 512, "moe_intermediate_size": 256, "n_routed_experts": 32,
             "num_experts_per_tok": 4, "scoring_func": "sigmoid", "n_group": 4, "topk_group": 2})";
  }
  auto a = LoadModelConfig(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->origin, path);
  ModelConfig b = *a;
  b.origin = "elsewhere";
  EXPECT_EQ(ModelConfigToJson(*a), ModelConfigToJson(b));
  b.top_k = 2;
  EXPECT_NE(ModelConfigToJson(*a), ModelConfigToJson(b));
  EXPECT_DOUBLE_EQ(a->FlopsPerPair(), 6.0 * 512 * 256);
}

TEST(ModelConfig, MissingFileIsNotFound) {
  auto m = LoadModelConfig("/nonexistent/dir/model.json");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("/nonexistent/dir/model.json"));
}

TEST(Types, DTypeParsingAndSizes) {
  EXPECT_EQ(*ParseDType("bf16"), DType::kBF16);
  EXPECT_EQ(*ParseDType("FP8"), DType::kFP8E4M3);
  EXPECT_EQ(DTypeSize(DType::kFP8E4M3), 1u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  auto bad = ParseDType("int4");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("int4"));
}

TEST(Types, RngIsDeterministicAndUniform) {
  EXPECT_EQ(RngHash(1, RngStream::kW1, 5), RngHash(1, RngStream::kW1, 5));
  EXPECT_NE(RngHash(1, RngStream::kW1, 5), RngHash(2, RngStream::kW1, 5));
  EXPECT_NE(RngHash(1, RngStream::kW1, 5), RngHash(1, RngStream::kW3, 5));
  double sum = 0, sq = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    float v = UniformSym(7, RngStream::kTest, i);
    ASSERT_GE(v, -1.0f);
    ASSERT_LT(v, 1.0f);
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0 / 3.0, 0.01);  // variance of U(-1, 1)
  EXPECT_NE(Fnv1a64("a", 1), Fnv1a64("b", 1));
}

TEST(Buffer, AllocatesAlignedAndMoves) {
  auto b = Buffer::Allocate(Device::Cpu(), MemoryKind::kHost, 1000);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 64, 0u);
  b->as<char>()[999] = 1;
  Buffer moved = std::move(*b);
  EXPECT_EQ(moved.bytes(), 1000u);
  EXPECT_EQ(b->data(), nullptr);
  auto zero = Buffer::Allocate(Device::Cpu(), MemoryKind::kHost, 0);
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(zero->data(), nullptr);
  auto dev = Buffer::Allocate(Device::Cpu(), MemoryKind::kDevice, 16);
  EXPECT_EQ(dev.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Trace, WritesChromeTraceJson) {
  GlobalTracer().Clear();
  GlobalTracer().SetEnabled(true);
  {
    ScopedSpan s("compute", "gemm(0)");
    s.Arg("flops", 123);
  }
  { ScopedSpan s("comm", "dispatch(1)"); }
  GlobalTracer().SetEnabled(false);
  { ScopedSpan s("comm", "ignored"); }
  auto spans = GlobalTracer().Spans();
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_GE(spans[0].dur_us, 0);
  std::string frag = GlobalTracer().ToChromeEvents(3);
  EXPECT_THAT(frag, HasSubstr("\"gemm(0)\""));
  EXPECT_THAT(frag, HasSubstr("\"thread_name\""));
  EXPECT_THAT(frag, HasSubstr("\"pid\":3"));
  std::string path = ::testing::TempDir() + "/trace.json";
  ASSERT_TRUE(WriteChromeTrace(path, {frag, "", frag}).ok());
  auto text = ReadFileToString(path);
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr("traceEvents"));
  GlobalTracer().Clear();
}

}  // namespace
}  // namespace waveep
