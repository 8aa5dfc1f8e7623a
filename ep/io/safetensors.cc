// Copyright 2026 The waveep Authors.
#include "ep/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "kernels/kernels.h"
#include "nlohmann/json.hpp"
#include "runtime/config.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors is little-endian; waveep reads it without byte swapping"
#endif

namespace waveep {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The safetensors spec caps the header at 100 MB; a larger length is corrupt, not a big model.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeEntry {
  const char* name;
  int bytes;
  std::optional<DType> dtype;
};
// Every dtype the safetensors spec defines; the ones waveep converts carry a DType.
const DTypeEntry kDTypes[] = {
    {"F64", 8, std::nullopt},  {"F32", 4, DType::kF32},         {"F16", 2, DType::kF16},      {"BF16", 2, DType::kBF16},
    {"I64", 8, DType::kI64},   {"I32", 4, DType::kI32},         {"I16", 2, std::nullopt},     {"I8", 1, std::nullopt},
    {"U64", 8, std::nullopt},  {"U32", 4, std::nullopt},        {"U16", 2, std::nullopt},     {"U8", 1, std::nullopt},
    {"BOOL", 1, std::nullopt}, {"F8_E4M3", 1, DType::kFP8E4M3}, {"F8_E5M2", 1, std::nullopt},
};

const DTypeEntry* FindDType(absl::string_view name) {
  for (const DTypeEntry& e : kDTypes)
    if (name == e.name) return &e;
  return nullptr;
}

// "<file>: tensor '<name>': <what>" (or "<file>: <what>" without a tensor).
std::string Where(absl::string_view file, absl::string_view tensor) {
  return tensor.empty() ? absl::StrCat(file, ": ") : absl::StrCat(file, ": tensor '", tensor, "': ");
}
Status Invalid(absl::string_view file, absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(Where(file, tensor), what));
}

