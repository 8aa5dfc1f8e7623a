// Copyright 2026 The waveep Authors.
//
// Safetensors reader/writer and multi-file checkpoints: round trips of every supported dtype, exact widening to
// FP32, row ranges and per-file read accounting, lazy opening through the index, and one test per malformed input
// (each must be a Status naming the file and the tensor, never a crash).
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "ep/io/io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace waveep {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string NewDir(const std::string& name) {
  std::string d = absl::StrCat(::testing::TempDir(), "/waveep_st_", getpid(), "_", name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Writes a file with an arbitrary header text and data, and an explicit header length (-1 = the text's).
void WriteRaw(const std::string& path, const std::string& header, const std::string& data, int64_t len = -1) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  uint64_t n = len < 0 ? header.size() : static_cast<uint64_t>(len);
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Opens `path`; the Status must fail with `code` and mention every string in `parts`.
void ExpectOpenError(const std::string& path, absl::StatusCode code, const std::vector<std::string>& parts) {
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok()) << path;
  EXPECT_EQ(f.status().code(), code) << f.status();
  for (const std::string& p : parts) EXPECT_THAT(std::string(f.status().message()), HasSubstr(p));
}

TEST(SafetensorsTest, RoundTripsEveryDtypeAndWidensExactly) {
  const std::string dir = NewDir("roundtrip");
  const std::string path = dir + "/a.safetensors";
  const std::vector<float> f32 = {1.5f, -2.25f, 3e-20f, 7.0f, 0.1f, -0.0f};
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC000, 0x0001, 0x7F80};                 // 1, -2, min subnormal, inf
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000};  // 1, -2, 65504, 2^-24, inf, -0
  const std::vector<uint8_t> fp8 = {0x38, 0x7E, 0x01, 0x80, 0xFE, 0x7F};               // 1, 448, 2^-9, -0, -448, NaN
  const std::vector<int32_t> i32 = {1, -2, 3, 2147483647};
  const std::vector<int64_t> i64 = {5, -6, 7, 8};
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"f32", DType::kF32, {2, 3}, f32.data()},
                                {"bf16", DType::kBF16, {4}, bf16.data()},
                                {"f16", DType::kF16, {3, 2}, f16.data()},
                                {"fp8", DType::kFP8E4M3, {6}, fp8.data()},
                                {"i32", DType::kI32, {2, 2}, i32.data()},
                                {"i64", DType::kI64, {4, 1}, i64.data()},
                                {"empty", DType::kF32, {0, 4}, nullptr},
                                {"scalar", DType::kF32, {}, f32.data()}},
                               {{"format", "pt"}})
                  .ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->header_bytes() % 8, 0u);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  ASSERT_EQ((*f)->tensors().size(), 8u);
  EXPECT_EQ((*f)->tensors()[0].name, "bf16");  // sorted by name
  const SafetensorsTensor* t = (*f)->Find("f16");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype_name, "F16");
  EXPECT_EQ(t->dtype, DType::kF16);
  EXPECT_THAT(t->shape, ElementsAre(3, 2));
  EXPECT_EQ(t->num_bytes(), 12u);
  EXPECT_EQ((*f)->bytes_read(), 0u);

  std::vector<float> out(6);
  ASSERT_TRUE((*f)->ReadF32("f32", {2, 3}, out.data()).ok());
  EXPECT_EQ(0, std::memcmp(out.data(), f32.data(), 24));
  ASSERT_TRUE((*f)->ReadF32("bf16", {4}, out.data()).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], std::ldexp(1.0f, -133));
  EXPECT_EQ(out[3], std::numeric_limits<float>::infinity());
  ASSERT_TRUE((*f)->ReadF32("f16", {3, 2}, out.data()).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 65504.0f);
  EXPECT_EQ(out[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(out[4], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(out[5]) && out[5] == 0.0f);
  ASSERT_TRUE((*f)->ReadF32("fp8", {6}, out.data()).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 448.0f);
  EXPECT_EQ(out[2], std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::signbit(out[3]) && out[3] == 0.0f);
  EXPECT_EQ(out[4], -448.0f);
  EXPECT_TRUE(std::isnan(out[5]));
  std::vector<int32_t> ints(4);
  ASSERT_TRUE((*f)->ReadRowsI32("i32", {2, 2}, 0, 2, ints.data()).ok());
  EXPECT_THAT(ints, ElementsAre(1, -2, 3, 2147483647));
  ASSERT_TRUE((*f)->ReadRowsI32("i64", {4, 1}, 1, 3, ints.data()).ok());  // rows 1..2 only
  EXPECT_EQ(ints[0], -6);
  EXPECT_EQ(ints[1], 7);
  ASSERT_TRUE((*f)->ReadF32("scalar", {}, out.data()).ok());
  EXPECT_EQ(out[0], 1.5f);
  auto empty = (*f)->Bytes("empty", 0, 0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->size(), 0u);
  // Accounting: 24 + 8 + 12 + 6 + 16 + 16 (two I64 rows) + 4 bytes, from 7 tensors.
  EXPECT_EQ((*f)->bytes_read(), 24u + 8 + 12 + 6 + 16 + 16 + 4);
  EXPECT_THAT((*f)->tensors_read(), ElementsAre("bf16", "empty", "f16", "f32", "fp8", "i32", "i64", "scalar"));
}

TEST(SafetensorsTest, RowRangesReadOnlyTheirBytes) {
  const std::string path = NewDir("rows") + "/r.safetensors";
  std::vector<float> x(10 * 4);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  ASSERT_TRUE(WriteSafetensors(path, {{"x", DType::kF32, {10, 4}, x.data()}}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::vector<float> out(8);
  ASSERT_TRUE((*f)->ReadRowsF32("x", {10, 4}, 3, 5, out.data()).ok());
  EXPECT_EQ(out[0], 12.0f);
  EXPECT_EQ(out[7], 19.0f);
  EXPECT_EQ((*f)->bytes_read(), 2u * 4 * 4);
  auto bad = (*f)->ReadRowsF32("x", {10, 4}, 8, 11, out.data());
  EXPECT_EQ(bad.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(bad.message()), AllOf(HasSubstr(path), HasSubstr("'x'"), HasSubstr("[8, 11)")));
}

TEST(SafetensorsTest, ReadErrorsNameFileAndTensor) {
  const std::string path = NewDir("readerr") + "/e.safetensors";
  std::vector<float> x(6, 1.0f);
  std::vector<int64_t> big = {int64_t{1} << 40};
  ASSERT_TRUE(
      WriteSafetensors(path, {{"x", DType::kF32, {2, 3}, x.data()}, {"big", DType::kI64, {1}, big.data()}}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  std::vector<float> out(6);
  std::vector<int32_t> ints(6);
  Status s = (*f)->ReadF32("x", {3, 2}, out.data());  // shape mismatch
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr(path), HasSubstr("'x'"), HasSubstr("shape [2, 3]"), HasSubstr("expected [3, 2]")));
  s = (*f)->ReadF32("missing", {1}, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr(path), HasSubstr("'missing'")));
  s = (*f)->ReadF32("big", {1}, out.data());  // dtype mismatch: integer read as float
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr(path), HasSubstr("'big'"), HasSubstr("I64")));
  s = (*f)->ReadRowsI32("x", {2, 3}, 0, 2, ints.data());  // float read as integer
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("'x'"), HasSubstr("F32"), HasSubstr("I32 or I64")));
  s = (*f)->ReadRowsI32("big", {1}, 0, 1, ints.data());
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("'big'"), HasSubstr("does not fit in int32")));
  // Shape / dtype / name failures hand out nothing; the I64 range check runs on the 8 bytes it has read.
  EXPECT_EQ((*f)->bytes_read(), 8u);
}

