// Copyright 2026 The waveep Authors.
//
// safetensors files (checkpoints, --input): any bytes must open cleanly or fail with an error naming the file — never
// a crash, a hang or an out-of-bounds read. The reader maps files, so each input is written to a private file first
// (in $TMPDIR, /dev/shm when it exists). Accepted files have every tensor read back through the checked accessors.
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "ep/io/io.h"
#include "tests/fuzz/fuzz_target.h"

namespace {
std::string ScratchPath() {
  const char* dir = std::getenv("TMPDIR");
  std::string d = dir != nullptr && *dir != '\0' ? dir : (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
  return d + "/waveep_fuzz_" + std::to_string(getpid()) + ".safetensors";
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = ScratchPath();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
  auto file = waveep::SafetensorsFile::Open(path);
  if (file.ok()) {
    for (const waveep::SafetensorsTensor& t : (*file)->tensors()) {
      // Every accessor bounds-checks; read a small tensor fully as FP32 when its dtype allows.
      if (t.num_elements() > 0 && t.num_elements() <= 4096 && t.shape.size() == 2) {
        std::vector<float> out(static_cast<size_t>(t.num_elements()));
        (void)(*file)->ReadF32(t.name, {t.shape[0], t.shape[1]}, out.data());
      }
    }
  }
  std::remove(path.c_str());
  return 0;
}
