// Copyright 2026 The waveep Authors.
//
// runtime/status.h — error handling for every waveep module.
//
// Every public function returns absl::Status or absl::StatusOr<T>. Debian's Abseil (20220623) has no status
// macros, so waveep defines its own with upstream meaning:
//
//   absl::StatusOr<Layout> Build(...) {
//     WAVEEP_RETURN_IF_ERROR(Validate(cfg));                 // propagate a Status
//     WAVEEP_ASSIGN_OR_RETURN(auto counts, ExchangeCounts());  // unwrap a StatusOr or return its error
//     WAVEEP_MPI_RETURN_IF_ERROR(MPI_Barrier(comm));          // foreign return code -> Status with expr + file:line
//     WAVEEP_CHECK(counts.size() == n) << "internal";        // invariant: aborts, never compiled out
//   }
//
// NOTES: WAVEEP_CHECK is only for invariants (bugs); bad input always gets a Status. Only main() turns a Status
// into an exit code.
#ifndef WAVEEP_RUNTIME_STATUS_H_
#define WAVEEP_RUNTIME_STATUS_H_

#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace waveep {

using absl::Status;
using absl::StatusOr;

namespace internal {

// Streams a message for WAVEEP_CHECK and aborts in its destructor. Never returns.
class CheckFailer {
 public:
  CheckFailer(const char* cond, const char* file, int line);
  [[noreturn]] ~CheckFailer();
  template <typename T>
  CheckFailer& operator<<(const T& v) {
    msg_ << v;
    return *this;
  }

 private:
  std::ostringstream msg_;
};

// Makes the conventional "<expr> failed at file:line: <detail>" Status for foreign return codes.
Status MakeForeignError(absl::StatusCode code, const char* lib, const char* expr, const char* file, int line,
                        const std::string& detail);

}  // namespace internal

// Adds context to a non-OK status ("while dispatching wave 3: <original>"); keeps the code.
inline Status Annotate(const Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

}  // namespace waveep

#define WAVEEP_CONCAT_INNER_(a, b) a##b
#define WAVEEP_CONCAT_(a, b) WAVEEP_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define WAVEEP_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status waveep_status_ = (expr);          \
    if (!waveep_status_.ok()) return waveep_status_; \
  } while (0)

// `lhs = value` of a StatusOr, or returns its error. `lhs` may declare a variable (`auto x`).
#define WAVEEP_ASSIGN_OR_RETURN(lhs, rexpr) \
  WAVEEP_ASSIGN_OR_RETURN_IMPL_(WAVEEP_CONCAT_(waveep_statusor_, __LINE__), lhs, rexpr)
#define WAVEEP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

// Aborts with file:line and the condition text when `cond` is false. Never compiled out. Invariants only.
#define WAVEEP_CHECK(cond) \
  if (cond) {              \
  } else                   \
    ::waveep::internal::CheckFailer(#cond, __FILE__, __LINE__)

// MPI return code -> Status (kInternal) with the expression, file:line and MPI's error string.
#define WAVEEP_MPI_RETURN_IF_ERROR(expr)                                                                           \
  do {                                                                                                             \
    int waveep_mpi_rc_ = (expr);                                                                                   \
    if (waveep_mpi_rc_ != 0 /* MPI_SUCCESS */)                                                                     \
      return ::waveep::internal::MakeForeignError(::absl::StatusCode::kInternal, "MPI", #expr, __FILE__, __LINE__, \
                                                  ::waveep::internal::MpiErrorString(waveep_mpi_rc_));             \
  } while (0)

// CUDA runtime return code -> Status (kInternal) with the expression, file:line and cudaGetErrorString. Defined
// here so every module uses one macro; it only expands in files that include the CUDA runtime headers themselves
// (this header never includes them).
#define WAVEEP_CUDA_RETURN_IF_ERROR(expr)                                                                           \
  do {                                                                                                              \
    cudaError_t waveep_cuda_rc_ = (expr);                                                                           \
    if (waveep_cuda_rc_ != cudaSuccess)                                                                             \
      return ::waveep::internal::MakeForeignError(::absl::StatusCode::kInternal, "CUDA", #expr, __FILE__, __LINE__, \
                                                  cudaGetErrorString(waveep_cuda_rc_));                             \
  } while (0)

namespace waveep::internal {
std::string MpiErrorString(int rc);
}  // namespace waveep::internal

#endif  // WAVEEP_RUNTIME_STATUS_H_
