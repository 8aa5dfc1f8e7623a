// Copyright 2026 The waveep Authors.
//
// Expert FFN compute on the CPU: grouped GEMM through BLAS sgemm and the SwiGLU activation.
#include <cblas.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "kernels/kernels.h"

namespace waveep::kernels {

Status GroupedGemmNT(const float* a, const int64_t* group_offsets, int num_groups, int64_t k, const float* const* b,
                     int64_t n, float* c) {
  if (num_groups < 0) return absl::InvalidArgumentError(absl::StrCat("GroupedGemmNT: num_groups < 0: ", num_groups));
  if (k < 0 || n < 0)
    return absl::InvalidArgumentError(absl::StrCat("GroupedGemmNT: k and n must be >= 0, got k=", k, ", n=", n));
  if (num_groups == 0) return absl::OkStatus();
  if (group_offsets == nullptr) return absl::InvalidArgumentError("GroupedGemmNT: null group_offsets");
  // BLAS takes 32-bit dimensions (LP64 OpenBLAS); larger shapes would silently wrap.
  constexpr int64_t kBlasMax = std::numeric_limits<int>::max();
  if (k > kBlasMax || n > kBlasMax)
    return absl::InvalidArgumentError(absl::StrCat("GroupedGemmNT: k=", k, " or n=", n, " exceeds the BLAS int range"));
  if (group_offsets[0] < 0)
    return absl::InvalidArgumentError(absl::StrCat("GroupedGemmNT: group_offsets[0] = ", group_offsets[0], " < 0"));
  // Validate every group before touching c, so c is written only on success.
  bool any_rows = false;
  for (int g = 0; g < num_groups; ++g) {
    const int64_t m = group_offsets[g + 1] - group_offsets[g];
    if (m < 0)
      return absl::InvalidArgumentError(absl::StrCat("GroupedGemmNT: group_offsets decrease at group ", g, " (",
                                                     group_offsets[g], " -> ", group_offsets[g + 1], ")"));
    if (m > kBlasMax)
      return absl::InvalidArgumentError(
          absl::StrCat("GroupedGemmNT: group ", g, " has ", m, " rows, more than the BLAS int range"));
    if (m > 0 && (b == nullptr || b[g] == nullptr))
      return absl::InvalidArgumentError(absl::StrCat("GroupedGemmNT: B is null for group ", g, " with ", m, " rows"));
    any_rows = any_rows || m > 0;
  }
  if (!any_rows || n == 0) return absl::OkStatus();
  if (c == nullptr || (k > 0 && a == nullptr)) return absl::InvalidArgumentError("GroupedGemmNT: null A or C");

  for (int g = 0; g < num_groups; ++g) {
    const int64_t row0 = group_offsets[g];
    const int m = static_cast<int>(group_offsets[g + 1] - row0);
    if (m == 0) continue;
    float* c_g = c + row0 * n;
    if (k == 0) {
      // An empty reduction is zero; BLAS would reject lda = 0 instead of computing it.
      std::memset(c_g, 0, sizeof(float) * m * n);
      continue;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, static_cast<int>(n), static_cast<int>(k), 1.0f,
                a + row0 * k, static_cast<int>(k), b[g], static_cast<int>(k), 0.0f, c_g, static_cast<int>(n));
  }
  return absl::OkStatus();
}

void SwiGLU(const float* gate_up, int64_t m, int64_t intermediate, float* out) {
  for (int64_t r = 0; r < m; ++r) {
    const float* gate = gate_up + r * 2 * intermediate;
    const float* up = gate + intermediate;
    float* o = out + r * intermediate;
    // For very negative gates exp(-g) overflows to inf and g / inf = -0, the correct limit; no special case.
    for (int64_t i = 0; i < intermediate; ++i) o[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
}

int SetBlasThreads(int num_threads) {
#ifdef WAVEEP_HAVE_OPENBLAS
  const int previous = openblas_get_num_threads();
  // OpenBLAS treats counts < 1 as "use the default"; we keep the current setting instead, which is less surprising.
  if (num_threads >= 1) openblas_set_num_threads(num_threads);
  return previous;
#else
  return -1;
#endif
}

std::string BlasInfo() {
#ifdef WAVEEP_HAVE_OPENBLAS
  // openblas_get_config() reads like "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"; the core
  // name matters most for performance numbers, so make sure it is present even in non-DYNAMIC_ARCH builds.
  std::string info = openblas_get_config();
  const std::string core = openblas_get_corename();
  if (!core.empty() && info.find(core) == std::string::npos) absl::StrAppend(&info, " ", core);
  return info;
#else
  return "BLAS (not OpenBLAS; vendor unknown)";
#endif
}

std::string BlasCoreName() {
#ifdef WAVEEP_HAVE_OPENBLAS
  return openblas_get_corename();
#else
  return "";
#endif
}

}  // namespace waveep::kernels
