// Copyright 2026 The waveep Authors.
//
// Cluster descriptions: JSON schema (docs/topology.md), template expansion into a graph, validation, routing and the
// expert traffic each link carries.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <queue>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {
namespace {

// The graph is expanded per device and routed from every device: keep it to a size that expands in seconds.
constexpr int64_t kMaxDevices = 65536;

using Json = nlohmann::ordered_json;

constexpr const char* kSchema = "waveep.cluster/1";

struct KindName {
  LinkKind kind;
  const char* name;
};
constexpr KindName kKindNames[] = {
    {LinkKind::kNvlink, "nvlink"}, {LinkKind::kPcie, "pcie"}, {LinkKind::kRdma, "rdma"},        {LinkKind::kNet, "net"},
    {LinkKind::kXbus, "xbus"},     {LinkKind::kShm, "shm"},   {LinkKind::kLoopback, "loopback"}};

// ---- JSON reading with field paths in every error -----------------------------------------------------------------

// One JSON object being read. Records which keys were read so that leftovers (typos) can be reported.
// NOTES: every accessor checks the type before get<>(), so nlohmann never throws out of here.
class Obj {
 public:
  Obj(const Json& j, std::string path, std::string origin)
      : j_(j), path_(std::move(path)), origin_(std::move(origin)) {}

  Status Error(absl::string_view key, absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat("cluster ", origin_, ": ", Path(key), " ", why));
  }
  std::string Path(absl::string_view key) const {
    return path_.empty() ? std::string(key) : absl::StrCat(path_, ".", key);
  }
  const std::string& origin() const { return origin_; }

  const Json* Find(const char* key) {
    seen_.insert(key);
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  Status String(const char* key, bool required, std::string* out) {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "is missing") : absl::OkStatus();
    if (!v->is_string()) return Error(key, absl::StrCat("must be a string, got ", v->dump()));
    *out = v->get<std::string>();
    return absl::OkStatus();
  }
  Status Number(const char* key, bool required, double* out) {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "is missing") : absl::OkStatus();
    if (!v->is_number()) return Error(key, absl::StrCat("must be a number, got ", v->dump()));
    *out = v->get<double>();
    if (!std::isfinite(*out)) return Error(key, "must be finite");
    return absl::OkStatus();
  }
  Status Int(const char* key, bool required, int* out) {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "is missing") : absl::OkStatus();
    if (!v->is_number_integer()) return Error(key, absl::StrCat("must be an integer, got ", v->dump()));
    const int64_t x = v->get<int64_t>();
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
      return Error(key, absl::StrCat("is out of range: ", x));
    *out = static_cast<int>(x);
    return absl::OkStatus();
  }
  Status Int64(const char* key, bool required, int64_t* out) {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "is missing") : absl::OkStatus();
    if (!v->is_number_integer()) return Error(key, absl::StrCat("must be an integer, got ", v->dump()));
    *out = v->get<int64_t>();
    return absl::OkStatus();
  }
  Status Bool(const char* key, bool* out) {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return Error(key, absl::StrCat("must be true or false, got ", v->dump()));
    *out = v->get<bool>();
    return absl::OkStatus();
  }
  Status Strings(const char* key, std::vector<std::string>* out) {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (v->is_string()) {
      out->push_back(v->get<std::string>());
      return absl::OkStatus();
    }
    if (!v->is_array()) return Error(key, "must be a string or an array of strings");
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) return Error(absl::StrCat(key, "[", i, "]"), "must be a string");
      out->push_back((*v)[i].get<std::string>());
    }
    return absl::OkStatus();
  }
  Status Numbers(const char* key, std::vector<double>* out) {
    const Json* v = Find(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_array()) return Error(key, "must be an array of numbers");
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_number()) return Error(absl::StrCat(key, "[", i, "]"), "must be a number");
      out->push_back((*v)[i].get<double>());
    }
    return absl::OkStatus();
  }
  // Fails on the first key that was never read ("comment"/"_comment"/keys starting with '_' are free text).
  Status NoUnknownKeys() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      const std::string& k = it.key();
      if (seen_.count(k) > 0 || k == "comment" || absl::StartsWith(k, "_")) continue;
      return Error(k, absl::StrCat("is not a known field (known: ", absl::StrJoin(seen_, ", "), ")"));
    }
    return absl::OkStatus();
  }

 private:
  const Json& j_;
  std::string path_;
  std::string origin_;
  std::set<std::string> seen_;
};

Status RequireObject(const Json* v, const Obj& parent, const char* key) {
  if (v != nullptr && !v->is_object()) return parent.Error(key, "must be an object");
  return absl::OkStatus();
}

// Normalises a dtype key of compute_tflops/gemm_dtype ("fp32" -> "f32").
StatusOr<std::string> NormaliseDtype(absl::string_view name) {
  WAVEEP_ASSIGN_OR_RETURN(DType t, ParseDType(name));
  if (t != DType::kF32 && t != DType::kBF16 && t != DType::kFP8E4M3 && t != DType::kF16)
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not a compute dtype (fp8, bf16, f16, f32)"));
  return std::string(DTypeName(t));
}

Status ParseCurve(Obj& dev, GemmEfficiencyCurve* curve) {
  const Json* v = dev.Find("gemm_efficiency");
  if (v == nullptr) return absl::OkStatus();
  WAVEEP_RETURN_IF_ERROR(RequireObject(v, dev, "gemm_efficiency"));
  Obj c(*v, dev.Path("gemm_efficiency"), dev.origin());
  WAVEEP_RETURN_IF_ERROR(c.Numbers("rows", &curve->rows));
  WAVEEP_RETURN_IF_ERROR(c.Numbers("efficiency", &curve->efficiency));
  std::string basis = "rows_per_expert";
  WAVEEP_RETURN_IF_ERROR(c.String("basis", false, &basis));
  if (basis != "rows_per_expert")
    return c.Error("basis", absl::StrCat("must be \"rows_per_expert\", got \"", basis, "\""));
  return c.NoUnknownKeys();
}

