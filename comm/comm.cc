// Copyright 2026 The waveep Authors.
//
// Backend registry and the argument checks every backend shares.
#include "comm/comm.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/cuda_ipc_transport.h"
#include "comm/mpi_transport.h"
#include "comm/nccl_transport.h"
#include "comm/ucx_transport.h"

namespace waveep::comm {
namespace {

using Factory = StatusOr<std::unique_ptr<Communicator>> (*)(const ProcessContext&, Options);

struct Backend {
  const char* name;
  Factory factory;  // nullptr: known, but not compiled into this binary
};

// In order of preference (see AvailableBackends). A backend gets a factory here when its transport file lands; until
// then its name is known so that users get Unavailable ("not built") instead of NotFound ("typo").
// A registered GPU backend still returns Unavailable from its factory on a machine without a device.
constexpr Backend kBackends[] = {
#ifdef WAVEEP_HAVE_NCCL
    {"nccl", &internal::NewNcclCommunicator},
#else
    {"nccl", nullptr},
#endif
#ifdef WAVEEP_HAVE_CUDA
    {"cuda_ipc", &internal::NewCudaIpcCommunicator},
#else
    {"cuda_ipc", nullptr},
#endif
#ifdef WAVEEP_HAVE_UCX
    {"ucx", &internal::NewUcxCommunicator},          {"ucx_put", &internal::NewUcxPutCommunicator},
#else
    {"ucx", nullptr},
    {"ucx_put", nullptr},
#endif
    {"mpi", &internal::NewMpiCommunicator},
};

std::vector<std::string> KnownButMissing() {
  std::vector<std::string> out;
  for (const Backend& b : kBackends) {
    if (b.factory == nullptr) out.emplace_back(b.name);
  }
  return out;
}

// One block [base + offset, +bytes) as absolute addresses, for overlap checks.
struct Range {
  uintptr_t begin;
  uintptr_t end;
  int peer;
  bool is_send;
};
// Inline storage for 8 ranks' send and receive blocks: validation allocates nothing at small scale.
using Ranges = absl::InlinedVector<Range, 16>;

Status CheckSide(const char* side, const void* base, const std::vector<size_t>& bytes,
                 const std::vector<size_t>& offsets, Ranges* ranges) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(base);
  for (size_t p = 0; p < bytes.size(); ++p) {
    if (bytes[p] == 0) continue;  // a zero block may have any offset and a null buffer
    if (base == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("AlltoallvArgs.", side, " is null but ", side, "_bytes[", p, "] = ", bytes[p]));
    }
    const size_t end_offset = offsets[p] + bytes[p];
    if (end_offset < offsets[p] || std::numeric_limits<uintptr_t>::max() - b < end_offset) {
      return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs.", side, "_offsets[", p, "] = ", offsets[p], " + ",
                                                     side, "_bytes[", p, "] = ", bytes[p],
                                                     " overflows the address space"));
    }
    ranges->push_back(Range{b + offsets[p], b + end_offset, static_cast<int>(p), side[0] == 's'});
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> AvailableBackends() {
  std::vector<std::string> out;
  // Preference: GPU-native transports first (when built), the host MPI fallback last.
  for (const Backend& b : kBackends) {
    if (b.factory != nullptr) out.emplace_back(b.name);
  }
  return out;
}

StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(absl::string_view backend, const ProcessContext& ctx,
                                                           Options options) {
  for (const Backend& b : kBackends) {
    if (backend != b.name) continue;
    if (b.factory == nullptr) {
      return absl::UnavailableError(absl::StrCat("comm backend '", backend,
                                                 "' is not implemented yet / not compiled into this binary "
                                                 "(available: ",
                                                 absl::StrJoin(AvailableBackends(), ", "), ")"));
    }
    return b.factory(ctx, options);
  }
  return absl::NotFoundError(absl::StrCat("unknown comm backend '", backend,
                                          "'; available: ", absl::StrJoin(AvailableBackends(), ", "),
                                          " (known but not built: ", absl::StrJoin(KnownButMissing(), ", "), ")"));
}

Status ValidateAlltoallvArgs(const AlltoallvArgs& args, int comm_size) {
  if (comm_size < 1) return absl::InvalidArgumentError(absl::StrCat("communicator size ", comm_size, " < 1"));
  const size_t n = static_cast<size_t>(comm_size);
  const std::pair<const char*, const std::vector<size_t>*> fields[] = {{"send_bytes", &args.send_bytes},
                                                                       {"send_offsets", &args.send_offsets},
                                                                       {"recv_bytes", &args.recv_bytes},
                                                                       {"recv_offsets", &args.recv_offsets}};
  for (const auto& [field, vec] : fields) {
    if (vec->size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("AlltoallvArgs.", field, " has ", vec->size(), " entries, expected ", n, " (one per rank)"));
    }
  }
  Ranges ranges;
  ranges.reserve(2 * n);
  WAVEEP_RETURN_IF_ERROR(CheckSide("send", args.send, args.send_bytes, args.send_offsets, &ranges));
  WAVEEP_RETURN_IF_ERROR(CheckSide("recv", args.recv, args.recv_bytes, args.recv_offsets, &ranges));

  // Receive blocks must not overlap each other (two peers writing the same bytes) nor any send block (MPI forbids
  // aliasing; in-place exchanges are not supported). Send blocks may overlap each other (broadcast-like sends).
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  // Sweep: remember the range reaching furthest so far; any later range starting before its end overlaps it. Keep
  // the furthest send and the furthest recv separately, since send/send overlap is allowed.
  const Range* far_send = nullptr;
  const Range* far_recv = nullptr;
  for (const Range& r : ranges) {
    const Range* conflict = nullptr;
    if (far_recv != nullptr && r.begin < far_recv->end) conflict = far_recv;
    if (conflict == nullptr && !r.is_send && far_send != nullptr && r.begin < far_send->end) conflict = far_send;
    if (conflict != nullptr) {
      auto name = [](const Range& x) { return absl::StrCat(x.is_send ? "send" : "recv", " block of peer ", x.peer); };
      return absl::InvalidArgumentError(absl::StrCat("AlltoallvArgs: ", name(*conflict), " overlaps ", name(r),
                                                     " (receive blocks must not overlap each other or a send "
                                                     "block)"));
    }
    const Range*& far = r.is_send ? far_send : far_recv;
    if (far == nullptr || r.end > far->end) far = &r;
  }
  return absl::OkStatus();
}

}  // namespace waveep::comm
