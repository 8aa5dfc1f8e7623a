#!/usr/bin/env python3
"""Recomputes one MoE layer from a checkpoint and an input file with numpy, and compares it with waveep's --output.

usage: check_layer.py --checkpoint DIR --input FILE --output FILE [--layer L] [--dtype bf16|fp8]
                      [--shared-experts true|false] [--tolerance T]

What it computes (float64 throughout, independent of waveep's C++):
  x        = hidden_states, rounded to BF16 (waveep rounds F32 inputs to BF16 on read)
  routing  = the input's topk_idx / topk_weights if present; else the router: logits = x . Wg^T, scores =
             softmax(logits) or sigmoid(logits) (config.json scoring_func), e_score_correction_bias added for the
             selection only, group-limited top-k (n_group / topk_group; group score = top-2 sum for sigmoid, max for
             softmax), weights = unbiased scores of the chosen experts, renormalised if norm_topk_prob, times
             routed_scaling_factor
  expert   = W2 (silu(W1 x) * (W3 x)) with BF16/F16/F32 weights widened, FP8 weights dequantized with their 128x128
             weight_scale_inv blocks; with --dtype fp8 (waveep --dtype=fp8) the routed experts see x quantized to e4m3
             with one scale per 128 elements (amax / 448), as waveep dispatches it
  output   = sum_k w_k expert_k(x) + shared_experts(x) (DeepSeek naming, when n_shared_experts > 0)

Tolerance: waveep returns expert outputs to the token's rank in BF16 (unit roundoff 2^-9) and accumulates in FP32,
so per token ||out - ref|| <= 2^-9 (sum_k |w_k| ||y_k||) + FP32 rounding (~1e-6 relative). The check is the same
normalised error as waveep --verify: max over tokens of ||out - ref|| / (sum_k |w_k| ||y_k|| + ||shared||), which
must be <= 2^-8 (twice the bound). Routing computed here must select the same experts as waveep's topk_idx except
for near-ties (score gap < 1e-5, where FP32 vs float64 logits may legitimately order them differently); waveep's
weights must match to 1e-5 relative.

Exit status: 0 match, 1 mismatch, 2 bad arguments or files. Defaults for --layer / --dtype / --shared-experts come
from the output file's metadata (written by waveep run --output).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import E4M3, Checkpoint, SafetensorsFile, f32_to_e4m3, round_bf16  # noqa: E402

TIE_TOL = 1e-5


def model_from_config(path):
    c = json.load(open(path))

    def first(*keys, default=None):
        for k in keys:
            if c.get(k) is not None:
                return c[k]
        return default

    m = dict(hidden=c["hidden_size"], inter=first("moe_intermediate_size", "intermediate_size"),
             experts=first("n_routed_experts", "num_experts", "num_local_experts"), top_k=c["num_experts_per_tok"],
             shared=first("n_shared_experts", default=0), scoring=first("scoring_func", default="softmax"),
             n_group=first("n_group", default=1), topk_group=first("topk_group", default=1),
             norm=first("norm_topk_prob", default=True), scaling=float(first("routed_scaling_factor", default=1.0)))
    block = (c.get("quantization_config") or {}).get("weight_block_size") or [128, 128]
    m["block"] = tuple(block)
    return m


def layer_names(ckpt, layer):
    """(family, prefix, projection names) for `layer`; layer None = the first layer with experts."""
    layers = set()
    for n in ckpt.names():
        p = n.split(".")
        if len(p) > 4 and p[0] == "model" and p[1] == "layers" and p[3] in ("mlp", "block_sparse_moe") and \
                p[4] == "experts":
            layers.add(int(p[2]))
    if layer is None:
        if not layers:
            raise ValueError("the checkpoint has no expert tensors")
        layer = min(layers)
    if f"model.layers.{layer}.mlp.experts.0.gate_proj.weight" in ckpt:
        return layer, f"model.layers.{layer}.mlp.", ("gate_proj", "up_proj", "down_proj")
    if f"model.layers.{layer}.block_sparse_moe.experts.0.w1.weight" in ckpt:
        return layer, f"model.layers.{layer}.block_sparse_moe.", ("w1", "w3", "w2")
    raise ValueError(f"layer {layer} has no experts (layers with experts: {sorted(layers)})")


def route(x, gate, bias, m):
    """Returns (topk_idx [T, K], topk_weights [T, K], biased scores [T, E], group scores [T, G]), float64."""
    logits = x.astype(np.float64) @ gate.astype(np.float64).T
    if m["scoring"] == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    else:
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = z / z.sum(axis=1, keepdims=True)
    biased = scores + (bias.astype(np.float64) if bias is not None else 0.0)
    t_count, e_count = scores.shape
    g, kg, k = m["n_group"], m["topk_group"], m["top_k"]
    gs = np.zeros((t_count, g))
    eligible = np.ones_like(biased, dtype=bool)
    if g > 1 and kg < g:
        per = biased.reshape(t_count, g, e_count // g)
        if m["scoring"] == "sigmoid":
            top2 = np.sort(per, axis=2)[:, :, -2:] if per.shape[2] >= 2 else per
            gs = top2.sum(axis=2)
        else:
            gs = per.max(axis=2)
        order = np.argsort(-gs, axis=1, kind="stable")[:, :kg]
        mask = np.zeros((t_count, g), dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        eligible = np.repeat(mask, e_count // g, axis=1)
    masked = np.where(eligible, biased, -np.inf)
    idx = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    return idx, weights_for(scores, idx, m), biased, gs, scores


def weights_for(scores, idx, m):
    w = np.take_along_axis(scores, idx, axis=1)
    if m["norm"]:
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    return w * m["scaling"]


def is_near_tie(t, mine, theirs, biased, gs, m):
    """True if the experts chosen differently by us and by waveep have (group) scores within TIE_TOL."""
    a, b = set(mine) - set(theirs), set(theirs) - set(mine)
    if not a:
        return True
    per = biased.shape[1] // max(1, m["n_group"])
    close = abs(min(biased[t, list(a)]) - max(biased[t, list(b)])) < TIE_TOL or \
        abs(max(biased[t, list(a)]) - min(biased[t, list(b)])) < TIE_TOL
    if m["n_group"] > 1:
        ga = {e // per for e in a}
        gb = {e // per for e in b}
        close = close or any(abs(gs[t, i] - gs[t, j]) < TIE_TOL for i in ga for j in gb)
    return close


def fp8_dispatch(x, block=128):
    """x as waveep's --dtype=fp8 dispatch delivers it: e4m3 with one FP32 scale (amax / 448) per block."""
    x = x.astype(np.float32)
    t, h = x.shape
    xb = x.reshape(t, h // block, block)
    amax = np.abs(xb).max(axis=2, keepdims=True).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(448.0), np.float32(1.0)).astype(np.float32)
    q = f32_to_e4m3((xb / scale).astype(np.float32))
    return (E4M3[q] * scale).astype(np.float32).reshape(t, h)