// Reads a JSON integer >= 0 into `out`.
bool NonNegativeInt(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

// A parse error with its position (nlohmann only reports it through an exception, caught here).
std::string JsonError(const char* begin, const char* end) {
  std::string detail = "malformed JSON";
  try {
    json unused = json::parse(begin, end);
  } catch (const json::exception& e) {
    detail = absl::StrCat("malformed JSON (", e.what(), ")");
  }
  return detail;
}

void AdviseWillNeed(const uint8_t* p, size_t n) {
  if (n == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  madvise(reinterpret_cast<void*>(b), reinterpret_cast<uintptr_t>(p) + n - b, MADV_WILLNEED);
}

}  // namespace

absl::string_view SafetensorsDTypeName(DType t) {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == t) return e.name;
  return "?";
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t SafetensorsTensor::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- SafetensorsFile -------------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  // Only regular files: opening a FIFO blocks until a writer appears, a device may never end.
  if (Status reg = CheckRegularFile(path); !reg.ok()) {
    if (reg.code() == absl::StatusCode::kNotFound) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return reg;
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Invalid(path, "", "not a regular file");
  }
  f->file_bytes_ = static_cast<uint64_t>(st.st_size);
  if (f->file_bytes_ < 8) {
    ::close(fd);
    return absl::DataLossError(
        absl::StrCat(path, ": truncated: ", f->file_bytes_, " bytes, shorter than the 8-byte header length"));
  }
  void* m = ::mmap(nullptr, f->file_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file open
  if (m == MAP_FAILED) return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(map_err)));
  // Owned from here: the destructor unmaps on every error path below.
  f->map_ = static_cast<const uint8_t*>(m);
  // No read-ahead: a rank reads a few tensors of a file that mostly holds other ranks' experts.
  madvise(m, f->file_bytes_, MADV_RANDOM);

  uint64_t n = 0;
  std::memcpy(&n, f->map_, 8);
  if (n > f->file_bytes_ - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", n, " (first 8 bytes) exceeds the file size ",
                                            f->file_bytes_, " - 8: truncated or not a safetensors file"));
  }
  if (n > kMaxHeaderBytes) return Invalid(path, "", absl::StrCat("header length ", n, " exceeds the 100 MB limit"));
  if (n < 2) return Invalid(path, "", absl::StrCat("header length ", n, " is too small for a JSON object"));
  f->header_bytes_ = n;
  f->data_ = f->map_ + 8 + n;
  const uint64_t data_bytes = f->file_bytes_ - 8 - n;

  const char* hb = reinterpret_cast<const char*>(f->map_ + 8);
  const char* he = hb + n;
  WAVEEP_RETURN_IF_ERROR(CheckJsonNesting(absl::string_view(hb, n), absl::StrCat(path, ": header")));
  json j = json::parse(hb, he, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid(path, "", absl::StrCat("header: ", JsonError(hb, he)));
  if (!j.is_object()) return Invalid(path, "", "header is not a JSON object");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Invalid(path, "", "__metadata__ is not an object of strings");
      for (auto m_it = v.begin(); m_it != v.end(); ++m_it) {
        if (!m_it.value().is_string())
          return Invalid(path, "", absl::StrCat("__metadata__ value of '", m_it.key(), "' is not a string"));
        f->metadata_[m_it.key()] = m_it.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) return Invalid(path, name, "header entry is not an object");
    auto d = v.find("dtype");
    auto s = v.find("shape");
    auto o = v.find("data_offsets");
    if (d == v.end() || !d->is_string()) return Invalid(path, name, "missing or non-string 'dtype'");
    if (s == v.end() || !s->is_array()) return Invalid(path, name, "missing or non-array 'shape'");
    if (o == v.end() || !o->is_array() || o->size() != 2)
      return Invalid(path, name, "'data_offsets' must be an array [begin, end]");
    SafetensorsTensor t;
    t.name = name;
    t.dtype_name = d->get<std::string>();
    const DTypeEntry* de = FindDType(t.dtype_name);
    if (de == nullptr) return Invalid(path, name, absl::StrCat("unknown dtype '", t.dtype_name, "'"));
    t.dtype = de->dtype;
    uint64_t elems = 1;
    bool overflow = false;
    for (const json& dim : *s) {
      uint64_t dv = 0;
      if (!NonNegativeInt(dim, &dv) || dv > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return Invalid(path, name, absl::StrCat("shape ", s->dump(), " has a dimension that is not an integer >= 0"));
      t.shape.push_back(static_cast<int64_t>(dv));
      overflow = overflow || __builtin_mul_overflow(elems, dv, &elems);
    }
    uint64_t bytes = 0;
    overflow = overflow || __builtin_mul_overflow(elems, static_cast<uint64_t>(de->bytes), &bytes) ||
               elems > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    if (overflow) return Invalid(path, name, absl::StrCat("shape ", s->dump(), " overflows"));
    if (!NonNegativeInt((*o)[0], &t.begin) || !NonNegativeInt((*o)[1], &t.end) || t.begin > t.end)
      return Invalid(path, name, absl::StrCat("data_offsets ", o->dump(), " must be integers 0 <= begin <= end"));
    if (t.end - t.begin != bytes) {
      return Invalid(path, name,
                     absl::StrCat("size mismatch: shape ", ShapeToString(t.shape), " x ", t.dtype_name, " (", de->bytes,
                                  " bytes) = ", bytes, " bytes, but data_offsets ", o->dump(), " span ",
                                  t.end - t.begin, " bytes"));
    }
    if (t.end > data_bytes) {
      return absl::DataLossError(absl::StrCat(Where(path, name), "data_offsets ", o->dump(),
                                              " end beyond the data section (", data_bytes, " bytes in a ",
                                              f->file_bytes_, "-byte file): file truncated or offsets out of bounds"));
    }
    f->tensors_.push_back(std::move(t));
  }
  // Overlap check on the byte ranges, in offset order (empty tensors overlap nothing).
  std::vector<const SafetensorsTensor*> by_offset;
  for (const SafetensorsTensor& t : f->tensors_)
    if (t.num_bytes() > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const SafetensorsTensor* a, const SafetensorsTensor* b) {
    return a->begin < b->begin || (a->begin == b->begin && a->name < b->name);
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorsTensor* a = by_offset[i - 1];
    const SafetensorsTensor* b = by_offset[i];
    if (b->begin < a->end) {
      return Invalid(path, b->name,
                     absl::StrCat("data_offsets [", b->begin, ", ", b->end, "] overlap tensor '", a->name, "' [",
                                  a->begin, ", ", a->end, "]"));
    }
  }
  // Every byte after the header belongs to a tensor: trailing bytes (as other readers reject them) mean the file is
  // not what its header says — appended data, or a header that lost an entry.
  uint64_t data_end = 0;
  for (const SafetensorsTensor& t : f->tensors_) data_end = std::max(data_end, t.end);
  if (data_end < data_bytes) {
    return Invalid(path, "",
                   absl::StrCat(data_bytes - data_end, " trailing byte(s) after the last tensor (data section has ",
                                data_bytes, " bytes, the header's tensors end at ", data_end, ")"));
  }
  // nlohmann's object iterates in key order, so tensors_ is sorted by name already.
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), file_bytes_);
}

