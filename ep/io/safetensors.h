// Copyright 2026 The waveep Authors.
//
// ep/io/safetensors.h — reading and writing safetensors files and multi-file checkpoints.
//
// The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length N, N bytes of JSON
// mapping tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__" object of
// strings), then the raw row-major data; offsets are relative to the first byte after the header.
//
//   // one file, memory-mapped read-only; only the header is parsed at Open
//   WAVEEP_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open("input.safetensors"));
//   std::vector<float> x(t * h);
//   WAVEEP_RETURN_IF_ERROR(f->ReadF32("hidden_states", {t, h}, x.data()));   // F32/BF16/F16/F8_E4M3 -> FP32
//
//   // a Hugging Face checkpoint directory: model.safetensors.index.json (weight_map) or model.safetensors
//   WAVEEP_ASSIGN_OR_RETURN(auto ckpt, SafetensorsCheckpoint::Open("/models/DeepSeek-V3"));
//   ckpt->Contains("model.layers.3.mlp.gate.weight");          // index lookup only, no file is opened
//   WAVEEP_RETURN_IF_ERROR(ckpt->ReadF32("model.layers.3.mlp.gate.weight", {256, 7168}, w.data()));
//   for (const auto& u : ckpt->Usage()) ... u.path, u.opened, u.bytes_read ...
//
//   // writing
//   WAVEEP_RETURN_IF_ERROR(WriteSafetensors("out.safetensors", {{"output", DType::kF32, {t, h}, out.data()}}));
//
// Access is by tensor name: a reader touches the header of a file and the bytes of the tensors (or rows) it asks
// for, nothing else. Files are opened lazily, on the first access to one of their tensors, and every file counts the
// data bytes handed out (bytes_read) and the tensors they belong to, so tests can check that a rank read only its own
// experts. The mapping is advised MADV_RANDOM (no read-ahead into neighbouring tensors) and each accessed range
// MADV_WILLNEED.
//
// Errors: every malformed, truncated or inconsistent file, and every missing tensor or wrong dtype / shape, is a
// Status whose message names the file and the tensor: never a crash. Open validates the whole header (JSON, header
// length vs file size, known dtypes, shape x dtype size == byte range, ranges inside the data section and not
// overlapping). NOTES: a file truncated by another process *after* Open can still raise SIGBUS on access, as with
// any mmap reader. Little-endian hosts only (x86-64, AArch64), like the format.
#ifndef WAVEEP_EP_IO_SAFETENSORS_H_
#define WAVEEP_EP_IO_SAFETENSORS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/status.h"
#include "runtime/types.h"

namespace waveep {

// The safetensors dtype string of a waveep DType: "F32", "BF16", "F16", "F8_E4M3", "I32", "I64".
absl::string_view SafetensorsDTypeName(DType t);

// "[2, 3]"; "[]" for a scalar.
std::string ShapeToString(const std::vector<int64_t>& shape);

// One entry of a file's header.
struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;      // as written in the header, e.g. "BF16", "F8_E4M3", "U8"
  std::optional<DType> dtype;  // empty for valid safetensors dtypes waveep does not convert (F64, U8, BOOL, ...)
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets in the data section (after the header), end exclusive
  uint64_t end = 0;
  int64_t num_elements() const;  // product of shape (1 for a scalar)
  uint64_t num_bytes() const { return end - begin; }
};

// A safetensors file, memory-mapped read-only for the object's lifetime.
// Thread-safe: every const method may be called concurrently (the counters are atomic / mutex-guarded).
class SafetensorsFile {
 public:
  // Maps `path` and validates the header (see the file comment). NotFound if the file does not exist;
  // InvalidArgument (or DataLoss for a truncated file) naming the file, and the tensor where there is one.
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_bytes() const { return file_bytes_; }
  uint64_t header_bytes() const { return header_bytes_; }  // N, the JSON header's length
  // Every tensor, sorted by name.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // The "__metadata__" strings (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor named `name`, or nullptr.
  const SafetensorsTensor* Find(absl::string_view name) const;
  // The tensor named `name`; NotFound "<file>: no tensor '<name>'" if absent.
  StatusOr<const SafetensorsTensor*> Get(absl::string_view name) const;
  // Get(), then InvalidArgument unless the tensor's shape is exactly `shape`.
  StatusOr<const SafetensorsTensor*> GetWithShape(absl::string_view name, const std::vector<int64_t>& shape) const;

  // The raw bytes of rows [row_begin, row_end) of `name` along dimension 0 (a scalar has one row). Points into the
  // mapping (valid while this object lives); counted as read. OutOfRange for a bad row range.
  StatusOr<absl::Span<const uint8_t>> Bytes(absl::string_view name, int64_t row_begin, int64_t row_end) const;