TEST(SafetensorsTest, MalformedFilesAreStatusesNotCrashes) {
  const std::string dir = NewDir("malformed");
  const std::string data(64, '\0');
  // Every case writes `header` followed by the same 64 data bytes; `len` overrides the header length field.
  struct Case {
    const char* name;
    std::string header;
    absl::StatusCode code;
    std::vector<std::string> parts;
    int64_t len = -1;
  };
  const std::vector<Case> cases = {
      {"corrupt_json", "{\"x\": {\"dtype\": \"F32\", ", absl::StatusCode::kInvalidArgument, {"malformed JSON"}},
      {"not_object", "[1, 2, 3]", absl::StatusCode::kInvalidArgument, {"not a JSON object"}},
      {"header_len_beyond_file", "{}", absl::StatusCode::kDataLoss, {"exceeds the file size"}, 1 << 20},
      {"missing_dtype",
       R"({"x": {"shape": [2], "data_offsets": [0, 8]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "dtype"}},
      {"unknown_dtype",
       R"({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "unknown dtype 'Q7'"}},
      {"negative_dim",
       R"({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "shape"}},
      {"fractional_dim",
       R"({"x": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "shape"}},
      {"bad_offsets",
       R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "data_offsets"}},
      {"reversed_offsets",
       R"({"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "begin <= end"}},
      {"size_mismatch",
       R"({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "size mismatch", "[2, 2]", "16 bytes", "12 bytes"}},
      {"truncated_data",
       R"({"x": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}})",
       absl::StatusCode::kDataLoss,
       {"'x'", "beyond the data section", "truncated"}},
      {"overlap",
       R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "b": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]}})",
       absl::StatusCode::kInvalidArgument,
       {"'b'", "overlap", "'a'"}},
      {"shape_overflow",
       R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})",
       absl::StatusCode::kInvalidArgument,
       {"'x'", "overflows"}},
      {"metadata_not_strings", R"({"__metadata__": {"a": 1}})", absl::StatusCode::kInvalidArgument, {"__metadata__"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = absl::StrCat(dir, "/", c.name, ".safetensors");
    WriteRaw(path, c.header, data, c.len);
    std::vector<std::string> parts = c.parts;
    parts.push_back(path);
    ExpectOpenError(path, c.code, parts);
  }
  // Files too short to hold the length, and a missing file.
  std::ofstream(dir + "/empty.safetensors").close();
  ExpectOpenError(dir + "/empty.safetensors", absl::StatusCode::kDataLoss, {"empty.safetensors", "truncated"});
  std::ofstream(dir + "/five.safetensors") << "abcde";
  ExpectOpenError(dir + "/five.safetensors", absl::StatusCode::kDataLoss, {"five.safetensors", "8-byte"});
  ExpectOpenError(dir + "/nope.safetensors", absl::StatusCode::kNotFound, {"nope.safetensors"});
  // A valid file cut short: the tensor whose bytes are gone is named.
  std::vector<float> x(64, 2.0f);
  const std::string good = dir + "/good.safetensors";
  ASSERT_TRUE(WriteSafetensors(good, {{"a", DType::kF32, {32}, x.data()}, {"tail", DType::kF32, {32}, x.data()}}).ok());
  std::string bytes = ReadAll(good);
  std::ofstream(dir + "/cut.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 10);
  ExpectOpenError(dir + "/cut.safetensors", absl::StatusCode::kDataLoss, {"cut.safetensors", "'tail'"});
}

TEST(SafetensorsTest, WriterRejectsBadTensors) {
  const std::string dir = NewDir("writer");
  float v = 1;
  EXPECT_THAT(
      std::string(WriteSafetensors(dir + "/d.safetensors", {{"a", DType::kF32, {1}, &v}, {"a", DType::kF32, {1}, &v}})
                      .message()),
      HasSubstr("duplicate"));
  EXPECT_FALSE(WriteSafetensors(dir + "/n.safetensors", {{"a", DType::kF32, {-1}, &v}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir + "/z.safetensors", {{"a", DType::kF32, {1}, nullptr}}).ok());
  EXPECT_THAT(std::string(WriteSafetensors(dir + "/o.safetensors",
                                           {{"a", DType::kF32, {int64_t{1} << 32, int64_t{1} << 32}, &v}})
                              .message()),
              HasSubstr("overflows"));
  EXPECT_THAT(std::string(WriteSafetensors(dir + "/u.safetensors", {{"a", DType::kF32, {1}, &v}},
                                           {{"input", std::string("caf\xe9.safetensors")}})
                              .message()),
              HasSubstr("cannot write the header"));
  Status s = WriteSafetensors(dir + "/no/such/dir/x.safetensors", {{"a", DType::kF32, {1}, &v}});
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no/such/dir/x.safetensors"));
}

// Three files + index: nothing is opened until a tensor is read, and then only its file.
class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = NewDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    for (int f = 0; f < 3; ++f) {
      std::vector<SafetensorsWriteTensor> ts;
      for (int i = 0; i < 2; ++i) ts.push_back({absl::StrCat("w.", f, ".", i), DType::kF32, {2, 4}, vals_.data()});
      ASSERT_TRUE(WriteSafetensors(absl::StrCat(dir_, "/part", f, ".safetensors"), ts).ok());
    }
  }
  void WriteIndex(const std::string& weight_map_json) {
    std::ofstream(dir_ + "/model.safetensors.index.json")
        << "{\"metadata\": {\"total_size\": 1}, \"weight_map\": " << weight_map_json << "}";
  }
  std::string FullIndex() const {
    std::string m;
    for (int f = 0; f < 3; ++f)
      for (int i = 0; i < 2; ++i)
        absl::StrAppend(&m, m.empty() ? "{" : ", ", "\"w.", f, ".", i, "\": \"part", f, ".safetensors\"");
    return m + "}";
  }
  std::string dir_;
  std::vector<float> vals_ = {1, 2, 3, 4, 5, 6, 7, 8};
};

