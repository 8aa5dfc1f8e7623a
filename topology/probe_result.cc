// Copyright 2026 The waveep Authors.
//
// Reading a probe's all-to-all record: how the comm backend compares with MPI_Alltoallv at one size, and the time of
// one exchange at any size, interpolated along the measured curve.
#include <algorithm>

#include "topology/topology.h"

namespace waveep::topology {

namespace {
// The statistic the verdict compares: the median round where measured, the mean otherwise.
double CommUs(const AlltoallPoint& p) { return p.comm_median_us > 0 ? p.comm_median_us : p.comm_avg_us; }
double MpiUs(const AlltoallPoint& p) { return p.mpi_median_us > 0 ? p.mpi_median_us : p.mpi_avg_us; }
}  // namespace

double AlltoallPoint::MpiOverComm() const {
  const double comm = CommUs(*this), mpi = MpiUs(*this);
  return mpi > 0 && comm > 0 ? mpi / comm : 0.0;
}

AlltoallPoint::VersusMpi AlltoallPoint::CompareWithMpi() const {
  const double comm = CommUs(*this), mpi = MpiUs(*this);
  if (mpi <= 0 || comm <= 0) return VersusMpi::kNotCompared;
  if (comm <= mpi) return VersusMpi::kFaster;
  if (comm <= mpi * (1 + std::max(comm_spread, mpi_spread))) return VersusMpi::kWithinNoise;
  return VersusMpi::kSlower;
}

double AlltoallCurve::ExchangeUs(double block_bytes) const {
  WAVEEP_CHECK(!points.empty()) << "AlltoallCurve without points";
  auto t = [](const AlltoallPoint& p) { return p.async_avg_us > 0 ? p.async_avg_us : p.comm_avg_us; };
  if (points.size() == 1 || block_bytes <= static_cast<double>(points.front().bytes)) {
    if (points.size() == 1 && block_bytes > static_cast<double>(points.front().bytes))
      return t(points.front()) * block_bytes / static_cast<double>(points.front().bytes);
    return t(points.front());
  }
  size_t i = 1;
  while (i + 1 < points.size() && static_cast<double>(points[i].bytes) < block_bytes) ++i;
  const AlltoallPoint& a = points[i - 1];
  const AlltoallPoint& b = points[i];
  const double slope = (t(b) - t(a)) / static_cast<double>(b.bytes - a.bytes);
  // NOTES: noisy sweeps can make the slope negative between two points; never predict faster than the smaller one.
  return std::max(std::min(t(a), t(b)), t(a) + std::max(0.0, slope) * (block_bytes - static_cast<double>(a.bytes)));
}

}  // namespace waveep::topology