  // Converts `name` (whose shape must be exactly `shape`) to FP32 into out[num_elements]: F32 is copied, BF16 / F16
  // / F8_E4M3 are widened exactly (FP8 without any scale: scaling is the caller's business). Any other dtype is
  // InvalidArgument naming the file, tensor, its dtype and the accepted ones.
  Status ReadF32(absl::string_view name, const std::vector<int64_t>& shape, float* out) const;
  // As ReadF32, rows [row_begin, row_end) only: out[(row_end - row_begin) * row elements].
  Status ReadRowsF32(absl::string_view name, const std::vector<int64_t>& shape, int64_t row_begin, int64_t row_end,
                     float* out) const;
  // Integer rows of an I32 or I64 tensor into int32 (I64 values outside int32 are InvalidArgument).
  Status ReadRowsI32(absl::string_view name, const std::vector<int64_t>& shape, int64_t row_begin, int64_t row_end,
                     int32_t* out) const;

  // Data bytes handed out so far (Bytes / Read*), and the names of the tensors they came from, sorted.
  uint64_t bytes_read() const { return bytes_read_.load(); }
  std::vector<std::string> tensors_read() const;

 private:
  SafetensorsFile() = default;
  StatusOr<const SafetensorsTensor*> CheckShape(absl::string_view name, const std::vector<int64_t>& shape) const;

  std::string path_;
  const uint8_t* map_ = nullptr;  // whole file
  uint64_t file_bytes_ = 0;
  uint64_t header_bytes_ = 0;
  const uint8_t* data_ = nullptr;  // map_ + 8 + header_bytes_
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
  mutable std::atomic<uint64_t> bytes_read_{0};
  mutable std::mutex read_mu_;
  mutable std::set<std::string> tensors_read_;
};

// A checkpoint: one or more safetensors files addressed by tensor name.
// Thread-safe: files are opened lazily under a mutex; reads go to SafetensorsFile (thread-safe).
class SafetensorsCheckpoint {
 public:
  // `path` is a directory holding
  //   - model.safetensors.index.json ({"weight_map": {tensor: file}}; files are opened only when a tensor of theirs
  //     is read), or else
  //   - model.safetensors, or else
  //   - any *.safetensors files (all headers are read to build the name map; a name in two files is an error);
  // or a single .safetensors file. NotFound when there is nothing to read; InvalidArgument for a malformed index.
  static StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& path);

  // Where the names come from: the index file, or the single/scanned file(s).
  const std::string& source() const { return source_; }
  // True if the name map lists `name` (no file is opened).
  bool Contains(absl::string_view name) const;
  // Every tensor name, sorted.
  std::vector<std::string> TensorNames() const;
  // The file the name map assigns `name` to ("" if none).
  std::string FileOf(absl::string_view name) const;

  // The opened file holding `name`. NotFound naming the index (or file) when the name map lacks `name`, or when the
  // index assigns it to a file that does not contain it; the file's own Open errors otherwise.
  StatusOr<const SafetensorsFile*> File(absl::string_view name) const;
  StatusOr<const SafetensorsTensor*> Get(absl::string_view name) const;
  // SafetensorsFile::ReadF32 / Bytes on the file holding `name`.
  Status ReadF32(absl::string_view name, const std::vector<int64_t>& shape, float* out) const;
  StatusOr<absl::Span<const uint8_t>> Bytes(absl::string_view name, int64_t row_begin, int64_t row_end) const;

  // Per-file accounting, in file-name order: every file the name map mentions, opened or not.
  struct FileUsage {
    std::string path;
    bool opened = false;
    uint64_t file_bytes = 0;  // 0 when not opened
    uint64_t bytes_read = 0;  // data bytes handed out (headers not counted)
    std::vector<std::string> tensors_read;
  };
  std::vector<FileUsage> Usage() const;
  // Sum of bytes_read over the files.
  uint64_t bytes_read() const;

 private:
  SafetensorsCheckpoint() = default;
  StatusOr<const SafetensorsFile*> OpenFile(const std::string& file) const;

  std::string dir_;
  std::string source_;
  std::map<std::string, std::string> file_of_;  // tensor -> file name (relative to dir_)
  std::set<std::string> files_;                 // every file name in file_of_
  mutable std::mutex mu_;
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> open_;  // by file name
};

// A tensor to write: `data` holds num_elements * DTypeSize(dtype) bytes, row-major, not owned.
struct SafetensorsWriteTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a safetensors file (tensors in the given order; header padded with spaces to a multiple of 8 bytes). Writes
// `path`.tmp.<pid> then renames it over `path`, so readers never see a partial file. InvalidArgument for duplicate or
// empty names, negative dimensions, sizes that overflow 64 bits, metadata that is not UTF-8, or a null data pointer
// with a non-empty tensor; PermissionDenied / DataLoss for I/O.
Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsWriteTensor>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace waveep

#endif  // WAVEEP_EP_IO_SAFETENSORS_H_