TEST_F(CheckpointTest, IndexOpensFilesLazilyAndAccountsPerFile) {
  WriteIndex(FullIndex());
  auto c = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->source(), HasSubstr("model.safetensors.index.json"));
  EXPECT_TRUE((*c)->Contains("w.2.1"));
  EXPECT_FALSE((*c)->Contains("w.3.0"));
  EXPECT_EQ((*c)->FileOf("w.1.0"), "part1.safetensors");
  EXPECT_EQ((*c)->TensorNames().size(), 6u);
  for (const auto& u : (*c)->Usage()) EXPECT_FALSE(u.opened) << u.path;
  std::vector<float> out(8);
  ASSERT_TRUE((*c)->ReadF32("w.1.0", {2, 4}, out.data()).ok());
  EXPECT_EQ(out[7], 8.0f);
  auto usage = (*c)->Usage();
  ASSERT_EQ(usage.size(), 3u);
  EXPECT_FALSE(usage[0].opened);
  EXPECT_TRUE(usage[1].opened);
  EXPECT_EQ(usage[1].bytes_read, 32u);
  EXPECT_THAT(usage[1].tensors_read, ElementsAre("w.1.0"));
  EXPECT_FALSE(usage[2].opened);
  EXPECT_EQ((*c)->bytes_read(), 32u);
}

