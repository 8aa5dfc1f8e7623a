#!/usr/bin/env python3
"""Writes small Hugging Face-style MoE checkpoints and token input files for waveep (numpy only).

usage:
  make_test_checkpoint.py checkpoint DIR [--family deepseek|mixtral|qwen] [--dtype bf16|fp8|f32] [--files N]
                                         [--hidden H] [--inter I] [--experts E] [--top-k K] [--shared S]
                                         [--moe-layer L] [--no-bias] [--seed S]
  make_test_checkpoint.py input FILE --hidden H [--tokens T] [--dtype f32|bf16] [--routing E K] [--seed S]
  make_test_checkpoint.py corrupt SRC_DIR DST_DIR CASE       # a broken copy of a checkpoint (see CASES)
  make_test_checkpoint.py suite DIR                          # everything the waveep CLI tests use

Checkpoints: config.json (HF names), layers 0..L; layers below L are dense (mlp.{gate,up,down}_proj, as DeepSeek's
first_k_dense_replace) and layer L is the MoE layer:
  deepseek / qwen: model.layers.L.mlp.experts.{e}.{gate,up,down}_proj.weight, mlp.gate.weight [E, H],
                   mlp.gate.e_score_correction_bias [E] (deepseek, unless --no-bias), mlp.shared_experts.* (deepseek)
  mixtral:         model.layers.L.block_sparse_moe.experts.{e}.{w1,w3,w2}.weight, block_sparse_moe.gate.weight
Tensors are spread over N files (model-0000i-of-0000N.safetensors) with model.safetensors.index.json; experts are
split into contiguous runs so a file holds only some experts. bf16: weights stored as BF16 (router too); fp8: expert
and shared weights as F8_E4M3 with F32 `weight_scale_inv` per 128x128 block (DeepSeek's format, router BF16).
Weights are U(-1, 1) / sqrt(fan_in); hidden states U(-1, 1) (f32 inputs are deliberately not BF16-representable).
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import f32_to_bf16_bits, quantize_fp8_blocks, write_safetensors  # noqa: E402

FAMILY_DEFAULTS = {
    # H, I, E, K, shared, scoring, n_group, topk_group, norm, scaling
    "deepseek": dict(hidden=256, inter=96, experts=16, top_k=4, shared=1, scoring="sigmoid", n_group=4, topk_group=2,
                     norm=True, scaling=2.5),
    "qwen": dict(hidden=256, inter=64, experts=16, top_k=4, shared=0, scoring="softmax", n_group=1, topk_group=1,
                 norm=False, scaling=1.0),
    "mixtral": dict(hidden=256, inter=160, experts=8, top_k=2, shared=0, scoring="softmax", n_group=1, topk_group=1,
                    norm=True, scaling=1.0),
}


def config_json(family, p, moe_layer, dtype):
    if family == "mixtral":
        c = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": p["hidden"],
             "intermediate_size": p["inter"], "num_local_experts": p["experts"],
             "num_experts_per_tok": p["top_k"], "num_hidden_layers": moe_layer + 1}
    elif family == "qwen":
        c = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": p["hidden"],
             "intermediate_size": 4 * p["inter"], "moe_intermediate_size": p["inter"], "num_experts": p["experts"],
             "num_experts_per_tok": p["top_k"], "norm_topk_prob": p["norm"], "num_hidden_layers": moe_layer + 1,
             "decoder_sparse_step": 1}
    else:
        c = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": p["hidden"],
             "intermediate_size": 4 * p["inter"], "moe_intermediate_size": p["inter"],
             "n_routed_experts": p["experts"], "n_shared_experts": p["shared"], "num_experts_per_tok": p["top_k"],
             "scoring_func": p["scoring"], "n_group": p["n_group"], "topk_group": p["topk_group"],
             "norm_topk_prob": p["norm"], "routed_scaling_factor": p["scaling"], "topk_method": "noaux_tc",
             "first_k_dense_replace": moe_layer, "num_hidden_layers": moe_layer + 1}
    if dtype == "fp8":
        c["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                    "weight_block_size": [128, 128]}
    return c


def weight(rng, rows, cols):
    return (rng.uniform(-1, 1, size=(rows, cols)) / np.sqrt(cols)).astype(np.float32)


def encode(name, w, dtype, quantize):
    """[(name, dtype, storage)] for one matrix: BF16 / F32, or FP8 + scale_inv when quantize."""
    if dtype == "fp8" and quantize:
        q, s = quantize_fp8_blocks(w)
        return [(name, "F8_E4M3", q), (name + "_scale_inv", "F32", s)]
    if dtype == "f32":
        return [(name, "F32", w)]
    return [(name, "BF16", f32_to_bf16_bits(w))]


def make_checkpoint(out, family="deepseek", dtype="bf16", files=3, moe_layer=1, bias=True, seed=1, **over):
    p = dict(FAMILY_DEFAULTS[family])
    p.update({k: v for k, v in over.items() if v is not None})
    rng = np.random.default_rng(seed)
    h, i, e_count = p["hidden"], p["inter"], p["experts"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_json(family, p, moe_layer, dtype), f, indent=2)
    groups = []  # one list of tensors per output file, in order
    # Dense layers (DeepSeek's first_k_dense_replace): present so layer auto-detection has something to skip.
    dense = []
    for layer in range(moe_layer):
        pre = f"model.layers.{layer}.mlp."
        dense += encode(pre + "gate_proj.weight", weight(rng, 2 * i, h), dtype, False)
        dense += encode(pre + "up_proj.weight", weight(rng, 2 * i, h), dtype, False)
        dense += encode(pre + "down_proj.weight", weight(rng, h, 2 * i), dtype, False)
    pre = f"model.layers.{moe_layer}." + ("block_sparse_moe." if family == "mixtral" else "mlp.")
    router = encode(pre + "gate.weight", weight(rng, e_count, h), "bf16" if dtype == "fp8" else dtype, False)
    if family == "deepseek" and bias:
        router.append((pre + "gate.e_score_correction_bias", "F32",
                       (0.05 * rng.uniform(-1, 1, size=e_count)).astype(np.float32)))
    shared = []
    if p["shared"] > 0:
        si = p["shared"] * i
        shared += encode(pre + "shared_experts.gate_proj.weight", weight(rng, si, h), dtype, True)
        shared += encode(pre + "shared_experts.up_proj.weight", weight(rng, si, h), dtype, True)
        shared += encode(pre + "shared_experts.down_proj.weight", weight(rng, h, si), dtype, True)
    names = ("w1", "w3", "w2") if family == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    experts = []
    for e in range(e_count):
        t = []
        t += encode(f"{pre}experts.{e}.{names[0]}.weight", weight(rng, i, h), dtype, True)
        t += encode(f"{pre}experts.{e}.{names[1]}.weight", weight(rng, i, h), dtype, True)
        t += encode(f"{pre}experts.{e}.{names[2]}.weight", weight(rng, h, i), dtype, True)
        experts.append(t)
    # File 1: dense layers, router, shared, and the first run of experts; the other files: the other runs.
    files = max(1, files)
    per = -(-e_count // files)
    for fi in range(files):
        g = (dense + router + shared) if fi == 0 else []
        for e in range(fi * per, min(e_count, (fi + 1) * per)):
            g += experts[e]
        groups.append(g)
    weight_map = {}
    for fi, g in enumerate(groups):
        fn = f"model-{fi + 1:05d}-of-{files:05d}.safetensors"
        write_safetensors(os.path.join(out, fn), g, {"format": "pt"})
        for name, _, _ in g:
            weight_map[name] = fn
    total = sum(os.path.getsize(os.path.join(out, f)) for f in set(weight_map.values()))
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    return p


def make_input(path, hidden, tokens=64, dtype="f32", routing=None, seed=2):
    """hidden_states [T, H] (F32 not BF16-representable, or BF16); routing=(E, K) adds topk_idx/topk_weights."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(tokens, hidden)).astype(np.float32)
    t = [("hidden_states", "F32", x) if dtype == "f32" else ("hidden_states", "BF16", f32_to_bf16_bits(x))]
    if routing is not None:
        e_count, k = routing
        idx = np.stack([rng.choice(e_count, size=k, replace=False) for _ in range(tokens)]).astype(np.int64)
        w = rng.uniform(0.5, 1.5, size=(tokens, k)).astype(np.float32)
        w /= w.sum(axis=1, keepdims=True)
        t += [("topk_idx", "I64", idx), ("topk_weights", "F32", w)]
    write_safetensors(path, t, {"format": "pt"})


