// Copyright 2026 The waveep Authors.
#include "runtime/status.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

namespace waveep::internal {

CheckFailer::CheckFailer(const char* cond, const char* file, int line) {
  msg_ << "WAVEEP_CHECK failed: " << cond << " at " << file << ":" << line << " ";
}

CheckFailer::~CheckFailer() {
  std::fprintf(stderr, "%s\n", msg_.str().c_str());
  std::fflush(stderr);
  std::abort();
}

Status MakeForeignError(absl::StatusCode code, const char* lib, const char* expr, const char* file, int line,
                        const std::string& detail) {
  return Status(code, absl::StrCat(lib, " call `", expr, "` failed at ", file, ":", line, ": ", detail));
}

std::string MpiErrorString(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return absl::StrCat("MPI error ", rc);
  return std::string(buf, len);
}

}  // namespace waveep::internal
