#!/usr/bin/env python3
"""End-to-end checks of `waveep run` under mpirun (stdlib only).

usage: cli_test.py <mpiexec> <waveep> <case>
cases:
  verify       --verify passes at bf16 and fp8 for np 1, 2, 4 (tiny)
  checksum     output_checksum identical for waves 1,2,3,4,8, for repeated runs, and for np 1/2/4 over the same
               global tokens
  trace        --trace writes Chrome JSON in which some comm span overlaps some compute span (W > 1)
  real_shape   qwen3-30b-a3b, 64 tokens per rank, np 2, verified
"""
import json
import os
import subprocess
import sys
import tempfile

MPIEXEC, WAVEEP, CASE = sys.argv[1], sys.argv[2], sys.argv[3]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1")
TMP = tempfile.mkdtemp(prefix="waveep_cli_")


def run(np_, *flags, timeout=600):
    out = os.path.join(TMP, f"r{len(os.listdir(TMP))}.json")
    cmd = [MPIEXEC, "-np", str(np_), "--oversubscribe", "--bind-to", "none", WAVEEP, "run", "--quiet",
           f"--json={out}", *flags]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    print("$", " ".join(cmd[4:]), "->", p.returncode)
    print(p.stdout.strip())
    if p.returncode != 0:
        print(p.stderr)
        raise SystemExit(f"FAIL: exit {p.returncode}")
    return json.load(open(out))


def case_verify():
    for np_ in (1, 2, 4):
        for dtype in ("bf16", "fp8"):
            j = run(np_, "--model=tiny", f"--dtype={dtype}", "--verify", "--steps=2", "--tokens_per_rank=64")
            assert j["verify_passed"], j
            assert j["verify_max_rel_err"] <= j["verify_tolerance"], j
            assert j["ranks"] == np_ and j["dtype"] == dtype and j["waves"] == 1
            for key in ("model", "tokens_per_rank", "step_ms_median", "tflops", "output_checksum"):
                assert key in j, key


def case_checksum():
    sums = {}
    for waves in (1, 2, 3, 4, 8):
        j = run(2, "--model=tiny", f"--waves={waves}", "--tokens_per_rank=48", "--steps=2", "--routing=skewed")
        sums[f"np2 w{waves}"] = j["output_checksum"]
    sums["np2 w4 again"] = run(2, "--model=tiny", "--waves=4", "--tokens_per_rank=48", "--routing=skewed")[
        "output_checksum"]
    sums["np1 w8"] = run(1, "--model=tiny", "--waves=8", "--tokens_per_rank=96", "--routing=skewed")["output_checksum"]
    sums["np4 w2"] = run(4, "--model=tiny", "--waves=2", "--tokens_per_rank=24", "--routing=skewed")["output_checksum"]
    print(json.dumps(sums, indent=1))
    assert len(set(sums.values())) == 1, f"checksums differ: {sums}"
    other = run(2, "--model=tiny", "--waves=2", "--tokens_per_rank=48", "--routing=skewed", "--seed=2")
    assert other["output_checksum"] not in sums.values(), "checksum does not depend on the data"


def case_trace():
    trace = os.path.join(TMP, "trace.json")
    j = run(2, "--model=tiny", "--waves=4", "--tokens_per_rank=4096", f"--trace={trace}", "--steps=2")
    t = json.load(open(trace))
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in t["traceEvents"] if e.get("name") == "thread_name"}
    spans = [(e["pid"], names[(e["pid"], e["tid"])], e["name"], e["ts"], e["ts"] + e["dur"])
             for e in t["traceEvents"] if e["ph"] == "X"]
    pids = {s[0] for s in spans}
    assert pids == {0, 1}, pids
    for w in range(4):
        for kind in ("dispatch", "gemm", "combine"):
            assert any(s[2] == f"{kind}({w})" for s in spans), f"missing {kind}({w})"
    overlap = any(a[0] == b[0] and a[1] == "comm" and b[1] == "compute" and a[3] < b[4] and b[3] < a[4]
                  for a in spans for b in spans)
    assert overlap, "no comm span overlaps a compute span"
    assert 0 <= j["comm_busy_ms_median"] and 0 <= j["compute_busy_ms_median"]


def case_real_shape():
    j = run(2, "--model=qwen3-30b-a3b", "--tokens_per_rank=64", "--verify", "--steps=2")
    assert j["verify_passed"], j


{"verify": case_verify, "checksum": case_checksum, "trace": case_trace, "real_shape": case_real_shape}[CASE]()
print(f"PASS {CASE}")