# ---- broken copies ---------------------------------------------------------------------------------------------
CASES = ["header_json", "truncated", "header_len", "dtype", "shape", "missing_tensor", "missing_index_entry",
         "missing_file", "missing_scale", "overlap", "nan_weight", "trailing_bytes", "nested_shape"]


def _header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n)), f.read()


def _rewrite(path, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def _drop(header, data, name):
    """Removes tensor `name` from a safetensors header and its bytes from the data, shifting the later tensors, so
    the file stays exactly covered by its tensors (readers reject trailing bytes)."""
    b, e = header.pop(name)["data_offsets"]
    for k, v in header.items():
        if k != "__metadata__" and v["data_offsets"][0] >= e:
            v["data_offsets"] = [v["data_offsets"][0] - (e - b), v["data_offsets"][1] - (e - b)]
    return data[:b] + data[e:]


def corrupt(src, dst, case):
    """Copies checkpoint src to dst and breaks it the `case` way; returns the tensor or file it names."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    index_path = os.path.join(dst, "model.safetensors.index.json")
    index = json.load(open(index_path))
    wm = index["weight_map"]
    # The last expert's up projection: it lives in the last file, which only the last rank reads.
    cfg = json.load(open(os.path.join(dst, "config.json")))
    last = cfg.get("n_routed_experts", cfg.get("num_experts", cfg.get("num_local_experts"))) - 1
    victim = next(n for n in sorted(wm) if f".experts.{last}." in n and n.endswith("weight") and
                  ("up_proj" in n or ".w3." in n))
    path = os.path.join(dst, wm[victim])
    n, header, data = _header(path)
    if case == "header_json":
        with open(path, "r+b") as f:
            f.seek(8 + 1)
            f.write(b"{{{ not json")
    elif case == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
    elif case == "header_len":
        with open(path, "r+b") as f:
            f.write(struct.pack("<Q", os.path.getsize(path) * 4))
    elif case == "dtype":
        h = header[victim]
        nbytes = h["data_offsets"][1] - h["data_offsets"][0]
        itemsize = {"BF16": 2, "F32": 4, "F16": 2, "F8_E4M3": 1}[h["dtype"]]
        # Same byte size, integer type: I16 for 2-byte, I32 for 4-byte, U8 for FP8.
        h["dtype"] = {2: "I16", 4: "I32", 1: "U8"}[itemsize]
        assert nbytes % itemsize == 0
        _rewrite(path, header, data)
    elif case == "shape":
        h = header[victim]
        r, c = h["shape"]
        h["shape"] = [c, r]  # transposed: same bytes, wrong layout
        _rewrite(path, header, data)
    elif case == "missing_tensor":
        data = _drop(header, data, victim)
        _rewrite(path, header, data)
        del wm[victim]
        json.dump(index, open(index_path, "w"), indent=2)
    elif case == "missing_index_entry":
        del wm[victim]
        json.dump(index, open(index_path, "w"), indent=2)
    elif case == "missing_file":
        os.remove(path)
        victim = os.path.basename(path)
    elif case == "missing_scale":
        victim = next(n for n in sorted(wm) if n.endswith("weight_scale_inv") and f".experts.{last}." in n)
        path = os.path.join(dst, wm[victim])
        n, header, data = _header(path)
        data = _drop(header, data, victim)
        _rewrite(path, header, data)
        del wm[victim]
        json.dump(index, open(index_path, "w"), indent=2)
    elif case == "overlap":
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        a, b = names[0], names[1]
        header[b]["data_offsets"] = [x - 2 for x in header[b]["data_offsets"]]
        victim = b
        _rewrite(path, header, data)
    elif case == "nan_weight":
        # One NaN in the middle of the victim's data (BF16 0x7fc1, F32 NaN): the header stays valid.
        h = header[victim]
        begin, end = h["data_offsets"]
        data = bytearray(data)
        mid = begin + ((end - begin) // 2) // 4 * 4
        if h["dtype"] == "F32":
            data[mid:mid + 4] = struct.pack("<f", float("nan"))
        else:
            data[mid:mid + 2] = struct.pack("<H", 0x7FC1)
        _rewrite(path, header, bytes(data))
    elif case == "trailing_bytes":
        _rewrite(path, header, data + b"\x00" * 24)
        victim = os.path.basename(path)
    elif case == "nested_shape":
        # A shape nested 100,000 levels deep: the reader must refuse it by depth, without recursing into it.
        text = json.dumps(header, separators=(",", ":"))
        key = json.dumps(victim) + ":"
        i = text.index(key)
        j = text.index('"shape":', i) + len('"shape":')
        k = text.index("]", j) + 1
        text = (text[:j] + "[" * 100000 + "1" + "]" * 100000 + text[k:]).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + data)
        victim = os.path.basename(path)
    else:
        raise SystemExit(f"unknown case {case} (known: {', '.join(CASES)})")
    return victim


def suite(out):
    """The CLI tests' fixtures: three checkpoints, inputs, and one broken copy per case."""
    os.makedirs(out, exist_ok=True)
    ds = make_checkpoint(os.path.join(out, "ds_bf16"), "deepseek", "bf16", files=3, seed=11)
    make_checkpoint(os.path.join(out, "ds_fp8"), "deepseek", "fp8", files=4, seed=12)
    mx = make_checkpoint(os.path.join(out, "mixtral_bf16"), "mixtral", "bf16", files=2, moe_layer=0, seed=13)
    qw = make_checkpoint(os.path.join(out, "qwen_bf16"), "qwen", "bf16", files=2, moe_layer=0, seed=14)
    make_input(os.path.join(out, "x_f32.safetensors"), ds["hidden"], tokens=61, dtype="f32", seed=21)
    make_input(os.path.join(out, "x_bf16_routed.safetensors"), ds["hidden"], tokens=50, dtype="bf16",
               routing=(ds["experts"], ds["top_k"]), seed=22)
    make_input(os.path.join(out, "x_mixtral.safetensors"), mx["hidden"], tokens=45, dtype="bf16", seed=23)
    make_input(os.path.join(out, "x_qwen.safetensors"), qw["hidden"], tokens=33, dtype="f32", seed=24)
    bad = os.path.join(out, "bad")
    os.makedirs(bad, exist_ok=True)
    for case in CASES:
        corrupt(os.path.join(out, "ds_fp8" if case == "missing_scale" else "ds_bf16"), os.path.join(bad, case), case)
    # Inputs that do not fit the model.
    make_input(os.path.join(bad, "x_wrong_hidden.safetensors"), ds["hidden"] + 8, tokens=8)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(8, ds["hidden"])).astype(np.float32)
    write_safetensors(os.path.join(bad, "x_idx_out_of_range.safetensors"),
                      [("hidden_states", "F32", x), ("topk_idx", "I32", np.full((8, ds["top_k"]), 99, np.int32)),
                       ("topk_weights", "F32", np.full((8, ds["top_k"]), 0.25, np.float32))])
    write_safetensors(os.path.join(bad, "x_idx_as_float.safetensors"),
                      [("hidden_states", "F32", x), ("topk_idx", "F32", np.zeros((8, ds["top_k"]), np.float32)),
                       ("topk_weights", "F32", np.full((8, ds["top_k"]), 0.25, np.float32))])
    write_safetensors(os.path.join(bad, "x_no_hidden.safetensors"), [("x", "F32", x)])
    print(f"wrote test checkpoints and inputs under {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("dir")
    c.add_argument("--family", choices=sorted(FAMILY_DEFAULTS), default="deepseek")
    c.add_argument("--dtype", choices=["bf16", "fp8", "f32"], default="bf16")
    c.add_argument("--files", type=int, default=3)
    c.add_argument("--moe-layer", type=int, default=1)
    c.add_argument("--no-bias", action="store_true")
    c.add_argument("--seed", type=int, default=1)
    for k in ("hidden", "inter", "experts", "top_k", "shared"):
        c.add_argument("--" + k.replace("_", "-"), type=int, dest=k)
    i = sub.add_parser("input")
    i.add_argument("file")
    i.add_argument("--hidden", type=int, required=True)
    i.add_argument("--tokens", type=int, default=64)
    i.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    i.add_argument("--routing", type=int, nargs=2, metavar=("E", "K"))
    i.add_argument("--seed", type=int, default=2)
    k = sub.add_parser("corrupt")
    k.add_argument("src")
    k.add_argument("dst")
    k.add_argument("case", choices=CASES)
    s = sub.add_parser("suite")
    s.add_argument("dir")
    a = ap.parse_args()
    if a.cmd == "checkpoint":
        p = make_checkpoint(a.dir, a.family, a.dtype, a.files, a.moe_layer, not a.no_bias, a.seed, hidden=a.hidden,
                            inter=a.inter, experts=a.experts, top_k=a.top_k, shared=a.shared)
        print(f"wrote {a.family} {a.dtype} checkpoint to {a.dir}: {p}")
    elif a.cmd == "input":
        make_input(a.file, a.hidden, a.tokens, a.dtype, tuple(a.routing) if a.routing else None, a.seed)
        print(f"wrote {a.file}")
    elif a.cmd == "corrupt":
        print(f"{a.case}: {corrupt(a.src, a.dst, a.case)}")
    else:
        suite(a.dir)


if __name__ == "__main__":
    main()