Status ParseDevice(Obj& root, DeviceSpec* d) {
  const Json* v = root.Find("device");
  if (v == nullptr) return root.Error("device", "is missing");
  WAVEEP_RETURN_IF_ERROR(RequireObject(v, root, "device"));
  Obj o(*v, "device", root.origin());
  WAVEEP_RETURN_IF_ERROR(o.String("model", false, &d->model));
  WAVEEP_RETURN_IF_ERROR(o.String("kind", false, &d->kind));
  const Json* rates = o.Find("compute_tflops");
  if (rates == nullptr) {
    return o.Error("compute_tflops",
                   "is missing: give the dense peak TFLOP/s per device for at least one dtype, e.g. "
                   "{\"fp8\": 1979, \"bf16\": 989}");
  }
  if (!rates->is_object()) return o.Error("compute_tflops", "must be an object {dtype: TFLOP/s}");
  for (auto it = rates->begin(); it != rates->end(); ++it) {
    const std::string path = absl::StrCat("compute_tflops.", it.key());
    auto name = NormaliseDtype(it.key());
    if (!name.ok()) return o.Error(path, std::string(name.status().message()));
    if (!it->is_number()) return o.Error(path, absl::StrCat("must be a number, got ", it->dump()));
    d->compute_tflops[*name] = it->get<double>();
  }
  std::string gemm_dtype;
  WAVEEP_RETURN_IF_ERROR(o.String("gemm_dtype", false, &gemm_dtype));
  if (!gemm_dtype.empty()) {
    auto name = NormaliseDtype(gemm_dtype);
    if (!name.ok()) return o.Error("gemm_dtype", std::string(name.status().message()));
    d->gemm_dtype = *name;
  }
  WAVEEP_RETURN_IF_ERROR(o.Number("max_gemm_efficiency", false, &d->max_gemm_efficiency));
  WAVEEP_RETURN_IF_ERROR(o.Number("memory_bw_gbps", true, &d->memory_bw_gbps));
  WAVEEP_RETURN_IF_ERROR(o.Number("memory_gib", false, &d->memory_gib));
  WAVEEP_RETURN_IF_ERROR(o.Int("sm_count", false, &d->sm_count));
  WAVEEP_RETURN_IF_ERROR(o.Int("cores", false, &d->cores));
  WAVEEP_RETURN_IF_ERROR(o.Number("overlap_compute_speed", false, &d->overlap_compute_speed));
  WAVEEP_RETURN_IF_ERROR(o.Number("overlap_comm_speed", false, &d->overlap_comm_speed));
  WAVEEP_RETURN_IF_ERROR(o.Number("op_overhead_us", false, &d->op_overhead_us));
  WAVEEP_RETURN_IF_ERROR(ParseCurve(o, &d->gemm_efficiency));
  if (const Json* cv = o.Find("convert_gbps"); cv != nullptr) {
    if (!cv->is_object()) return o.Error("convert_gbps", "must be an object");
    static const std::set<std::string> kKeys = {"to_bf16", "from_bf16", "to_fp8", "from_fp8"};
    for (auto it = cv->begin(); it != cv->end(); ++it) {
      const std::string path = absl::StrCat("convert_gbps.", it.key());
      if (kKeys.count(it.key()) == 0) return o.Error(path, "is not one of to_bf16, from_bf16, to_fp8, from_fp8");
      if (!it->is_number()) return o.Error(path, "must be a number");
      d->convert_gbps[it.key()] = it->get<double>();
    }
  }
  return o.NoUnknownKeys();
}

// `template_fields`: a link template (kind, sharing, endpoints); otherwise the loopback, which has only a bandwidth
// and a latency (anything else in it is an unknown field, not silently ignored).
Status ParseLinkFields(Obj& o, LinkSpec* l, bool template_fields) {
  WAVEEP_RETURN_IF_ERROR(o.Number("bw_gbps", true, &l->bw_gbps));
  WAVEEP_RETURN_IF_ERROR(o.Number("latency_us", false, &l->latency_us));
  if (template_fields) {
    std::string kind;
    WAVEEP_RETURN_IF_ERROR(o.String("kind", true, &kind));
    auto k = ParseLinkKind(kind);
    if (!k.ok()) return o.Error("kind", std::string(k.status().message()));
    l->kind = *k;
    WAVEEP_RETURN_IF_ERROR(o.Bool("duplex", &l->duplex));
    WAVEEP_RETURN_IF_ERROR(o.Number("oversubscription", false, &l->oversubscription));
    WAVEEP_RETURN_IF_ERROR(o.String("name", true, &l->name));
    WAVEEP_RETURN_IF_ERROR(o.String("from", true, &l->from));
    WAVEEP_RETURN_IF_ERROR(o.String("to", true, &l->to));
    WAVEEP_RETURN_IF_ERROR(o.Int("count", false, &l->count));
    if (const Json* nb = o.Find("node_bw_gbps"); nb != nullptr) {
      if (!nb->is_object()) return o.Error("node_bw_gbps", "must be an object {\"node index\": GB/s}");
      for (auto it = nb->begin(); it != nb->end(); ++it) {
        const std::string path = absl::StrCat("node_bw_gbps.", it.key());
        int node = -1;
        if (!absl::SimpleAtoi(it.key(), &node) || node < 0 || node >= kMaxDevices)
          return o.Error(path, absl::StrCat("key must be a node index in [0, ", kMaxDevices, ")"));
        if (!it->is_number() || !std::isfinite(it->get<double>()))
          return o.Error(path, "must be a finite number of GB/s");
        l->node_bw_gbps[node] = it->get<double>();
      }
    }
  }
  return o.NoUnknownKeys();
}