const SafetensorsTensor* SafetensorsFile::Find(absl::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const SafetensorsTensor& t, absl::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

StatusOr<const SafetensorsTensor*> SafetensorsFile::Get(absl::string_view name) const {
  const SafetensorsTensor* t = Find(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", name, "'"));
  return t;
}

StatusOr<const SafetensorsTensor*> SafetensorsFile::CheckShape(absl::string_view name,
                                                               const std::vector<int64_t>& shape) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsTensor* t, Get(name));
  if (t->shape != shape) {
    return Invalid(
        path_, name,
        absl::StrCat("shape ", ShapeToString(t->shape), " does not match the expected ", ShapeToString(shape)));
  }
  return t;
}

StatusOr<const SafetensorsTensor*> SafetensorsFile::GetWithShape(absl::string_view name,
                                                                 const std::vector<int64_t>& shape) const {
  return CheckShape(name, shape);
}

StatusOr<absl::Span<const uint8_t>> SafetensorsFile::Bytes(absl::string_view name, int64_t row_begin,
                                                           int64_t row_end) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsTensor* t, Get(name));
  const int64_t rows = t->shape.empty() ? 1 : t->shape[0];
  if (row_begin < 0 || row_end < row_begin || row_end > rows) {
    return absl::OutOfRangeError(
        absl::StrCat(Where(path_, name), "rows [", row_begin, ", ", row_end, ") outside [0, ", rows, ")"));
  }
  const uint64_t row_bytes = rows > 0 ? t->num_bytes() / static_cast<uint64_t>(rows) : 0;
  const uint8_t* p = data_ + t->begin + static_cast<uint64_t>(row_begin) * row_bytes;
  const size_t n = static_cast<size_t>(static_cast<uint64_t>(row_end - row_begin) * row_bytes);
  AdviseWillNeed(p, n);
  bytes_read_ += n;
  {
    std::lock_guard<std::mutex> lock(read_mu_);
    tensors_read_.insert(t->name);
  }
  return absl::Span<const uint8_t>(p, n);
}

Status SafetensorsFile::ReadF32(absl::string_view name, const std::vector<int64_t>& shape, float* out) const {
  const int64_t rows = shape.empty() ? 1 : shape[0];
  return ReadRowsF32(name, shape, 0, rows, out);
}

Status SafetensorsFile::ReadRowsF32(absl::string_view name, const std::vector<int64_t>& shape, int64_t row_begin,
                                    int64_t row_end, float* out) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsTensor* t, CheckShape(name, shape));
  if (!t->dtype.has_value() || *t->dtype == DType::kI32 || *t->dtype == DType::kI64) {
    return Invalid(
        path_, name,
        absl::StrCat("dtype ", t->dtype_name, " is not a floating-point type (expected F32, BF16, F16 or F8_E4M3)"));
  }
  WAVEEP_ASSIGN_OR_RETURN(absl::Span<const uint8_t> b, Bytes(name, row_begin, row_end));
  const uint8_t* p = b.data();
  switch (*t->dtype) {
    case DType::kF32:
      std::memcpy(out, p, b.size());
      break;
    case DType::kBF16:
      for (size_t i = 0; i < b.size() / 2; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = kernels::Bf16ToFloat(h);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < b.size() / 2; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = kernels::F16ToFloat(h);
      }
      break;
    case DType::kFP8E4M3:
      for (size_t i = 0; i < b.size(); ++i) out[i] = kernels::Fp8E4M3ToFloat(p[i]);
      break;
    default:
      break;  // excluded above
  }
  return absl::OkStatus();
}

Status SafetensorsFile::ReadRowsI32(absl::string_view name, const std::vector<int64_t>& shape, int64_t row_begin,
                                    int64_t row_end, int32_t* out) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsTensor* t, CheckShape(name, shape));
  if (!t->dtype.has_value() || (*t->dtype != DType::kI32 && *t->dtype != DType::kI64))
    return Invalid(path_, name, absl::StrCat("dtype ", t->dtype_name, " is not an integer type (expected I32 or I64)"));
  WAVEEP_ASSIGN_OR_RETURN(absl::Span<const uint8_t> b, Bytes(name, row_begin, row_end));
  if (*t->dtype == DType::kI32) {
    std::memcpy(out, b.data(), b.size());
    return absl::OkStatus();
  }
  const size_t n = b.size() / 8;
  for (size_t i = 0; i < n; ++i) {
    int64_t v;
    std::memcpy(&v, b.data() + 8 * i, 8);
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
      return Invalid(path_, name, absl::StrCat("value ", v, " at element ", i, " does not fit in int32"));
    out[i] = static_cast<int32_t>(v);
  }
  return absl::OkStatus();
}

