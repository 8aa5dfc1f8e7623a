// Copyright 2026 The waveep Authors.
//
// The cluster JSON schema (docs/topology.md), both ways: reading a file or preset into a Cluster, with the field path
// in every error, and writing a Cluster back in the same schema.
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "topology/topology.h"
#include "topology/topology_internal.h"

namespace waveep::topology {
namespace {

using internal::kMaxDevices;

using Json = nlohmann::ordered_json;

constexpr const char* kSchema = "waveep.cluster/1";

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
    int64_t x = *out;
    WAVEEP_RETURN_IF_ERROR(Int64(key, required, &x, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()));
    *out = static_cast<int>(x);
    return absl::OkStatus();
  }
  Status Int64(const char* key, bool required, int64_t* out, int64_t lo = std::numeric_limits<int64_t>::min(),
               int64_t hi = std::numeric_limits<int64_t>::max()) {
    const Json* v = Find(key);
    if (v == nullptr) return required ? Error(key, "is missing") : absl::OkStatus();
    StatusOr<int64_t> x = JsonInteger(*v, lo, hi);
    if (!x.ok()) return Error(key, x.status().message());
    *out = *x;
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
        if (const Json* others = q.Find("others"); others != nullptr) {
          if (!others->is_array()) return q.Error("others", "must be an array of {backend, median_us, spread}");
          for (size_t k = 0; k < others->size(); ++k) {
            const std::string where = absl::StrCat("probe.alltoall.points[", i, "].others[", k, "]");
            if (!(*others)[k].is_object()) return q.Error(absl::StrCat("others[", k, "]"), "must be an object");
            Obj oo((*others)[k], where, root.origin());
            AlltoallPoint::Other other;
            WAVEEP_RETURN_IF_ERROR(oo.String("backend", true, &other.backend));
            WAVEEP_RETURN_IF_ERROR(oo.Number("median_us", true, &other.median_us));
            WAVEEP_RETURN_IF_ERROR(oo.Number("spread", false, &other.spread));
            WAVEEP_RETURN_IF_ERROR(oo.NoUnknownKeys());
            pt.others.push_back(std::move(other));
          }
        }
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

}  // namespace

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
        if (!q.others.empty()) {
          Json others = Json::array();
          for (const AlltoallPoint::Other& o : q.others) {
            others.push_back(Json{{"backend", o.backend}, {"median_us", o.median_us}, {"spread", o.spread}});
          }
          qj["others"] = others;
        }
        pts.push_back(qj);
      }
      pj["alltoall"] = Json{{"ranks", a.ranks}, {"backend", a.backend}, {"points", pts}};
    }
    j["probe"] = pj;
  }
  return j.dump(2) + "\n";
}

}  // namespace waveep::topology
