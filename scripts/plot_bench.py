#!/usr/bin/env python3
"""Turns `waveep bench --csv` output (one or several runs concatenated) into PNG plots. Runs over several hosts
(the `nodes` column) are told apart by node count, and weak scaling is then drawn per ranks-per-node.

usage: plot_bench.py BENCH.csv OUT_DIR
writes: speedup_vs_waves.png, time_vs_tokens.png, scaling_vs_ranks.png
"""
import csv
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            for k in ("ranks", "tokens_per_rank", "waves"):
                r[k] = int(r[k])
            r["nodes"] = int(r.get("nodes") or 1)  # older CSVs have no nodes column: one host
            for k in ("step_ms_median", "step_ms_min", "step_ms_max", "speedup", "overlap_efficiency", "tflops",
                      "predicted_ms"):
                r[k] = float(r[k])
            r["dedup"] = int(r.get("dedup") or 0)  # older CSVs: no deduplication
            rows.append(r)
    # A --dedup_list=1,0 run holds every point twice: plot the deduplicated one (the default); the table compares both.
    if len({r["dedup"] for r in rows}) > 1:
        rows = [r for r in rows if r["dedup"] == 1]
    return rows


def layout(ranks, nodes):
    return f"np{ranks}" if nodes == 1 else f"np{ranks} {nodes}x{ranks // nodes}"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = load(sys.argv[1])
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    if not rows:
        sys.exit("no rows in " + sys.argv[1])

    # 1. speedup vs waves: one panel per model; colour = ranks, line style = tokens per rank
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    rank_colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(sorted({(r["ranks"], r["nodes"]) for r in rows}))}
    styles = ["-", "--", ":", "-."]
    token_style = {t: styles[i % len(styles)] for i, t in enumerate(sorted({r["tokens_per_rank"] for r in rows}))}
    for ax, model in zip(axes[0], models):
        groups = defaultdict(list)
        for r in rows:
            if r["model"] == model:
                groups[(r["ranks"], r["nodes"], r["tokens_per_rank"])].append(r)
        for (ranks, nodes, tokens), g in sorted(groups.items()):
            g.sort(key=lambda r: r["waves"])
            ax.plot([r["waves"] for r in g], [r["speedup"] for r in g], marker="o", color=rank_colors[(ranks, nodes)],
                    ls=token_style[tokens], label=f"{layout(ranks, nodes)} T{tokens}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("waves (W)")
        ax.set_ylabel("speedup over W=1 (same run)")
        ax.set_title(f"{model}: wave pipelining speedup")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "speedup_vs_waves.png"), dpi=120)

    # 2. step time vs tokens per rank: W=1 and best W, per (model, ranks)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_mr = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_mr[(r["model"], r["ranks"], r["nodes"])][r["tokens_per_rank"]].append(r)
    for (model, ranks, nodes), by_t in sorted(by_mr.items()):
        ts = sorted(by_t)
        base = [next(r["step_ms_median"] for r in by_t[t] if r["waves"] == 1) for t in ts]
        best = [min(r["step_ms_median"] for r in by_t[t]) for t in ts]
        line, = ax.plot(ts, base, marker="o", ls="--", label=f"{model} {layout(ranks, nodes)} W=1")
        ax.plot(ts, best, marker="s", color=line.get_color(), label=f"{model} {layout(ranks, nodes)} best W")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per rank")
    ax.set_ylabel("step time, median (ms)")
    ax.set_title("Step time vs tokens")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "time_vs_tokens.png"), dpi=120)

    # 3. scaling vs ranks at fixed tokens per rank (weak scaling): step time (W=1, best W) and TFLOP/s. Across hosts
    # one line per ranks-per-node (P), the ranks growing with the nodes.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    by_mt = defaultdict(lambda: defaultdict(list))
    multi_host = any(r["nodes"] > 1 for r in rows)
    for r in rows:
        per_node = r["ranks"] // r["nodes"] if multi_host else 0
        by_mt[(r["model"], r["tokens_per_rank"], per_node)][r["ranks"]].append(r)
    for (model, tokens, per_node), by_r in sorted(by_mt.items()):
        rs = sorted(by_r)
        if len(rs) < 2:
            continue
        base = [next(r for r in by_r[n] if r["waves"] == 1) for n in rs]
        best = [min(by_r[n], key=lambda r: r["step_ms_median"]) for n in rs]
        name = f"{model} T{tokens}" + (f" P={per_node}" if per_node else "")
        line, = ax1.plot(rs, [r["step_ms_median"] for r in base], marker="o", ls="--", label=f"{name} W=1")
        ax1.plot(rs, [r["step_ms_median"] for r in best], marker="s", color=line.get_color(), label=f"{name} best W")
        ax2.plot(rs, [r["tflops"] for r in best], marker="s", color=line.get_color(), label=name)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks (np)")
        ax.legend(fontsize=7)
    ax1.set_ylabel("step time, median (ms)")
    ax1.set_title("Weak scaling: step time")
    ax2.set_ylabel("TFLOP/s (all ranks, best W)")
    ax2.set_title("Weak scaling: throughput")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling_vs_ranks.png"), dpi=120)
    print(f"wrote {out}/speedup_vs_waves.png, time_vs_tokens.png, scaling_vs_ranks.png")


if __name__ == "__main__":
    main()