// The probe section is a record, not a template: it is parsed back so that `topo model` can use the measured
// all-to-all curve of a probed file, and so that a probed file round-trips.
Status ParseProbe(Obj& root, Cluster* c) {
  bool probed = false;
  WAVEEP_RETURN_IF_ERROR(root.Bool("probed", &probed));
  const Json* v = root.Find("probe");
  if (!probed) {
    if (v != nullptr) return root.Error("probe", "is only allowed with \"probed\": true");
    return absl::OkStatus();
  }
  ProbeInfo p;
  if (v != nullptr) {
    WAVEEP_RETURN_IF_ERROR(RequireObject(v, root, "probe"));
    Obj o(*v, "probe", root.origin());
    WAVEEP_RETURN_IF_ERROR(o.String("date", false, &p.date));
    WAVEEP_RETURN_IF_ERROR(o.String("hostnames", false, &p.hostnames));
    WAVEEP_RETURN_IF_ERROR(o.String("backend", false, &p.backend));
    WAVEEP_RETURN_IF_ERROR(o.Int("ranks", false, &p.ranks));
    WAVEEP_RETURN_IF_ERROR(o.String("model", false, &p.model));
    WAVEEP_RETURN_IF_ERROR(o.Int("blas_threads", false, &p.blas_threads));
    WAVEEP_RETURN_IF_ERROR(o.Strings("notes", &p.notes));
    if (const Json* pairs = o.Find("pairs"); pairs != nullptr) {
      if (!pairs->is_array()) return o.Error("pairs", "must be an array");
      for (size_t i = 0; i < pairs->size(); ++i) {
        const std::string path = absl::StrCat("probe.pairs[", i, "]");
        if (!(*pairs)[i].is_object()) return o.Error(absl::StrCat("pairs[", i, "]"), "must be an object");
        Obj po((*pairs)[i], path, root.origin());
        PairMeasurement m;
        WAVEEP_RETURN_IF_ERROR(po.Int("a", true, &m.a));
        WAVEEP_RETURN_IF_ERROR(po.Int("b", true, &m.b));
        WAVEEP_RETURN_IF_ERROR(po.String("kind", false, &m.kind));
        WAVEEP_RETURN_IF_ERROR(po.Number("latency_us", false, &m.latency_us));
        WAVEEP_RETURN_IF_ERROR(po.Number("uni_gbps", false, &m.uni_gbps));
        WAVEEP_RETURN_IF_ERROR(po.Number("bidir_gbps", false, &m.bidir_gbps));
        WAVEEP_RETURN_IF_ERROR(po.NoUnknownKeys());
        p.pairs.push_back(m);
      }
    }
    if (const Json* a = o.Find("alltoall"); a != nullptr) {
      WAVEEP_RETURN_IF_ERROR(RequireObject(a, o, "alltoall"));
      Obj ao(*a, "probe.alltoall", root.origin());
      AlltoallCurve curve;
      WAVEEP_RETURN_IF_ERROR(ao.Int("ranks", true, &curve.ranks));
      WAVEEP_RETURN_IF_ERROR(ao.String("backend", false, &curve.backend));
      const Json* pts = ao.Find("points");
      if (pts == nullptr || !pts->is_array() || pts->empty())
        return ao.Error("points", "must be a non-empty array of {bytes, comm_avg_us, ...}");
      for (size_t i = 0; i < pts->size(); ++i) {
        if (!(*pts)[i].is_object()) return ao.Error(absl::StrCat("points[", i, "]"), "must be an object");
        Obj q((*pts)[i], absl::StrCat("probe.alltoall.points[", i, "]"), root.origin());
        AlltoallPoint pt;
        WAVEEP_RETURN_IF_ERROR(q.Int64("bytes", true, &pt.bytes));
        WAVEEP_RETURN_IF_ERROR(q.Number("comm_avg_us", true, &pt.comm_avg_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("comm_min_us", false, &pt.comm_min_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("comm_max_us", false, &pt.comm_max_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("async_avg_us", false, &pt.async_avg_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("mpi_avg_us", false, &pt.mpi_avg_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("mpi_min_us", false, &pt.mpi_min_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("mpi_max_us", false, &pt.mpi_max_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("comm_median_us", false, &pt.comm_median_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("mpi_median_us", false, &pt.mpi_median_us));
        WAVEEP_RETURN_IF_ERROR(q.Number("comm_spread", false, &pt.comm_spread));
        WAVEEP_RETURN_IF_ERROR(q.Number("mpi_spread", false, &pt.mpi_spread));
        // Derived columns written for readers (GB/s) are accepted and recomputed.
        double ignored = 0;
        WAVEEP_RETURN_IF_ERROR(q.Number("comm_busbw_gbps", false, &ignored));
        WAVEEP_RETURN_IF_ERROR(q.Number("mpi_busbw_gbps", false, &ignored));
        WAVEEP_RETURN_IF_ERROR(q.NoUnknownKeys());
        if (pt.bytes <= 0 || !(pt.comm_avg_us > 0)) return q.Error("bytes", "and comm_avg_us must be > 0");
        if (!curve.points.empty() && pt.bytes <= curve.points.back().bytes)
          return q.Error("bytes", "must increase from point to point");
        curve.points.push_back(pt);
      }
      WAVEEP_RETURN_IF_ERROR(ao.NoUnknownKeys());
      p.alltoall = std::move(curve);
    }
    WAVEEP_RETURN_IF_ERROR(o.NoUnknownKeys());
  }
  c->probe = std::move(p);
  return absl::OkStatus();
}

// ---- template expansion -------------------------------------------------------------------------------------------

// Substitutes "{d}", "{i}", "{d/2}", "{i%4}", "{d/2%2}" ... in `tmpl` with integer arithmetic.
StatusOr<std::string> Substitute(absl::string_view tmpl, int d, int i) {
  std::string out;
  size_t pos = 0;
  while (pos < tmpl.size()) {
    const size_t open = tmpl.find('{', pos);
    if (open == absl::string_view::npos) {
      absl::StrAppend(&out, tmpl.substr(pos));
      break;
    }
    absl::StrAppend(&out, tmpl.substr(pos, open - pos));
    const size_t close = tmpl.find('}', open);
    if (close == absl::string_view::npos)
      return absl::InvalidArgumentError(absl::StrCat("unclosed '{' in \"", tmpl, "\""));
    absl::string_view expr = tmpl.substr(open + 1, close - open - 1);
    if (expr.empty() || (expr[0] != 'd' && expr[0] != 'i'))
      return absl::InvalidArgumentError(absl::StrCat("\"{", expr, "}\" in \"", tmpl, "\" must start with d or i"));
    int64_t v = expr[0] == 'd' ? d : i;
    size_t k = 1;
    while (k < expr.size()) {
      const char op = expr[k++];
      size_t end = k;
      while (end < expr.size() && expr[end] >= '0' && expr[end] <= '9') ++end;
      int64_t n = 0;
      if (end == k || !absl::SimpleAtoi(expr.substr(k, end - k), &n) || n <= 0 || (op != '/' && op != '%'))
        return absl::InvalidArgumentError(
            absl::StrCat("\"{", expr, "}\" in \"", tmpl, "\": only /N and %N with N > 0 may follow d or i"));
      v = op == '/' ? v / n : v % n;
      k = end;
    }
    absl::StrAppend(&out, v);
    pos = close + 1;
  }
  return out;
}

// node < group < cluster: a link between two scopes repeats as often as the narrower one.
int ScopeRank(const SwitchSpec& s) { return s.scope == "node" ? 0 : s.scope == "group" ? 1 : 2; }

struct SwitchIndex {
  // instance name -> (switch spec index)
  std::map<std::string, int> spec_of;
  std::vector<std::string> names;  // all instance names, declaration order
};

SwitchIndex IndexSwitches(const Cluster& c) {
  SwitchIndex idx;
  for (size_t s = 0; s < c.switches.size(); ++s) {
    const SwitchSpec& sw = c.switches[s];
    if (sw.count > 0) {
      for (int i = 0; i < sw.count; ++i) {
        std::string n = absl::StrCat(sw.name, i);
        idx.spec_of.emplace(n, static_cast<int>(s));
        idx.names.push_back(n);
      }
    } else {
      idx.spec_of.emplace(sw.name, static_cast<int>(s));
      idx.names.push_back(sw.name);
    }
  }
  return idx;
}

std::string VertexName(const SwitchSpec& sw, const std::string& inst, int node) {
  if (sw.scope == "node") return absl::StrCat("n", node, ".", inst);
  if (sw.scope == "group") return absl::StrCat("g", node / sw.group_nodes, ".", inst);
  return inst;
}

Status ValidateTemplates(const Cluster& c) {
  const std::string o = c.origin.empty() ? c.name : c.origin;
  auto err = [&](absl::string_view field, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("cluster ", o, ": ", field, " ", why));
  };
  if (c.name.empty()) return err("name", "is missing or empty");
  if (c.num_nodes < 1) return err("nodes", absl::StrCat("must be >= 1, got ", c.num_nodes));
  if (c.devices_per_node < 1) return err("devices_per_node", absl::StrCat("must be >= 1, got ", c.devices_per_node));
  if (int64_t{c.num_nodes} * c.devices_per_node > kMaxDevices)
    return err("nodes", absl::StrCat("x devices_per_node = ", int64_t{c.num_nodes} * c.devices_per_node,
                                     " devices, more than the ", kMaxDevices, " supported"));
  const DeviceSpec& d = c.device;
  if (d.kind != "gpu" && d.kind != "cpu")
    return err("device.kind", absl::StrCat("must be gpu or cpu, got \"", d.kind, "\""));
  if (d.compute_tflops.empty())
    return err("device.compute_tflops", "is missing or empty: give the dense peak TFLOP/s for at least one dtype");
  for (const auto& [k, v] : d.compute_tflops) {
    if (!(v > 0)) return err(absl::StrCat("device.compute_tflops.", k), absl::StrCat("must be > 0, got ", v));
  }
  if (!d.gemm_dtype.empty() && d.compute_tflops.count(d.gemm_dtype) == 0)
    return err("device.gemm_dtype",
               absl::StrCat("is \"", d.gemm_dtype, "\" but device.compute_tflops has no rate for it"));
  if (!(d.memory_bw_gbps > 0)) return err("device.memory_bw_gbps", absl::StrCat("must be > 0, got ", d.memory_bw_gbps));
  if (d.memory_gib < 0) return err("device.memory_gib", "must be >= 0");
  if (!(d.max_gemm_efficiency > 0 && d.max_gemm_efficiency <= 1))
    return err("device.max_gemm_efficiency", absl::StrCat("must be in (0, 1], got ", d.max_gemm_efficiency));
  if (d.sm_count < 0) return err("device.sm_count", "must be >= 0");
  if (d.cores < 0) return err("device.cores", "must be >= 0");
  for (auto [name, v] : {std::pair<const char*, double>{"overlap_compute_speed", d.overlap_compute_speed},
                         std::pair<const char*, double>{"overlap_comm_speed", d.overlap_comm_speed}}) {
    if (!(v >= 0 && v <= 1))
      return err(absl::StrCat("device.", name), absl::StrCat("must be in (0, 1] (0 = not measured), got ", v));
  }
  if ((d.overlap_compute_speed > 0) != (d.overlap_comm_speed > 0)) {
    return err("device.overlap_compute_speed", "and device.overlap_comm_speed come together: set both or neither");
  }
  if (d.op_overhead_us < 0) return err("device.op_overhead_us", "must be >= 0");
  for (const auto& [k, v] : d.convert_gbps) {
    if (!(v > 0)) return err(absl::StrCat("device.convert_gbps.", k), absl::StrCat("must be > 0, got ", v));
  }
  const GemmEfficiencyCurve& cv = d.gemm_efficiency;
  if (cv.rows.size() != cv.efficiency.size())
    return err("device.gemm_efficiency",
               absl::StrCat("has ", cv.rows.size(), " rows but ", cv.efficiency.size(), " efficiency values"));
  for (size_t i = 0; i < cv.rows.size(); ++i) {
    if (!(cv.rows[i] > 0) || (i > 0 && !(cv.rows[i] > cv.rows[i - 1])))
      return err(absl::StrCat("device.gemm_efficiency.rows[", i, "]"), "must be > 0 and increasing");
    if (!(cv.efficiency[i] > 0 && cv.efficiency[i] <= 1))
      return err(absl::StrCat("device.gemm_efficiency.efficiency[", i, "]"),
                 absl::StrCat("must be in (0, 1], got ", cv.efficiency[i]));
  }

  std::set<std::string> seen;
  for (size_t s = 0; s < c.switches.size(); ++s) {
    const SwitchSpec& sw = c.switches[s];
    const std::string f = absl::StrCat("switches[", s, "]");
    if (sw.name.empty() || sw.name == "device" || absl::StrContains(sw.name, "{") || absl::StrContains(sw.name, "."))
      return err(absl::StrCat(f, ".name"), absl::StrCat("\"", sw.name, "\" is empty, reserved or has '{' or '.'"));
    if (sw.count < 0 || sw.count > kMaxDevices)
      return err(absl::StrCat(f, ".count"), absl::StrCat("must be in [0, ", kMaxDevices, "], got ", sw.count));
    if (sw.scope != "node" && sw.scope != "group" && sw.scope != "cluster")
      return err(absl::StrCat(f, ".scope"), absl::StrCat("must be node, group or cluster, got \"", sw.scope, "\""));
    if (sw.scope == "group" && (sw.group_nodes < 1 || c.num_nodes % sw.group_nodes != 0))
      return err(absl::StrCat(f, ".group_nodes"),
                 absl::StrCat("must be >= 1 and divide the ", c.num_nodes, " nodes, got ", sw.group_nodes));
    const std::vector<std::string> names =
        sw.count > 0 ? [&] {
          std::vector<std::string> v;
          for (int i = 0; i < sw.count; ++i) v.push_back(absl::StrCat(sw.name, i));
          return v;
        }()
                     : std::vector<std::string>{sw.name};
    for (const std::string& n : names) {
      if (!seen.insert(n).second) return err(absl::StrCat(f, ".name"), absl::StrCat("duplicates switch \"", n, "\""));
    }
  }
  std::set<std::string> link_names;
  for (size_t i = 0; i < c.link_specs.size(); ++i) {
    const LinkSpec& l = c.link_specs[i];
    const std::string f = absl::StrCat("links[", i, "] (\"", l.name, "\")");
    if (l.name.empty()) return err(absl::StrCat("links[", i, "].name"), "is missing or empty");
    if (l.kind == LinkKind::kLoopback)
      return err(absl::StrCat(f, ".kind"), "loopback links are implicit; describe them in the top-level \"loopback\"");
    if (!(l.bw_gbps > 0)) return err(absl::StrCat(f, ".bw_gbps"), absl::StrCat("must be > 0 GB/s, got ", l.bw_gbps));
    for (const auto& [node, bw] : l.node_bw_gbps) {
      const std::string key = absl::StrCat(f, ".node_bw_gbps.", node);
      if (node < 0 || node >= c.num_nodes)
        return err(key, absl::StrCat("names node ", node, " but the cluster has ", c.num_nodes, " node(s)"));
      if (!(bw > 0)) return err(key, absl::StrCat("must be > 0 GB/s, got ", bw));
    }
    if (l.latency_us < 0) return err(absl::StrCat(f, ".latency_us"), absl::StrCat("must be >= 0, got ", l.latency_us));
    if (!(l.oversubscription >= 1))
      return err(absl::StrCat(f, ".oversubscription"), absl::StrCat("must be >= 1, got ", l.oversubscription));
    if (l.count < 1 || l.count > kMaxDevices)
      return err(absl::StrCat(f, ".count"), absl::StrCat("must be in [1, ", kMaxDevices, "], got ", l.count));
    if (l.from == "device" && l.to == "device")
      return err(f,
                 "connects device to device: put a switch between them (\"from\": \"device\", \"to\": \"nvswitch\")");
    if (l.from.empty() || l.to.empty()) return err(f, "needs both \"from\" and \"to\"");
  }
  if (c.loopback.has_value()) {
    if (!(c.loopback->bw_gbps > 0))
      return err("loopback.bw_gbps", absl::StrCat("must be > 0 GB/s, got ", c.loopback->bw_gbps));
    if (c.loopback->latency_us < 0) return err("loopback.latency_us", "must be >= 0");
  }
  return absl::OkStatus();
}

}  // namespace

// ---- small public helpers -----------------------------------------------------------------------------------------

absl::string_view LinkKindName(LinkKind k) {
  for (const KindName& kn : kKindNames) {
    if (kn.kind == k) return kn.name;
  }
  return "?";
}

StatusOr<LinkKind> ParseLinkKind(absl::string_view name) {
  if (name == "nic") return LinkKind::kRdma;
  std::vector<std::string> names;
  for (const KindName& kn : kKindNames) {
    if (name == kn.name) return kn.kind;
    names.emplace_back(kn.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown link kind \"", name, "\" (known: ", absl::StrJoin(names, ", "), ", nic)"));
}

double GemmEfficiencyCurve::At(double m) const {
  WAVEEP_CHECK(!rows.empty()) << "GemmEfficiencyCurve::At on an empty curve";
  const double x = std::max(m, 1.0);
  if (x <= rows.front()) return efficiency.front();
  if (x >= rows.back()) return efficiency.back();
  size_t i = 1;
  while (rows[i] < x) ++i;
  const double l0 = std::log2(rows[i - 1]), l1 = std::log2(rows[i]);
  const double t = (std::log2(x) - l0) / (l1 - l0);
  return efficiency[i - 1] + t * (efficiency[i] - efficiency[i - 1]);
}

StatusOr<double> DeviceSpec::PeakTflops(absl::string_view dtype_name) const {
  auto it = compute_tflops.find(std::string(dtype_name));
  if (it != compute_tflops.end()) return it->second;
  std::vector<std::string> have;
  for (const auto& [k, v] : compute_tflops) have.push_back(absl::StrCat(k, "=", v));
  return absl::InvalidArgumentError(absl::StrCat("device \"", model, "\" has no compute rate for ", dtype_name,
                                                 " (device.compute_tflops has ", absl::StrJoin(have, ", "),
                                                 "); add it or pick another --dtype"));
}

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

double LinkTraffic::Share(double dispatch_bytes, double combine_bytes, bool duplex) const {
  const double fwd = dispatch_fwd * dispatch_bytes + combine_fwd * combine_bytes;
  const double rev = dispatch_rev * dispatch_bytes + combine_rev * combine_bytes;
  const double per_pair = dispatch_bytes + combine_bytes;
  return (duplex ? std::max(fwd, rev) : fwd + rev) / per_pair;
}

std::string LinkLabel(const Cluster& cluster, const Link& link) {
  if (link.a == link.b) return absl::StrCat(cluster.vertices[link.a].name, " (self)");
  return absl::StrCat(cluster.vertices[link.a].name, " -> ", cluster.vertices[link.b].name);
}

// ---- expansion ----------------------------------------------------------------------------------------------------

Status ValidateCluster(const Cluster& cluster) {
  WAVEEP_RETURN_IF_ERROR(ValidateTemplates(cluster));
  if (cluster.vertices.empty()) return absl::OkStatus();  // not expanded: templates only
  // Every device reaches every other: one tree from device 0, and (directed graph is symmetric) that suffices.
  internal::RouteTree tree = internal::ShortestPaths(cluster, 0);
  for (int d = 1; d < cluster.num_devices(); ++d) {
    if (tree.via_link[d] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster ", cluster.origin.empty() ? cluster.name : cluster.origin, ": device ",
                       cluster.vertices[d].name, " cannot be reached from ", cluster.vertices[0].name,
                       ": no path of links between them (add a link from \"device\" to a switch both reach)"));
    }
  }
  return absl::OkStatus();
}

Status ExpandCluster(Cluster* c) {
  c->vertices.clear();
  c->links.clear();
  WAVEEP_RETURN_IF_ERROR(ValidateTemplates(*c));
  const std::string o = c->origin.empty() ? c->name : c->origin;
  const int nodes = c->num_nodes, dpn = c->devices_per_node;
  for (int n = 0; n < nodes; ++n) {
    for (int d = 0; d < dpn; ++d) c->vertices.push_back(Vertex{absl::StrCat("n", n, ".d", d), n * dpn + d, n});
  }
  const SwitchIndex idx = IndexSwitches(*c);
  std::map<std::string, int> vertex_of;  // vertex name -> index
  auto vertex = [&](const std::string& inst, int node) -> int {
    const SwitchSpec& sw = c->switches[idx.spec_of.at(inst)];
    const std::string name = VertexName(sw, inst, node);
    auto it = vertex_of.find(name);
    if (it != vertex_of.end()) return it->second;
    const int v = static_cast<int>(c->vertices.size());
    c->vertices.push_back(Vertex{name, -1, sw.scope == "node" ? node : -1});
    vertex_of.emplace(name, v);
    return v;
  };
  // Devices come first so that vertex index == global device index (routing and traffic rely on it).
  // Create switch vertices in a stable order (declaration order, then node) so names and indices are predictable.
  for (const std::string& inst : idx.names) {
    const SwitchSpec& sw = c->switches[idx.spec_of.at(inst)];
    const int step = sw.scope == "node" ? 1 : sw.scope == "group" ? sw.group_nodes : nodes;
    for (int n = 0; n < nodes; n += step) vertex(inst, n);
  }

  for (size_t li = 0; li < c->link_specs.size(); ++li) {
    const LinkSpec& l = c->link_specs[li];
    const std::string f = absl::StrCat("links[", li, "] (\"", l.name, "\")");
    auto resolve = [&](const std::string& tmpl, const char* end, int d, int i) -> StatusOr<std::string> {
      auto name = Substitute(tmpl, d, i);
      if (!name.ok())
        return absl::InvalidArgumentError(
            absl::StrCat("cluster ", o, ": ", f, ".", end, ": ", name.status().message()));
      if (idx.spec_of.count(*name) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("cluster ", o, ": ", f, ".", end, " = \"", tmpl, "\"",
                         *name == tmpl ? "" : absl::StrCat(" -> \"", *name, "\""), ": no switch named \"", *name,
                         "\" (switches: ", absl::StrJoin(idx.names, ", "), "; or \"device\")"));
      }
      return name;
    };
    auto add = [&](int a, int b, int node) {
      c->links.push_back(Link{l.name, l.kind, a, b, node >= 0 ? l.BwOnNode(node) : l.bw_gbps, l.latency_us, l.duplex,
                              l.oversubscription});
    };
    const bool dev_from = l.from == "device", dev_to = l.to == "device";
    if (dev_from || dev_to) {
      const std::string& other = dev_from ? l.to : l.from;
      for (int n = 0; n < nodes; ++n) {
        for (int d = 0; d < dpn; ++d) {
          WAVEEP_ASSIGN_OR_RETURN(std::string inst, resolve(other, dev_from ? "to" : "from", d, d));
          const int sv = vertex(inst, n), dv = n * dpn + d;
          dev_from ? add(dv, sv, n) : add(sv, dv, n);
        }
      }
      continue;
    }
    // Switch to switch: the narrowest scope of the two ends decides how often the link repeats.
    WAVEEP_ASSIGN_OR_RETURN(std::string from0, resolve(l.from, "from", 0, 0));
    WAVEEP_ASSIGN_OR_RETURN(std::string to0, resolve(l.to, "to", 0, 0));
    const SwitchSpec& sa = c->switches[idx.spec_of.at(from0)];
    const SwitchSpec& sb = c->switches[idx.spec_of.at(to0)];
    const SwitchSpec& narrow = ScopeRank(sa) <= ScopeRank(sb) ? sa : sb;
    if (sa.scope == "group" && sb.scope == "group" && sa.group_nodes != sb.group_nodes) {
      return absl::InvalidArgumentError(absl::StrCat("cluster ", o, ": ", f, " joins switches of groups of ",
                                                     sa.group_nodes, " and ", sb.group_nodes, " nodes"));
    }
    const int step = narrow.scope == "node" ? 1 : narrow.scope == "group" ? narrow.group_nodes : nodes;
    if (!l.node_bw_gbps.empty() && narrow.scope != "node") {
      return absl::InvalidArgumentError(absl::StrCat(
          "cluster ", o, ": ", f, ".node_bw_gbps: the link joins ", narrow.scope,
          "-scoped switches, so it has no per-node instances (per-node rates need a \"device\" end or a node-scoped "
          "switch)"));
    }
    for (int n = 0; n < nodes; n += step) {
      for (int i = 0; i < l.count; ++i) {
        WAVEEP_ASSIGN_OR_RETURN(std::string fa, resolve(l.from, "from", i, i));
        WAVEEP_ASSIGN_OR_RETURN(std::string fb, resolve(l.to, "to", i, i));
        if (fa == fb) {
          return absl::InvalidArgumentError(
              absl::StrCat("cluster ", o, ": ", f, " connects \"", fa, "\" to itself (instance ", i, ")"));
        }
        add(vertex(fa, n), vertex(fb, n), narrow.scope == "node" ? n : -1);
      }
    }
  }
  // Loopback: a rank's block to itself is one memcpy in device memory (read + write).
  LinkSpec lb;
  if (c->loopback.has_value()) {
    lb = *c->loopback;
  } else {
    lb.bw_gbps = c->device.memory_bw_gbps / 2;
    lb.latency_us = 0;
  }
  for (int dv = 0; dv < nodes * dpn; ++dv) {
    c->links.push_back(Link{"loopback", LinkKind::kLoopback, dv, dv, lb.bw_gbps, lb.latency_us, false, 1});
  }
  return ValidateCluster(*c);
}

// ---- parse / load / write -----------------------------------------------------------------------------------------

StatusOr<Cluster> ParseCluster(absl::string_view json_text, absl::string_view origin) {
  const std::string o(origin);
  WAVEEP_RETURN_IF_ERROR(CheckJsonNesting(json_text, absl::StrCat("cluster ", o)));
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    std::string detail = "malformed JSON";
    try {  // only to get the position for the message; nothing escapes
      Json unused = Json::parse(json_text.begin(), json_text.end());
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range (number overflow)
      detail = e.what();
    }
    return absl::InvalidArgumentError(absl::StrCat("cluster ", o, ": ", detail));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat("cluster ", o, ": top level must be an object"));
  Cluster c;
  c.origin = o;
  Obj root(j, "", o);
  std::string schema;
  WAVEEP_RETURN_IF_ERROR(root.String("schema", false, &schema));
  if (!schema.empty() && schema != kSchema)
    return root.Error("schema", absl::StrCat("is \"", schema, "\"; this waveep reads \"", kSchema, "\""));
  WAVEEP_RETURN_IF_ERROR(root.String("name", true, &c.name));
  WAVEEP_RETURN_IF_ERROR(root.String("description", false, &c.description));
  WAVEEP_RETURN_IF_ERROR(root.Strings("sources", &c.sources));
  WAVEEP_RETURN_IF_ERROR(root.Int("nodes", false, &c.num_nodes));
  WAVEEP_RETURN_IF_ERROR(root.Int("devices_per_node", true, &c.devices_per_node));
  WAVEEP_RETURN_IF_ERROR(ParseDevice(root, &c.device));
  if (const Json* sw = root.Find("switches"); sw != nullptr) {
    if (!sw->is_array()) return root.Error("switches", "must be an array");
    for (size_t i = 0; i < sw->size(); ++i) {
      const std::string key = absl::StrCat("switches[", i, "]");
      if ((*sw)[i].is_string()) {  // shorthand: "nvswitch" = one node-scoped switch
        c.switches.push_back(SwitchSpec{(*sw)[i].get<std::string>(), 0, "node", 0});
        continue;
      }
      if (!(*sw)[i].is_object()) return root.Error(key, "must be a name or an object");
      Obj so((*sw)[i], key, o);
      SwitchSpec s;
      WAVEEP_RETURN_IF_ERROR(so.String("name", true, &s.name));
      WAVEEP_RETURN_IF_ERROR(so.Int("count", false, &s.count));
      WAVEEP_RETURN_IF_ERROR(so.String("scope", false, &s.scope));
      WAVEEP_RETURN_IF_ERROR(so.Int("group_nodes", false, &s.group_nodes));
      WAVEEP_RETURN_IF_ERROR(so.NoUnknownKeys());
      c.switches.push_back(std::move(s));
    }
  }
  const Json* links = root.Find("links");
  if (links == nullptr || !links->is_array())
    return root.Error("links", "is missing or not an array (devices need at least one link to talk)");
  for (size_t i = 0; i < links->size(); ++i) {
    const std::string key = absl::StrCat("links[", i, "]");
    if (!(*links)[i].is_object()) return root.Error(key, "must be an object");
    Obj lo((*links)[i], key, o);
    LinkSpec l;
    WAVEEP_RETURN_IF_ERROR(ParseLinkFields(lo, &l, /*template_fields=*/true));
    c.link_specs.push_back(std::move(l));
  }
  if (const Json* lb = root.Find("loopback"); lb != nullptr) {
    WAVEEP_RETURN_IF_ERROR(RequireObject(lb, root, "loopback"));
    Obj lo(*lb, "loopback", o);
    LinkSpec l;
    l.name = "loopback";
    l.kind = LinkKind::kLoopback;
    l.duplex = false;
    WAVEEP_RETURN_IF_ERROR(ParseLinkFields(lo, &l, /*template_fields=*/false));
    c.loopback = l;
  }
  WAVEEP_RETURN_IF_ERROR(ParseProbe(root, &c));
  WAVEEP_RETURN_IF_ERROR(root.NoUnknownKeys());
  WAVEEP_RETURN_IF_ERROR(ExpandCluster(&c));
  return c;
}

std::vector<std::string> ListClusterPresets() { return ListPresets("clusters"); }

StatusOr<Cluster> LoadCluster(absl::string_view name_or_path) {
  if (name_or_path.empty())
    return absl::InvalidArgumentError("--cluster is empty: give a preset name, a JSON path, or use --probe");
  WAVEEP_ASSIGN_OR_RETURN(const std::string path, ResolvePreset("clusters", name_or_path, "cluster"));
  WAVEEP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseCluster(text, path);
}

// Templates make this a re-expansion: nothing in the graph is hand-written per node.
StatusOr<Cluster> WithNodes(const Cluster& cluster, int num_nodes) {
  if (num_nodes < 1) return absl::InvalidArgumentError(absl::StrCat("--nodes must be >= 1, got ", num_nodes));
  Cluster c = cluster;
  c.num_nodes = num_nodes;
  // Per-node rates of nodes that no longer exist go; the others stay with their nodes.
  for (LinkSpec& l : c.link_specs) l.node_bw_gbps.erase(l.node_bw_gbps.lower_bound(num_nodes), l.node_bw_gbps.end());
  // A probe's all-to-all curve describes the probed job only.
  if (c.probe.has_value() && num_nodes != cluster.num_nodes) c.probe->alltoall.reset();
  WAVEEP_RETURN_IF_ERROR(ExpandCluster(&c));
  return c;
}

std::string ClusterToJson(const Cluster& c) {
  Json j;
  j["schema"] = kSchema;
  j["name"] = c.name;
  if (!c.description.empty()) j["description"] = c.description;
  if (!c.sources.empty()) j["sources"] = c.sources;
  j["probed"] = c.probed();
  j["nodes"] = c.num_nodes;
  j["devices_per_node"] = c.devices_per_node;
  Json d;
  d["model"] = c.device.model;
  d["kind"] = c.device.kind;
  Json rates = Json::object();
  for (const auto& [k, v] : c.device.compute_tflops) rates[k] = v;
  d["compute_tflops"] = rates;
  if (!c.device.gemm_dtype.empty()) d["gemm_dtype"] = c.device.gemm_dtype;
  d["max_gemm_efficiency"] = c.device.max_gemm_efficiency;
  d["memory_bw_gbps"] = c.device.memory_bw_gbps;
  if (c.device.memory_gib > 0) d["memory_gib"] = c.device.memory_gib;
  if (c.device.sm_count > 0) d["sm_count"] = c.device.sm_count;
  if (c.device.cores > 0) d["cores"] = c.device.cores;
  if (c.device.overlap_compute_speed > 0) {
    d["overlap_compute_speed"] = c.device.overlap_compute_speed;
    d["overlap_comm_speed"] = c.device.overlap_comm_speed;
  }
  if (c.device.op_overhead_us > 0) d["op_overhead_us"] = c.device.op_overhead_us;
  if (!c.device.gemm_efficiency.empty()) {
    d["gemm_efficiency"] = Json{{"basis", "rows_per_expert"},
                                {"rows", c.device.gemm_efficiency.rows},
                                {"efficiency", c.device.gemm_efficiency.efficiency}};
  }
  if (!c.device.convert_gbps.empty()) {
    Json cv = Json::object();
    for (const auto& [k, v] : c.device.convert_gbps) cv[k] = v;
    d["convert_gbps"] = cv;
  }
  j["device"] = d;
  Json sws = Json::array();
  for (const SwitchSpec& s : c.switches) {
    Json sj;
    sj["name"] = s.name;
    if (s.count > 0) sj["count"] = s.count;
    sj["scope"] = s.scope;
    if (s.scope == "group") sj["group_nodes"] = s.group_nodes;
    sws.push_back(sj);
  }
  j["switches"] = sws;
  Json ls = Json::array();
  for (const LinkSpec& l : c.link_specs) {
    Json lj;
    lj["name"] = l.name;
    lj["kind"] = std::string(LinkKindName(l.kind));
    lj["from"] = l.from;
    lj["to"] = l.to;
    if (l.count != 1) lj["count"] = l.count;
    lj["bw_gbps"] = l.bw_gbps;
    lj["latency_us"] = l.latency_us;
    lj["duplex"] = l.duplex;
    if (l.oversubscription != 1) lj["oversubscription"] = l.oversubscription;
    if (!l.node_bw_gbps.empty()) {
      Json nb = Json::object();
      for (const auto& [node, bw] : l.node_bw_gbps) nb[std::to_string(node)] = bw;
      lj["node_bw_gbps"] = nb;
    }
    ls.push_back(lj);
  }
  j["links"] = ls;
  if (c.loopback.has_value()) {
    j["loopback"] = Json{{"bw_gbps", c.loopback->bw_gbps}, {"latency_us", c.loopback->latency_us}};
  }
  if (c.probe.has_value()) {
    const ProbeInfo& p = *c.probe;
    Json pj;
    pj["date"] = p.date;
    pj["hostnames"] = p.hostnames;
    pj["backend"] = p.backend;
    pj["ranks"] = p.ranks;
    pj["model"] = p.model;
    pj["blas_threads"] = p.blas_threads;
    pj["notes"] = p.notes;
    Json pairs = Json::array();
    for (const PairMeasurement& m : p.pairs) {
      pairs.push_back(Json{{"a", m.a},
                           {"b", m.b},
                           {"kind", m.kind},
                           {"latency_us", m.latency_us},
                           {"uni_gbps", m.uni_gbps},
                           {"bidir_gbps", m.bidir_gbps}});
    }
    pj["pairs"] = pairs;
    if (p.alltoall.has_value()) {
      const AlltoallCurve& a = *p.alltoall;
      Json pts = Json::array();
      for (const AlltoallPoint& q : a.points) {
        const double moved = static_cast<double>(q.bytes) * (a.ranks - 1);  // bytes each rank sends to others
        Json qj{{"bytes", q.bytes},
                {"comm_avg_us", q.comm_avg_us},
                {"comm_min_us", q.comm_min_us},
                {"comm_max_us", q.comm_max_us},
                {"async_avg_us", q.async_avg_us},
                {"mpi_avg_us", q.mpi_avg_us},
                {"mpi_min_us", q.mpi_min_us},
                {"mpi_max_us", q.mpi_max_us},
                {"comm_median_us", q.comm_median_us},
                {"mpi_median_us", q.mpi_median_us},
                {"comm_spread", q.comm_spread},
                {"mpi_spread", q.mpi_spread},
                {"comm_busbw_gbps", moved / (q.comm_avg_us * 1e3)}};
        if (q.mpi_avg_us > 0) qj["mpi_busbw_gbps"] = moved / (q.mpi_avg_us * 1e3);
        pts.push_back(qj);
      }
      pj["alltoall"] = Json{{"ranks", a.ranks}, {"backend", a.backend}, {"points", pts}};
    }
    j["probe"] = pj;
  }
  return j.dump(2) + "\n";
}

// ---- routing ------------------------------------------------------------------------------------------------------

namespace internal {

// Dijkstra on (cost, hops): cost 1/bandwidth prefers fat links (NVLink over the NIC inside a node, the direct
// PCIe switch over the socket link), hops break ties, and link order breaks the rest, so routes are deterministic.
RouteTree ShortestPaths(const Cluster& c, int src) {
  const int nv = static_cast<int>(c.vertices.size());
  // Adjacency: (link, neighbour) in link order so ties resolve to the lowest link index.
  std::vector<std::vector<std::pair<int, int>>> adj(nv);
  for (size_t li = 0; li < c.links.size(); ++li) {
    const Link& l = c.links[li];
    if (l.a == l.b) continue;
    adj[l.a].push_back({static_cast<int>(li), l.b});
    adj[l.b].push_back({static_cast<int>(li), l.a});
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  RouteTree t;
  t.via_link.assign(nv, -1);
  t.cost.assign(nv, kInf);
  std::vector<int> hops(nv, std::numeric_limits<int>::max());
  using Item = std::tuple<double, int, int>;  // cost, hops, vertex
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> pq;
  t.cost[src] = 0;
  hops[src] = 0;
  pq.push({0.0, 0, src});
  while (!pq.empty()) {
    auto [cost, h, v] = pq.top();
    pq.pop();
    if (cost > t.cost[v] || (cost == t.cost[v] && h > hops[v])) continue;
    // Devices are endpoints, never transit: only the source expands out of a device.
    if (v != src && c.vertices[v].device >= 0) continue;
    for (const auto& [li, u] : adj[v]) {
      const double nc = cost + 1.0 / c.links[li].effective_bw_gbps();
      const int nh = h + 1;
      if (nc < t.cost[u] - 1e-12 || (std::abs(nc - t.cost[u]) <= 1e-12 && nh < hops[u])) {
        t.cost[u] = nc;
        hops[u] = nh;
        t.via_link[u] = li;
        pq.push({nc, nh, u});
      }
    }
  }
  return t;
}

Route RouteFromTree(const Cluster& c, const RouteTree& tree, int src, int dst) {
  Route r;
  if (src == dst) {
    for (size_t li = 0; li < c.links.size(); ++li) {
      if (c.links[li].kind == LinkKind::kLoopback && c.links[li].a == src) {
        r.links.push_back(static_cast<int>(li));
        r.forward.push_back(true);
        r.latency_us = c.links[li].latency_us;
        break;
      }
    }
    return r;
  }
  int v = dst;
  while (v != src) {
    const int li = tree.via_link[v];
    if (li < 0) return Route{};
    const Link& l = c.links[li];
    const bool fwd = l.b == v;  // reached v by going a -> b
    r.links.push_back(li);
    r.forward.push_back(fwd);
    r.latency_us += l.latency_us;
    v = fwd ? l.a : l.b;
  }
  std::reverse(r.links.begin(), r.links.end());
  std::reverse(r.forward.begin(), r.forward.end());
  return r;
}

int RanksOnFirstNode(const Cluster& c, int num_ranks) { return std::min(num_ranks, c.devices_per_node); }

}  // namespace internal

StatusOr<Route> FindRoute(const Cluster& cluster, int src, int dst) {
  const int n = cluster.num_devices();
  if (src < 0 || src >= n || dst < 0 || dst >= n)
    return absl::OutOfRangeError(absl::StrCat("FindRoute: devices ", src, " -> ", dst, " outside [0, ", n, ")"));
  Route r = internal::RouteFromTree(cluster, internal::ShortestPaths(cluster, src), src, dst);
  if (r.links.empty())
    return absl::NotFoundError(
        absl::StrCat("no path from ", cluster.vertices[src].name, " to ", cluster.vertices[dst].name));
  return r;
}

StatusOr<std::vector<LinkTraffic>> ExpertTraffic(const Cluster& cluster, int num_ranks) {
  if (num_ranks < 1 || num_ranks > cluster.num_devices()) {
    return absl::InvalidArgumentError(absl::StrCat("EP group of ", num_ranks, " ranks does not fit cluster '",
                                                   cluster.name, "' with ", cluster.num_devices(),
                                                   " devices (use --nodes to add nodes)"));
  }
  std::vector<LinkTraffic> out(cluster.links.size());
  // Ranks whose dispatch rows cross each link, per direction.
  std::vector<std::set<int>> fwd_sources(cluster.links.size()), rev_sources(cluster.links.size());
  // Uniform routing with contiguous placement: 1/R of a rank's pairs go to each rank. One tree per source rank
  // (R Dijkstras, not R^2) keeps a 128-device tune fast.
  const double frac = 1.0 / num_ranks;
  std::vector<internal::RouteTree> trees;
  trees.reserve(num_ranks);
  for (int s = 0; s < num_ranks; ++s) trees.push_back(internal::ShortestPaths(cluster, s));
  for (int s = 0; s < num_ranks; ++s) {
    for (int d = 0; d < num_ranks; ++d) {
      const Route disp = internal::RouteFromTree(cluster, trees[s], s, d);
      const Route comb = internal::RouteFromTree(cluster, trees[d], d, s);
      if (disp.links.empty() || comb.links.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("cluster '", cluster.name, "': no path between ",
                                                       cluster.vertices[s].name, " and ", cluster.vertices[d].name));
      }
      for (size_t k = 0; k < disp.links.size(); ++k) {
        LinkTraffic& t = out[disp.links[k]];
        (disp.forward[k] ? t.dispatch_fwd : t.dispatch_rev) += frac;
        ++t.num_flows;
        (disp.forward[k] ? fwd_sources : rev_sources)[disp.links[k]].insert(s);
      }
      for (size_t k = 0; k < comb.links.size(); ++k) {
        LinkTraffic& t = out[comb.links[k]];
        (comb.forward[k] ? t.combine_fwd : t.combine_rev) += frac;
      }
    }
  }
  // The devices "behind" a link are the smaller of its two source sets: a GPU's own port has 1 (the other side is
  // every peer), a NIC shared by 4 GPUs has 4.
  for (size_t li = 0; li < out.size(); ++li) {
    const size_t f = fwd_sources[li].size(), r = rev_sources[li].size();
    out[li].num_devices = static_cast<int>(f == 0 ? r : r == 0 ? f : std::min(f, r));
  }
  return out;
}

}  // namespace waveep::topology