std::vector<std::string> SafetensorsFile::tensors_read() const {
  std::lock_guard<std::mutex> lock(read_mu_);
  return {tensors_read_.begin(), tensors_read_.end()};
}

// ---- SafetensorsCheckpoint -------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(const std::string& path) {
  std::unique_ptr<SafetensorsCheckpoint> c(new SafetensorsCheckpoint());
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat("checkpoint ", path, " does not exist"));
  // Registers an opened file and every tensor in it.
  auto add_file = [&c](const std::string& file, std::unique_ptr<SafetensorsFile> f) -> Status {
    for (const SafetensorsTensor& t : f->tensors()) {
      auto [it, inserted] = c->file_of_.emplace(t.name, file);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint ", c->dir_, ": tensor '", t.name, "' is in both ", it->second, " and ", file));
      }
    }
    c->files_.insert(file);
    c->open_[file] = std::move(f);
    return absl::OkStatus();
  };
  if (!fs::is_directory(path, ec)) {
    fs::path p(path);
    c->dir_ = p.parent_path().string();
    if (c->dir_.empty()) c->dir_ = ".";
    c->source_ = path;
    WAVEEP_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(path));
    WAVEEP_RETURN_IF_ERROR(add_file(p.filename().string(), std::move(f)));
    return c;
  }
  c->dir_ = path;
  const std::string index = (fs::path(path) / "model.safetensors.index.json").string();
  if (fs::exists(index, ec)) {
    c->source_ = index;
    WAVEEP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index));
    WAVEEP_RETURN_IF_ERROR(CheckJsonNesting(text, index));
    json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded())
      return absl::InvalidArgumentError(absl::StrCat(index, ": ", JsonError(text.data(), text.data() + text.size())));
    auto wm = j.is_object() ? j.find("weight_map") : j.end();
    if (!j.is_object() || wm == j.end() || !wm->is_object())
      return absl::InvalidArgumentError(absl::StrCat(index, ": no \"weight_map\" object"));
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string() || it.value().get<std::string>().empty())
        return absl::InvalidArgumentError(
            absl::StrCat(index, ": weight_map entry for tensor '", it.key(), "' is not a file name"));
      const std::string file = it.value().get<std::string>();
      fs::path fp(file);
      bool escapes = fp.is_absolute();
      for (const auto& part : fp) escapes = escapes || part == "..";
      if (escapes) {
        return absl::InvalidArgumentError(absl::StrCat(index, ": weight_map entry for tensor '", it.key(), "' names '",
                                                       file, "' outside the checkpoint directory"));
      }
      c->file_of_[it.key()] = file;
      c->files_.insert(file);
    }
    return c;
  }
  const std::string single = (fs::path(path) / "model.safetensors").string();
  if (fs::exists(single, ec)) {
    c->source_ = single;
    WAVEEP_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(single));
    WAVEEP_RETURN_IF_ERROR(add_file("model.safetensors", std::move(f)));
    return c;
  }
  std::vector<std::string> found;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".safetensors") found.push_back(it->path().filename().string());
  }
  if (found.empty()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint ", path, ": no model.safetensors.index.json, model.safetensors or *.safetensors"));
  }
  std::sort(found.begin(), found.end());
  c->source_ = absl::StrCat(path, "/*.safetensors");
  for (const std::string& file : found) {
    WAVEEP_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open((fs::path(path) / file).string()));
    WAVEEP_RETURN_IF_ERROR(add_file(file, std::move(f)));
  }
  return c;
}

bool SafetensorsCheckpoint::Contains(absl::string_view name) const { return file_of_.count(std::string(name)) > 0; }

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(file_of_.size());
  for (const auto& [name, file] : file_of_) names.push_back(name);
  return names;
}

std::string SafetensorsCheckpoint::FileOf(absl::string_view name) const {
  auto it = file_of_.find(std::string(name));
  return it == file_of_.end() ? std::string() : it->second;
}

StatusOr<const SafetensorsFile*> SafetensorsCheckpoint::OpenFile(const std::string& file) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(file);
  if (it != open_.end()) return it->second.get();
  const std::string full = (fs::path(dir_) / file).string();
  auto f = SafetensorsFile::Open(full);
  if (!f.ok() && f.status().code() == absl::StatusCode::kNotFound) {
    return absl::NotFoundError(absl::StrCat(source_, " names file ", file, ", which does not exist (", full, ")"));
  }
  WAVEEP_RETURN_IF_ERROR(f.status());
  const SafetensorsFile* raw = f->get();
  open_[file] = *std::move(f);
  return raw;
}