TEST_F(CheckpointTest, IndexErrorsNameIndexFileAndTensor) {
  // Missing index entry: the file has w.2.1, the index does not list it.
  WriteIndex(R"({"w.0.0": "part0.safetensors", "w.2.0": "part2.safetensors", "w.9.9": "part9.safetensors",
                 "w.5.5": "part1.safetensors"})");
  auto c = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<float> out(8);
  Status s = (*c)->ReadF32("w.2.1", {2, 4}, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("'w.2.1'"), HasSubstr("model.safetensors.index.json")));
  s = (*c)->ReadF32("w.9.9", {2, 4}, out.data());  // index names a file that does not exist
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("part9.safetensors"), HasSubstr("does not exist")));
  s = (*c)->ReadF32("w.5.5", {2, 4}, out.data());  // index maps a tensor to a file without it
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("'w.5.5'"), HasSubstr("part1.safetensors")));

  for (const char* bad : {"{\"weight_map\": ", "{\"no_weight_map\": {}}", "{\"weight_map\": {\"a\": 3}}",
                          "{\"weight_map\": {\"a\": \"../outside.safetensors\"}}"}) {
    std::ofstream(dir_ + "/model.safetensors.index.json") << bad;
    auto b = SafetensorsCheckpoint::Open(dir_);
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(b.status().message()), HasSubstr("model.safetensors.index.json")) << bad;
  }
}

TEST_F(CheckpointTest, WithoutIndexScansFilesAndRejectsDuplicates) {
  auto c = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->TensorNames().size(), 6u);
  EXPECT_EQ((*c)->FileOf("w.2.0"), "part2.safetensors");
  // A single file path works too.
  auto one = SafetensorsCheckpoint::Open(dir_ + "/part1.safetensors");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_TRUE((*one)->Contains("w.1.1"));
  EXPECT_FALSE((*one)->Contains("w.0.0"));
  // The same name in two files.
  ASSERT_TRUE(WriteSafetensors(dir_ + "/dup.safetensors", {{"w.0.0", DType::kF32, {2, 4}, vals_.data()}}).ok());
  auto dup = SafetensorsCheckpoint::Open(dir_);
  ASSERT_FALSE(dup.ok());
  EXPECT_THAT(std::string(dup.status().message()),
              AllOf(HasSubstr("'w.0.0'"), HasSubstr("dup.safetensors"), HasSubstr("part0.safetensors")));
  // Nothing there.
  const std::string empty = NewDir("empty_ckpt");
  EXPECT_EQ(SafetensorsCheckpoint::Open(empty).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsCheckpoint::Open(empty + "/nope").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace waveep
