#!/usr/bin/env python3
"""Plots scripts/cluster_bench.sh's all.csv: best-W speedup over W=1 against the NIC rate, one line per model and
(hosts x ranks per host); measured (solid) and the topology model's prediction (dashed).

    python3 scripts/plot_cluster_bench.py OUT_DIR/all.csv OUT_DIR/speedup_vs_rate.png
"""
import csv
import sys
from collections import defaultdict


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(sys.argv[1])))
    if not rows:
        print(f"{sys.argv[1]}: no rows", file=sys.stderr)
        return 1
    # (model, hosts, per_host, tokens) -> rate -> {waves: (measured ms, predicted ms)}
    series = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        key = (r["model"], int(r["hosts"]), int(r["per_host"]), int(r["tokens_per_rank"]))
        pred = float(r["predicted_ms"]) if r.get("predicted_ms") else float("nan")
        series[key][float(r["rate_mbit"])][int(r["waves"])] = (float(r["step_ms_median"]), pred)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, hosts, per_host, tokens), by_rate in sorted(series.items()):
        rates = sorted(by_rate)
        meas, pred = [], []
        for rate in rates:
            pts = by_rate[rate]
            base_m, base_p = pts[1]
            meas.append(base_m / min(m for m, _ in pts.values()))
            pred.append(base_p / min(p for _, p in pts.values()))
        label = f"{model} {hosts}x{per_host} T={tokens}"
        line, = ax.plot(rates, meas, marker="o", label=f"{label} measured")
        ax.plot(rates, pred, linestyle="--", color=line.get_color(), label=f"{label} model")
    ax.set_xscale("log")
    ax.set_xlabel("NIC rate per direction (Mbit/s, tc tbf)")
    ax.set_ylabel("best-W step time speedup over W=1")
    ax.axhline(1.0, color="gray", linewidth=0.5)
    ax.set_title("waveep across emulated hosts: waves vs link rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    print(f"wrote {sys.argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