StatusOr<const SafetensorsFile*> SafetensorsCheckpoint::File(absl::string_view name) const {
  auto it = file_of_.find(std::string(name));
  if (it == file_of_.end())
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' is not in the checkpoint (", source_, ")"));
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsFile* f, OpenFile(it->second));
  if (f->Find(name) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(source_, " maps tensor '", name, "' to ", f->path(), ", but that file has no such tensor"));
  }
  return f;
}

StatusOr<const SafetensorsTensor*> SafetensorsCheckpoint::Get(absl::string_view name) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsFile* f, File(name));
  return f->Get(name);
}

Status SafetensorsCheckpoint::ReadF32(absl::string_view name, const std::vector<int64_t>& shape, float* out) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsFile* f, File(name));
  return f->ReadF32(name, shape, out);
}

StatusOr<absl::Span<const uint8_t>> SafetensorsCheckpoint::Bytes(absl::string_view name, int64_t row_begin,
                                                                 int64_t row_end) const {
  WAVEEP_ASSIGN_OR_RETURN(const SafetensorsFile* f, File(name));
  return f->Bytes(name, row_begin, row_end);
}

std::vector<SafetensorsCheckpoint::FileUsage> SafetensorsCheckpoint::Usage() const {
  std::vector<FileUsage> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& file : files_) {
    FileUsage u;
    u.path = (fs::path(dir_) / file).string();
    auto it = open_.find(file);
    if (it != open_.end()) {
      u.opened = true;
      u.file_bytes = it->second->file_bytes();
      u.bytes_read = it->second->bytes_read();
      u.tensors_read = it->second->tensors_read();
    }
    out.push_back(std::move(u));
  }
  return out;
}

uint64_t SafetensorsCheckpoint::bytes_read() const {
  uint64_t n = 0;
  for (const FileUsage& u : Usage()) n += u.bytes_read;
  return n;
}

// ---- writer ----------------------------------------------------------------------------------------------------

Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsWriteTensor>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) {
    json md = json::object();
    for (const auto& [k, v] : metadata) md[k] = v;
    header["__metadata__"] = md;
  }
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const SafetensorsWriteTensor& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      return absl::InvalidArgumentError(absl::StrCat(path, ": invalid tensor name '", t.name, "'"));
    if (header.contains(t.name)) return Invalid(path, t.name, "duplicate tensor name");
    uint64_t elems = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return Invalid(path, t.name, absl::StrCat("negative dimension in shape ", ShapeToString(t.shape)));
      if (__builtin_mul_overflow(elems, static_cast<uint64_t>(d), &elems))
        return Invalid(path, t.name, absl::StrCat("shape ", ShapeToString(t.shape), " overflows 64 bits"));
    }
    uint64_t bytes = 0, end = 0;
    if (__builtin_mul_overflow(elems, static_cast<uint64_t>(DTypeSize(t.dtype)), &bytes) ||
        __builtin_add_overflow(offset, bytes, &end))
      return Invalid(path, t.name, absl::StrCat("shape ", ShapeToString(t.shape), " overflows 64 bits"));
    if (bytes > 0 && t.data == nullptr) return Invalid(path, t.name, "null data");
    json e;
    e["dtype"] = std::string(SafetensorsDTypeName(t.dtype));
    e["shape"] = t.shape;
    e["data_offsets"] = {offset, offset + bytes};
    header[t.name] = e;
    sizes.push_back(bytes);
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();  // throws on metadata that is not UTF-8 (a path in another encoding)
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot write the header: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  // Written beside the target and renamed over it: a reader never sees a partial file. The pid keeps concurrent
  // writers of the same path apart.
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  FILE* out = std::fopen(tmp.c_str(), "wb");
  if (out == nullptr)
    return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  const uint64_t n = text.size();
  bool ok = std::fwrite(&n, 8, 1, out) == 1 && std::fwrite(text.data(), 1, text.size(), out) == text.size();
  for (size_t i = 0; i < tensors.size() && ok; ++i) {
    if (sizes[i] > 0) ok = std::fwrite(tensors[i].data, 1, sizes[i], out) == sizes[i];
  }
  ok = (std::fclose(out) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::DataLossError(absl::StrCat("write error on ", path, ": ", std::strerror(errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace waveep
