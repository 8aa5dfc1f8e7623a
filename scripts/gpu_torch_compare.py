#!/usr/bin/env python3
# Copyright 2026 The waveep Authors.
"""Grouped GEMM: waveep next to PyTorch on the same GPU, at the same shapes, in one table.

Runs torch._grouped_mm (BF16) and torch._scaled_grouped_mm (FP8, rowwise scales: the FP8 grouped GEMM PyTorch
ships; ours uses finer 1x128 block scales) at the expert shapes of bench/gpu_gemm_bench.cc, plus torch's dense
GEMM at the same FLOPs, and prints them beside waveep's results read from the benchmark's JSON output:

  build-gpu/bench/waveep_gpu_gemm_bench --benchmark_filter='V4-Pro/' \\
      --benchmark_format=json --benchmark_out=ours.json
  python3 scripts/gpu_torch_compare.py --ours ours.json --models V4-Pro --markdown docs/perf/gpu_gemm_v4pro.md

Shapes (must match bench/gpu_gemm_bench.cc): 32 local experts; gate+up [M, H] x [2I, H]^T and down [M, I] x [H, I]^T;
uniform (R / 32 rows each) or skewed (Zipf s = 1: expert e gets floor(R / norm / (e + 1)), the remainder to expert 0)
routed rows per GPU. TFLOP/s = 2 * R * N * K / time; time = CUDA events around back-to-back calls.

Without PyTorch (or without a GPU) the torch columns read "n/a" and the table still shows waveep's numbers.
"""

import argparse
import datetime
import json
import math
import re
import sys

MODELS = {  # name: (hidden H, intermediate I)
    "V4-Flash": (4096, 2048),
    "V4-Pro": (7168, 3072),
    "DeepSeek-V3": (7168, 2048),
    "Qwen3-235B": (4096, 1536),
}
EXPERTS = 32
ROWS = [256, 1024, 4096, 16384, 65536, 131072]  # 131072 = 4096 rows per expert (large-M target)
NAME_RE = re.compile(
    r"^BM_Gpu(?P<kind>Grouped|Dense)Gemm/(?P<model>[^/]+)/(?P<gemm>gate_up|down)/(?P<dtype>bf16|fp8)/"
    r"(?:(?P<dist>uniform|skewed)/)?rows:(?P<rows>\d+)(?:/(?P<backend>[a-z0-9_]+))?")