def mlp(x, w1, w3, w2):
    g = x @ w1.T
    u = x @ w3.T
    return (g / (1.0 + np.exp(-g)) * u) @ w2.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True, help="waveep run --output file")
    ap.add_argument("--layer", type=int)
    ap.add_argument("--dtype", choices=["bf16", "fp8"])
    ap.add_argument("--shared-experts", choices=["true", "false"])
    ap.add_argument("--tolerance", type=float, default=2.0 ** -8)
    a = ap.parse_args()
    try:
        out_f = SafetensorsFile(a.output)
        in_f = SafetensorsFile(a.input)
        md = out_f.metadata
        dtype = a.dtype or md.get("dispatch_dtype", "bf16")
        use_shared = (a.shared_experts or md.get("shared_experts", "true")) == "true"
        layer = a.layer if a.layer is not None else (int(md["layer"]) if md.get("layer") else None)
        m = model_from_config(os.path.join(a.checkpoint, "config.json"))
        ckpt = Checkpoint(a.checkpoint)
        layer, pre, proj = layer_names(ckpt, layer)
        x = in_f.float32("hidden_states")
        out = out_f.float32("output").astype(np.float64)
        w_idx = out_f.raw("topk_idx").astype(np.int64)
        w_wts = out_f.float32("topk_weights").astype(np.float64)
    except (OSError, KeyError, ValueError) as e:
        print(f"check_layer: error: {e}", file=sys.stderr)
        return 2
    t_count, h = x.shape
    k = m["top_k"]
    if h != m["hidden"] or out.shape != (t_count, h) or w_idx.shape != (t_count, k):
        print(f"check_layer: error: shapes do not fit: hidden_states {x.shape}, output {out.shape}, topk_idx "
              f"{w_idx.shape}, model H={m['hidden']} K={k}", file=sys.stderr)
        return 2
    x = round_bf16(x)
    print(f"check_layer: {a.checkpoint} layer {layer} ({'mixtral' if proj[0] == 'w1' else 'deepseek'} naming), "
          f"H={h} I={m['inter']} E={m['experts']} top-{k} {m['scoring']} groups {m['n_group']}/{m['topk_group']}, "
          f"{t_count} tokens, dispatch {dtype}, shared experts {'on' if use_shared and m['shared'] else 'off'}")

    # ---- routing
    failures = []
    if "topk_idx" in in_f:
        idx = in_f.raw("topk_idx").astype(np.int64)
        wts = in_f.float32("topk_weights").astype(np.float64)
        if not np.array_equal(idx, w_idx) or not np.array_equal(wts.astype(np.float32), w_wts.astype(np.float32)):
            failures.append("waveep's routing differs from the input file's")
        print("  routing     from the input file")
    else:
        gate = ckpt.float32(pre + "gate.weight")
        bias_name = pre + "gate.e_score_correction_bias"
        bias = ckpt.float32(bias_name) if bias_name in ckpt else None
        idx, wts, biased, gs, scores = route(x, gate, bias, m)
        ties = 0
        for t in range(t_count):
            mine, theirs = sorted(idx[t]), sorted(w_idx[t])
            if mine == theirs:
                continue
            if is_near_tie(t, idx[t], w_idx[t], biased, gs, m):
                ties += 1
                idx[t] = w_idx[t]
                wts[t] = weights_for(scores[t:t + 1], w_idx[t:t + 1], m)[0]
            else:
                failures.append(f"token {t}: router picks experts {mine}, waveep used {theirs}")
        # Weights per (token, expert), independent of slot order.
        for t in range(t_count):
            mine = dict(zip(idx[t].tolist(), wts[t].tolist()))
            for e, w in zip(w_idx[t].tolist(), w_wts[t].tolist()):
                if e in mine and abs(mine[e] - w) > 1e-5 * max(1.0, abs(mine[e])):
                    failures.append(f"token {t} expert {e}: weight {w} (waveep) vs {mine[e]} (router)")
        print(f"  routing     from the router: {t_count - ties} tokens identical, {ties} near-ties "
              f"(taken from waveep)")
    # ---- experts
    x_routed = fp8_dispatch(x) if dtype == "fp8" else x
    xd, xr = x.astype(np.float64), x_routed.astype(np.float64)
    ys = np.zeros((t_count, k, h))
    for e in np.unique(idx):
        if e < 0 or e >= m["experts"]:
            failures.append(f"expert id {e} out of range")
            continue
        w1, w3, w2 = (ckpt.float32(f"{pre}experts.{e}.{p}.weight", m["block"]).astype(np.float64) for p in proj)
        rows, slots = np.nonzero(idx == e)
        ys[rows, slots] = mlp(xr[rows], w1, w3, w2)
    shared = np.zeros((t_count, h))
    if use_shared and m["shared"] > 0:
        s = [ckpt.float32(f"{pre}shared_experts.{p}_proj.weight", m["block"]).astype(np.float64)
             for p in ("gate", "up", "down")]
        shared = mlp(xd, *s)
    ref = np.einsum("tk,tkh->th", wts, ys) + shared
    err = np.linalg.norm(out - ref, axis=1)
    scale = np.einsum("tk,tk->t", np.abs(wts), np.linalg.norm(ys, axis=2)) + np.linalg.norm(shared, axis=1)
    normalized = np.where(scale > 0, err / np.where(scale > 0, scale, 1), err)
    rel = err / np.maximum(np.linalg.norm(ref, axis=1), 1e-300)
    worst = int(np.argmax(normalized)) if t_count else -1
    max_abs = float(np.max(np.abs(out - ref))) if t_count else 0.0
    max_norm = float(normalized.max()) if t_count else 0.0
    print(f"  max abs error {max_abs:.3e}   max rel L2 {float(rel.max()) if t_count else 0:.3e}   "
          f"max normalized error {max_norm:.3e} (token {worst}; tolerance {a.tolerance:.3e})")
    if not np.all(np.isfinite(out)):
        failures.append("waveep's output has non-finite values")
    if max_norm > a.tolerance:
        failures.append(f"normalized error {max_norm:.3e} > tolerance {a.tolerance:.3e} at token {worst}")
    for f in failures[:10]:
        print(f"  MISMATCH: {f}")
    print("check_layer: " + ("FAIL" if failures else "PASS"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
