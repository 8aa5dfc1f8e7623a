#!/usr/bin/env python3
"""End-to-end checks of `waveep run --checkpoint --input --output` under mpirun (python3 + numpy).

usage: checkpoint_cli_test.py <mpiexec> <waveep> <suite dir (make_test_checkpoint.py suite)> <case>
cases:
  np124          DeepSeek BF16 (router), DeepSeek FP8 (+ fp8 dispatch, routing from the file), Mixtral BF16:
                 np 1, 2, 4 with --verify; the --output files are identical across np
  checker        scripts/check_layer.py against waveep's --output at np 2 (four checkpoints, bf16 and fp8 dispatch)
                 passes, and fails on a tampered output
  bytes_read     np 4: every rank reads exactly its 4 experts + shared expert + router
  synthetic      --checkpoint without --input (synthetic tokens, the checkpoint's router), --output without
                 --checkpoint (synthetic weights): both verify and write the expected shapes
  bad:<name>     a bad checkpoint or input: non-zero exit, exactly one error line (from rank 0) naming the problem
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MPIEXEC, WAVEEP, SUITE, CASE = sys.argv[1:5]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from safetensors_np import SafetensorsFile  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1")
TMP = tempfile.mkdtemp(prefix="waveep_ckpt_cli_")


def mpirun(np_, *flags, timeout=300):
    cmd = [MPIEXEC, "-np", str(np_), "--oversubscribe", "--bind-to", "none", WAVEEP, "run", "--quiet", "--steps=1",
           "--warmup=0", *flags]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    print("$", " ".join(cmd[6:]), "->", p.returncode)
    return p


def run(np_, *flags):
    out = os.path.join(TMP, f"r{len(os.listdir(TMP))}.json")
    p = mpirun(np_, f"--json={out}", *flags)
    print(p.stdout.strip())
    if p.returncode != 0:
        print(p.stderr)
        raise SystemExit(f"FAIL: exit {p.returncode}")
    return json.load(open(out))


def S(*parts):
    return os.path.join(SUITE, *parts)


def tensors(path):
    f = SafetensorsFile(path)
    return {n: f.raw(n).copy() for n in ("output", "topk_idx", "topk_weights")}, f.metadata


def case_np124():
    runs = [("ds_bf16", "x_f32", "bf16", "router"), ("ds_fp8", "x_bf16_routed", "fp8", "file"),
            ("mixtral_bf16", "x_mixtral", "bf16", "router")]
    for ckpt, inp, dtype, routing in runs:
        ref = None
        for np_ in (1, 2, 4):
            out = os.path.join(TMP, f"{ckpt}_{np_}.safetensors")
            j = run(np_, f"--checkpoint={S(ckpt)}", f"--input={S(inp + '.safetensors')}", f"--output={out}",
                    f"--dtype={dtype}", "--verify", "--waves=2")
            assert j["verify_passed"] and j["ranks"] == np_, j
            assert j["routing_source"] == routing and j["checkpoint"] == S(ckpt), j
            assert j["checkpoint_bytes_read_max_rank"] > 0, j
            t, md = tensors(out)
            assert md["ranks"] == str(np_) and md["dispatch_dtype"] == dtype, md
            assert t["output"].shape[0] == j["total_tokens"], (t["output"].shape, j["total_tokens"])
            assert np.all(np.isfinite(t["output"]))
            if ref is None:
                ref = t
            for name in t:
                assert np.array_equal(t[name], ref[name]), f"{ckpt}: {name} differs between np 1 and np {np_}"
        print(f"OK {ckpt}: np 1/2/4 verified, outputs bitwise identical")


def checker(ckpt, inp, out, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "check_layer.py"), f"--checkpoint={ckpt}",
           f"--input={inp}", f"--output={out}", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(p.stdout.strip())
    if p.stderr:
        print(p.stderr.strip())
    return p.returncode


def case_checker():
    runs = [("ds_bf16", "x_f32", "bf16"), ("ds_fp8", "x_f32", "fp8"), ("ds_fp8", "x_bf16_routed", "bf16"),
            ("mixtral_bf16", "x_mixtral", "bf16"), ("qwen_bf16", "x_qwen", "fp8")]
    for ckpt, inp, dtype in runs:
        out = os.path.join(TMP, f"check_{ckpt}_{inp}.safetensors")
        run(2, f"--checkpoint={S(ckpt)}", f"--input={S(inp + '.safetensors')}", f"--output={out}", f"--dtype={dtype}",
            "--waves=2")
        rc = checker(S(ckpt), S(inp + ".safetensors"), out)
        assert rc == 0, f"check_layer.py failed ({rc}) for {ckpt} / {inp} / {dtype}"
    # A wrong output must fail: perturb one token by 2% (the tolerance is 2^-8 ~ 0.4%).
    f = SafetensorsFile(out)
    header = dict(f.header)
    blob = bytearray(open(out, "rb").read())
    b, e = header["output"]["data_offsets"]
    o = np.frombuffer(bytes(blob[f.data_start + b:f.data_start + e]), dtype=np.float32).copy()
    h = header["output"]["shape"][1]
    o[3 * h:4 * h] *= 1.02
    blob[f.data_start + b:f.data_start + e] = o.tobytes()
    bad = os.path.join(TMP, "tampered.safetensors")
    open(bad, "wb").write(bytes(blob))
    rc = checker(S("qwen_bf16"), S("x_qwen.safetensors"), bad)
    assert rc == 1, f"check_layer.py accepted a tampered output (exit {rc})"
    print("OK check_layer.py passes on waveep's outputs and fails on a tampered one")


def case_bytes_read():
    j = run(4, f"--checkpoint={S('ds_bf16')}", f"--input={S('x_f32.safetensors')}")
    cfg = json.load(open(S("ds_bf16", "config.json")))
    h, i, e = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"]
    # own experts + shared expert + router (BF16) + e_score_correction_bias (F32)
    per_rank = (e // 4) * 3 * h * i * 2 + 3 * h * i * 2 + e * h * 2 + e * 4
    assert j["checkpoint_bytes_read_max_rank"] == per_rank, (j["checkpoint_bytes_read_max_rank"], per_rank)
    assert j["checkpoint_bytes_read_total"] == 4 * per_rank, j
    print(f"OK every rank read {per_rank} bytes: its {e // 4} experts, the shared expert and the router + bias")


def case_synthetic():
    j = run(2, f"--checkpoint={S('ds_bf16')}", "--tokens_per_rank=24", "--verify")
    assert j["verify_passed"] and j["routing_source"] == "router" and j["layer"] == 1, j
    out = os.path.join(TMP, "synthetic.safetensors")
    j = run(2, "--model=tiny", "--tokens_per_rank=16", "--verify", f"--output={out}")
    t, md = tensors(out)
    assert t["output"].shape == (32, 256) and t["topk_idx"].shape == (32, 4) and t["topk_idx"].dtype == np.int32
    assert md["checkpoint"] == "" and md["routing"] == "gate", md
    print("OK synthetic tokens on a checkpoint; --output on synthetic weights")


BAD = {
    # name: (flags, regex fragments that must all appear in the one error line)
    "header_json": (["--checkpoint=bad/header_json"], ["rank 1: ", "model-00003-of-00003.safetensors", "malformed JSON"]),
    "truncated": (["--checkpoint=bad/truncated"], ["model-00003-of-00003.safetensors", "experts.15.down_proj.weight",
                                                   "truncated"]),
    "header_len": (["--checkpoint=bad/header_len"], ["model-00003-of-00003.safetensors", "exceeds the file size"]),
    "dtype": (["--checkpoint=bad/dtype"], ["experts.15.up_proj.weight", "dtype I16 is not a floating-point type"]),
    "shape": (["--checkpoint=bad/shape"], ["experts.15.up_proj.weight", "shape [256, 96]", "expected [96, 256]"]),
    "missing_tensor": (["--checkpoint=bad/missing_tensor"], ["experts.15.up_proj.weight", "not in the checkpoint",
                                                             "model.safetensors.index.json"]),
    "missing_index_entry": (["--checkpoint=bad/missing_index_entry"], ["experts.15.up_proj.weight",
                                                                       "model.safetensors.index.json"]),
    "missing_file": (["--checkpoint=bad/missing_file"], ["model-00003-of-00003.safetensors", "does not exist"]),
    "missing_scale": (["--checkpoint=bad/missing_scale"], ["experts.15.down_proj.weight_scale_inv", "F8_E4M3"]),
    "overlap": (["--checkpoint=bad/overlap"], ["model-00003-of-00003.safetensors", "overlap"]),
    "nan_weight": (["--checkpoint=bad/nan_weight"], ["model-00003-of-00003.safetensors", "experts.15.up_proj.weight",
                                                     "nan", "must be finite"]),
    "trailing_bytes": (["--checkpoint=bad/trailing_bytes"], ["model-00003-of-00003.safetensors",
                                                             "24 trailing byte(s) after the last tensor"]),
    "nested_shape": (["--checkpoint=bad/nested_shape"], ["model-00003-of-00003.safetensors",
                                                         "nested deeper than 64"]),
    "input_wrong_hidden": (["--checkpoint=ds_bf16", "--input=bad/x_wrong_hidden.safetensors"],
                           ["x_wrong_hidden.safetensors", "'hidden_states'", "[8, 264]", "H=256"]),
    "input_idx_out_of_range": (["--checkpoint=ds_bf16", "--input=bad/x_idx_out_of_range.safetensors"],
                               ["'topk_idx'", "expert 99", "[0, 16)"]),
    "input_idx_as_float": (["--checkpoint=ds_bf16", "--input=bad/x_idx_as_float.safetensors"],
                           ["'topk_idx'", "F32", "I32 or I64"]),
    "input_no_hidden": (["--checkpoint=ds_bf16", "--input=bad/x_no_hidden.safetensors"],
                        ["x_no_hidden.safetensors", "no tensor 'hidden_states'"]),
    "input_missing": (["--checkpoint=ds_bf16", "--input=bad/nope.safetensors"], ["nope.safetensors", "no such file"]),
    "input_no_routing_no_router": (["--model=" + "SUITE/ds_bf16/config.json", "--input=x_f32.safetensors"],
                                   ["no topk_idx / topk_weights", "--checkpoint"]),
    "checkpoint_missing": (["--checkpoint=nope"], ["--checkpoint=", "nope", "no such directory"]),
    "dense_layer": (["--checkpoint=ds_bf16", "--layer=0"], ["--layer=0", "layers with experts: 1",
                                                            "first_k_dense_replace=1"]),
    "layer_without_checkpoint": (["--layer=3"], ["--layer needs --checkpoint"]),
}


def case_bad(name):
    flags, parts = BAD[name]
    flags = [f.replace("=bad/", "=" + S("bad") + "/").replace("--checkpoint=ds_bf16", "--checkpoint=" + S("ds_bf16"))
             .replace("=x_f32", "=" + S("x_f32")).replace("SUITE", SUITE) for f in flags]
    if name == "checkpoint_missing":
        flags = ["--checkpoint=" + S("nope")]
    if "--input" not in " ".join(flags) and "--checkpoint" in " ".join(flags):
        flags.append("--input=" + S("x_bf16_routed.safetensors"))
    try:
        p = mpirun(2, *flags, timeout=60)
    except subprocess.TimeoutExpired:
        raise SystemExit("FAIL: timed out (hang)")
    text = p.stdout + p.stderr
    print(text.strip()[-2000:])
    errors = [line for line in text.splitlines() if "error:" in line]
    assert p.returncode != 0, "expected a non-zero exit"
    assert len(errors) == 1, f"expected exactly one error line, got {len(errors)}"
    for part in parts:
        assert part in errors[0], f"error line lacks {part!r}"
    print(f"OK bad:{name}: exit {p.returncode}, one error line")


if CASE.startswith("bad:"):
    case_bad(CASE[4:])
else:
    globals()["case_" + CASE]()