def rows_per_expert(total, skewed):
    """Same arithmetic as RowsPerExpert in bench/gpu_gemm_bench.cc."""
    if skewed:
        norm = sum(1.0 / (e + 1) for e in range(EXPERTS))
        rows = [int(total / norm / (e + 1)) for e in range(EXPERTS)]
    else:
        rows = [total // EXPERTS] * EXPERTS
    rows[0] += total - sum(rows)
    return rows


def gemm_shape(model, gemm):
    hidden, inter = MODELS[model]
    return (2 * inter, hidden) if gemm == "gate_up" else (hidden, inter)  # (N, K)


def load_ours(paths):
    """{(model, gemm, dtype, dist, rows): {"auto": (tflops, label), backend: tflops, "dense": tflops}}."""
    table = {}
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:  # a killed benchmark leaves no or half a file: keep the rest
            print(f"warning: {path}: {e}; its numbers are left out", file=sys.stderr)
            continue
        for b in data.get("benchmarks", []):
            m = NAME_RE.match(b.get("name", ""))
            if not m or b.get("error_occurred"):
                continue
            tflops = b.get("TFLOP/s")
            if tflops is None:
                continue
            rows = int(m["rows"])
            if m["kind"] == "Dense":
                for dist in ("uniform", "skewed"):
                    table.setdefault((m["model"], m["gemm"], m["dtype"], dist, rows), {})["dense"] = tflops
                continue
            entry = table.setdefault((m["model"], m["gemm"], m["dtype"], m["dist"], rows), {})
            entry[m["backend"]] = tflops
            if m["backend"] == "auto":
                entry["auto_label"] = b.get("label", "auto")
    return table


class Torch:
    """torch._grouped_mm / torch._scaled_grouped_mm timing; each method returns TFLOP/s or None with a reason."""

    def __init__(self, warmup, iters):
        self.warmup, self.iters = warmup, iters
        self.notes = []
        try:
            import torch  # noqa: PLC0415 (optional dependency)
        except ImportError as e:
            self.torch, self.reason = None, f"PyTorch not importable: {e}"
            return
        if not torch.cuda.is_available():
            self.torch, self.reason = None, "PyTorch sees no CUDA device"
            return
        self.torch, self.reason = torch, ""
        self.device = torch.device("cuda")
        self._weights = {}

    def describe(self):
        if self.torch is None:
            return self.reason
        t = self.torch
        return f"torch {t.__version__}, CUDA {t.version.cuda}, {t.cuda.get_device_name(0)}"

    def _time(self, fn):
        t = self.torch
        for _ in range(self.warmup):
            fn()
        start, stop = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(self.iters):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3 / self.iters  # seconds per call

    def _operands(self, n, k, fp8, total_rows):
        t = self.torch
        key = (n, k, fp8)
        if key not in self._weights:
            self._weights.clear()
            t.cuda.empty_cache()
            w = (t.rand(EXPERTS, n, k, device=self.device, dtype=t.bfloat16) - 0.5)  # [G, N, K] like nn.Linear
            if fp8:
                w = w.to(t.float8_e4m3fn)
            self._weights[key] = w
        w = self._weights[key]
        a = (t.rand(total_rows, k, device=self.device, dtype=t.bfloat16) - 0.5)
        if fp8:
            a = a.to(t.float8_e4m3fn)
        return a, w

    def _offsets(self, rows, align):
        t = self.torch
        if align > 1:
            rows = [int(math.ceil(r / align) * align) for r in rows]
        ends, acc = [], 0
        for r in rows:
            acc += r
            ends.append(acc)
        return t.tensor(ends, device=self.device, dtype=t.int32), acc

    def grouped(self, n, k, rows, fp8):
        """TFLOP/s of torch's grouped GEMM, counting only the real rows; notes when torch needed padded groups."""
        if self.torch is None:
            return None, self.reason
        t = self.torch
        real_flops = 2.0 * sum(rows) * n * k
        last_error = ""
        for align in (1, 16):  # some builds require 16-row aligned group ends
            offs, padded = self._offsets(rows, align)
            try:
                a, w = self._operands(n, k, fp8, padded)
                b = w.transpose(-2, -1)  # [G, K, N], the "column-major" B torch wants
                if fp8:
                    scale_a = t.rand(padded, device=self.device, dtype=t.float32) + 0.5
                    scale_b = t.rand(EXPERTS, n, device=self.device, dtype=t.float32) + 0.5
                    fn = lambda: t._scaled_grouped_mm(a, b, scale_a, scale_b, offs=offs, out_dtype=t.bfloat16)  # noqa: E731
                else:
                    fn = lambda: t._grouped_mm(a, b, offs=offs)  # noqa: E731
                seconds = self._time(fn)
                return real_flops / seconds / 1e12, ("" if align == 1 else "groups padded to 16 rows")
            except Exception as e:  # noqa: BLE001 (report any torch refusal in the table)
                last_error = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        return None, last_error

    def dense(self, n, k, total_rows, fp8):
        if self.torch is None:
            return None, self.reason
        t = self.torch
        try:
            a, w = self._operands(n, k, fp8, total_rows)
            b = w[0].t()  # [K, N] column-major
            if fp8:
                sa = t.ones(total_rows, 1, device=self.device, dtype=t.float32)
                sb = t.ones(1, n, device=self.device, dtype=t.float32)
                fn = lambda: t._scaled_mm(a, b, sa, sb, out_dtype=t.bfloat16)  # noqa: E731
            else:
                fn = lambda: t.mm(a, b)  # noqa: E731
            return 2.0 * total_rows * n * k / self._time(fn) / 1e12, ""
        except Exception as e:  # noqa: BLE001
            return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"


def fmt(x, width=7):
    return f"{x:{width}.1f}" if isinstance(x, (int, float)) else f"{'n/a':>{width}}"


def ratio(a, b):
    return f"{a / b:5.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else "  n/a"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", nargs="*", default=[], help="JSON from waveep_gpu_gemm_bench --benchmark_format=json")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--gemms", nargs="*", default=["gate_up", "down"], choices=["gate_up", "down"])
    p.add_argument("--dtypes", nargs="*", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    p.add_argument("--dists", nargs="*", default=["uniform", "skewed"], choices=["uniform", "skewed"])
    p.add_argument("--rows", nargs="*", type=int, default=ROWS)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-torch", action="store_true", help="print waveep's numbers only")
    p.add_argument("--markdown", help="also write the table (with device, versions and date) to this file")
    args = p.parse_args()

    ours = load_ours(args.ours)
    torch = Torch(args.warmup, args.iters) if not args.no_torch else None
    header = ("model        gemm    dtype dist     rows   |  ours:auto (picked)            best (backend)        |  dense "
              "|  torch t.dense | auto/torch auto/dense | notes")
    lines = [header, "-" * len(header)]
    for model in args.models:
        for gemm in args.gemms:
            n, k = gemm_shape(model, gemm)
            for dtype in args.dtypes:
                fp8 = dtype == "fp8"
                for dist in args.dists:
                    for total in args.rows:
                        o = ours.get((model, gemm, dtype, dist, total), {})
                        backends = {b: v for b, v in o.items() if b not in ("auto", "auto_label", "dense")}
                        best_b = max(backends, key=backends.get) if backends else None
                        t_grouped, note = (None, "torch skipped") if torch is None else torch.grouped(
                            n, k, rows_per_expert(total, dist == "skewed"), fp8)
                        t_dense = None if torch is None else torch.dense(n, k, total, fp8)[0]
                        auto = o.get("auto")
                        label = o.get("auto_label", "")
                        lines.append(
                            f"{model:12} {gemm:7} {dtype:5} {dist:8} {total:6} | {fmt(auto)} "
                            f"({label[:20]:20}) {fmt(backends.get(best_b))} ({(best_b or '')[:14]:14}) | "
                            f"{fmt(o.get('dense'), 6)} | {fmt(t_grouped, 6)} {fmt(t_dense, 6)} | "
                            f"{ratio(auto, t_grouped):>10} {ratio(auto, o.get('dense')):>10} | {note}")
    info = torch.describe() if torch is not None else "torch skipped (--no-torch)"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    preamble = [f"# grouped GEMM TFLOP/s, {stamp}", f"# {info}", f"# ours: {', '.join(args.ours) or '(none)'}",
                "# fp8: ours = 1x128 block scales (cuBLASLt VEC128); torch = rowwise scales (_scaled_grouped_mm)"]
    text = "\n".join(preamble + lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("```\n" + text + "\n```\n")
    if not ours:
        print("note: no waveep results given (--ours); only torch was measured", file=sys.stderr)


if __name__ == "__main__":
    main()
