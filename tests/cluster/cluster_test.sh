#!/usr/bin/env bash
# Across hosts, for real: an emulated cluster (scripts/cluster.sh: network namespaces with their own hostnames,
# veth NICs into a bridge, tc-shaped) and mpirun --hostfile over it. Each case brings up its own hosts (own prefix and
# subnet inside 198.18.0.0/15) and removes them on every exit, failed or not.
#
#   cluster_test.sh WAVEEP verify_2x2   # 2 hosts x 2 ranks, --verify, checksum == the single-host run's
#   cluster_test.sh WAVEEP probe_nic    # 4 hosts x 1 rank, host 3 at half rate: probe within 10%, check names it
#   cluster_test.sh WAVEEP slurm_sbatch # Slurm on 2 hosts: scripts/slurm/*.sbatch through sbatch, checked
#   cluster_test.sh WAVEEP ucx_2x2 CONFORMANCE_TEST  # the ucx backend on 2 hosts x 2 ranks: the comm conformance
#                                       # suite, --verify with the single-host checksum, a killed rank named in < 5 s
#
# Exit 77 (ctest: skipped) with the reason when this machine cannot emulate hosts (not root, no namespaces, no tc)
# or, for slurm_sbatch, has no Slurm to start (slurmctld, slurmd, slurm-client, munge).
set -euo pipefail
WAVEEP="$1"
CASE="$2"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER="$ROOT/scripts/cluster.sh"
WORK="$(mktemp -d)"
case "$CASE" in
  verify_2x2) export WAVEEP_CLUSTER_PREFIX=wvpta SUBNET=198.18.71 ;;
  probe_nic) export WAVEEP_CLUSTER_PREFIX=wvptb SUBNET=198.18.72 ;;
  slurm_sbatch) export WAVEEP_CLUSTER_PREFIX=wvptc SUBNET=198.18.73 ;;
  ucx_2x2) export WAVEEP_CLUSTER_PREFIX=wvptd SUBNET=198.18.74 ;;
  *) echo "unknown case '$CASE'" >&2; exit 2 ;;
esac
export WAVEEP_CLUSTER_DIR="$WORK/cluster"
cleanup() {
  "$CLUSTER" down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
  echo "FAIL [$CASE]: $*" >&2
  exit 1
}
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP [$CASE]: needs root to make network namespaces (CI runs as root)"
  exit 77
fi

up() {
  local rc=0
  "$CLUSTER" up --subnet "$SUBNET" "$@" || rc=$?
  if [[ $rc -eq 77 ]]; then
    echo "SKIP [$CASE]: this machine cannot emulate hosts$([[ "$*" == *--slurm* ]] && echo " or start Slurm")" \
      "(see the line above)"
    exit 77
  fi
  [[ $rc -eq 0 ]] || fail "scripts/cluster.sh up $* exited $rc"
}

# The reference every case compares with: 4 ranks on this host (mpi), 4 x 64 tokens, 2 steps. Prints the checksum.
single_host_checksum() {
  timeout 120 mpirun -np 4 --oversubscribe --bind-to none "$WAVEEP" run --model=tiny --tokens_per_rank=64 \
    --steps=2 --timeout_s=60 >"$WORK/one.txt" 2>&1 || { cat "$WORK/one.txt" >&2; fail "single-host run failed"; }
  awk '/output_checksum/{print $2}' "$WORK/one.txt"
}

case "$CASE" in
  verify_2x2)
    up --hosts 2 --slots 2 --rate 2gbit
    # Single host first, same 256 global tokens (4 x 64): the reference checksum.
    one=$(single_host_checksum)
    timeout 180 "$CLUSTER" mpirun -np 4 --map-by ppr:2:node "$WAVEEP" run --model=tiny --tokens_per_rank=64 \
      --steps=2 --waves=2 --verify --timeout_s=60 >"$WORK/two.txt" 2>&1 || { cat "$WORK/two.txt"; fail "2-host run failed"; }
    cat "$WORK/two.txt"
    grep -q "ranks=4 nodes=2" "$WORK/two.txt" || fail "expected 'ranks=4 nodes=2' (one node per emulated host)"
    grep -q "verify      PASS" "$WORK/two.txt" || fail "--verify did not pass across hosts"
    two=$(awk '/output_checksum/{print $2}' "$WORK/two.txt")
    [[ -n "$one" && "$one" == "$two" ]] || fail "checksum across hosts '$two' != single host '$one'"
    # The ranks really talked over the emulated NICs: both hosts' NICs carried the exchange (tc counters).
    sent=$("$CLUSTER" status | awk '/sends:/{print $3}' | sort -n | head -1)
    [[ "${sent:-0}" -gt 100000 ]] || fail "a host's NIC sent only ${sent:-0} bytes: the exchange did not cross it"
    echo "PASS [$CASE]: 2 hosts x 2 ranks, verify PASS, checksum $two == single host"
    ;;
  probe_nic)
    up --hosts 4 --slots 1 --rate 1gbit --node-rate 3=500mbit
    timeout 240 "$CLUSTER" mpirun -np 4 --map-by ppr:1:node "$WAVEEP" topo probe --model=tiny \
      --probe_max_bytes=65536 --probe_pair_bytes=1048576 --probe_pair_iters=4 --probe_gemm_min_ms=5 \
      --probe_gemm_max_rows=64 --out="$WORK/probed.json" >"$WORK/probe.txt" 2>&1 ||
      { cat "$WORK/probe.txt"; fail "probe failed"; }
    grep -E "topo probe\] (pair|[0-9]+ ranks)" "$WORK/probe.txt" || true
    python3 - "$WORK/probed.json" <<'PY' || fail "probed NIC rates off (see above)"
import json, sys
c = json.load(open(sys.argv[1]))
assert c["nodes"] == 4 and c["devices_per_node"] == 1, (c["nodes"], c["devices_per_node"])
nic = [l for l in c["links"] if l["name"] == "nic"]
assert len(nic) == 1, c["links"]
rates = {int(k): v for k, v in nic[0]["node_bw_gbps"].items()}
want = {0: 0.125, 1: 0.125, 2: 0.125, 3: 0.0625}  # 1 Gbit/s and 500 Mbit/s in GB/s
bad = False
for node, w in want.items():
    err = rates[node] / w - 1
    print(f"node {node}: probed {rates[node]:.4f} GB/s, shaped {w:.4f} GB/s ({100 * err:+.1f}%)")
    bad |= abs(err) > 0.10
hosts = c["probe"]["hostnames"].split(",")
assert hosts == ["wvptb-h0", "wvptb-h1", "wvptb-h2", "wvptb-h3"], hosts
sys.exit(1 if bad else 0)
PY
    "$WAVEEP" topo check --model=tiny --cluster="$WORK/probed.json" --json="$WORK/check.json" >"$WORK/check.txt" ||
      { cat "$WORK/check.txt"; fail "topo check failed"; }
    cat "$WORK/check.txt"
    verdict=$(grep "^verdict:" "$WORK/check.txt")
    [[ "$verdict" == *"worst link n3.d0 -> net (net on host wvptb-h3)"* ]] ||
      fail "check should name node 3 (host wvptb-h3, the 500 Mbit/s NIC) as the worst link: $verdict"
    # Only node 3's NIC is the slowest: every other NIC row has a larger margin.
    python3 - "$WORK/check.json" <<'PY' || fail "check's rows do not single out node 3"
import json, sys
j = json.load(open(sys.argv[1]))
rows = [l for l in j["links"] if "-> net" in l["link"]]
worst = min(rows, key=lambda l: l["margin"])
others = [l for l in rows if l is not worst]
assert worst["link"].startswith("n3."), worst
assert all(l["margin"] > 1.5 * worst["margin"] for l in others), rows
print("slowest NIC:", worst["link"], "margin", worst["margin"])
PY
    echo "PASS [$CASE]: probe within 10% on every NIC; check names n3 (wvptb-h3)"
    ;;
  slurm_sbatch)
    up --hosts 2 --slots 2 --rate 2gbit --slurm
    eval "$("$CLUSTER" env)"  # SLURM_CONF
    # The reference: the same 4 x 64 tokens on one host under mpirun.
    one=$(single_host_checksum)
    # Submits a job script as a user would (from a directory of theirs, the checkout named by WAVEEP_HOME) and waits
    # for it with a deadline; prints the job's output; fails unless the job COMPLETED (Slurm: every step exited 0).
    submit() {  # name deadline_s sbatch-args...
      local name="$1" deadline=$((SECONDS + $2)) jid state=""
      shift 2
      jid=$(cd "$WORK/jobs" && WAVEEP_HOME="$ROOT" WAVEEP="$WAVEEP" sbatch --parsable --job-name="$name" \
        --output="$WORK/jobs/$name.out" "$@") || fail "sbatch $* failed"
      jid="${jid%%;*}"
      while ((SECONDS < deadline)); do
        state=$(scontrol show job "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' || true)
        [[ "$state" == *PENDING* || "$state" == *RUNNING* || "$state" == *CONFIGURING* || "$state" == *COMPLETING* ]] ||
          break
        sleep 0.5
      done
      echo "---- job $jid ($name): $state"
      cat "$WORK/jobs/$name.out" 2>/dev/null || true
      if [[ "$state" != *COMPLETED* ]]; then
        scancel "$jid" 2>/dev/null || true
        scontrol show job "$jid" 2>/dev/null | grep -E "JobState|ExitCode|Reason" || true
        return 1
      fi
    }
    mkdir -p "$WORK/jobs"
    submit verify 120 "$ROOT/scripts/slurm/verified_run.sbatch" --tokens_per_rank=64 --steps=2 --timeout_s=60 ||
      fail "the verified job did not complete"
    out=$(echo "$WORK/jobs/verify-"*)  # the job's output directory, verify-<job id>
    grep -q "ranks=4 nodes=2" "$out/run.txt" || fail "expected 'ranks=4 nodes=2' from 2 nodes x 2 tasks"
    grep -q "verify      PASS" "$out/run.txt" || fail "--verify did not pass under srun"
    two=$(awk '/output_checksum/{print $2}' "$out/run.txt")
    [[ -n "$one" && "$one" == "$two" ]] || fail "checksum under srun '$two' != mpirun on one host '$one'"
    python3 - "$out/run.json" <<'PY' || fail "run.json does not say srun, 4 ranks, 2 nodes"
import json, sys
j = json.load(open(sys.argv[1]))
assert (j["launcher"], j["ranks"], j["nodes"]) == ("srun", 4, 2), (j["launcher"], j["ranks"], j["nodes"])
PY
    # The sweep script, cut to one small point per layout (no probe): it must write every layout's rows and all.csv.
    NODES_LIST="1 2" PER_NODE_LIST=2 TOKENS=64 WAVES=1,2 STEPS=2 PROBE=0 \
      submit sweep 120 "$ROOT/scripts/slurm/sweep.sbatch" --timeout_s=60 || fail "the sweep job did not complete"
    python3 - "$WORK"/jobs/sweep-*/all.csv <<'PY' || fail "the sweep's all.csv is not 1x2 and 2x2 at W=1,2"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
got = sorted((int(r["nodes"]), int(r["ranks"]), int(r["waves"])) for r in rows)
assert got == [(1, 2, 1), (1, 2, 2), (2, 4, 1), (2, 4, 2)], got
PY
    if python3 -c "import matplotlib" 2>/dev/null || /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
      for f in speedup_vs_waves time_vs_tokens scaling_vs_ranks; do
        compgen -G "$WORK/jobs/sweep-*/plots/$f.png" >/dev/null || fail "the sweep made no plots/$f.png"
      done
    fi
    # srun without a PMI plugin: refused by name, exit 2, before MPI_Init (not Open MPI's page, not N lone jobs).
    rc=0
    (cd "$WORK" && timeout 60 srun --mpi=none -N2 -n2 "$WAVEEP" run --model=tiny >"$WORK/nopmi.txt" 2>&1) || rc=$?
    cat "$WORK/nopmi.txt"
    [[ $rc -ne 0 ]] || fail "srun --mpi=none ran"
    grep -q "started by srun --mpi=none, which gives the tasks no PMI" "$WORK/nopmi.txt" ||
      fail "srun --mpi=none should be refused with its reason"
    grep -q "exit code 2" "$WORK/nopmi.txt" || fail "srun --mpi=none should exit 2 (bad launch)"
    echo "PASS [$CASE]: sbatch verified run on 2 nodes x 2 (srun, PMIx), checksum $two == mpirun; sweep rows;" \
      "srun --mpi=none refused"
    ;;
  ucx_2x2)
    CONFORMANCE="${3:?ucx_2x2 needs the comm conformance test binary}"
    up --hosts 2 --slots 2 --rate 2gbit
    # 1. The conformance suite, ucx only, 2 ranks on each host: shared memory inside a host, TCP between them.
    timeout 240 "$CLUSTER" mpirun -np 4 --map-by ppr:2:node "$CONFORMANCE" --gtest_filter="*/ucx:*/ucx_put" \
      >"$WORK/conf.txt" 2>&1 || { grep -B3 -A12 "Failure" "$WORK/conf.txt" | head -80; fail "the conformance suite failed on ucx across hosts"; }
    grep -E "^\S*\[  PASSED  \]" "$WORK/conf.txt" | head -1
    # 2. A verified run: the single-host checksum (mpi, one host) across hosts on ucx.
    one=$(single_host_checksum)
    timeout 180 "$CLUSTER" mpirun -np 4 --map-by ppr:2:node "$WAVEEP" run --model=tiny --tokens_per_rank=64 \
      --steps=2 --waves=2 --verify --backend=ucx --timeout_s=60 >"$WORK/two.txt" 2>&1 ||
      { cat "$WORK/two.txt"; fail "2-host run on ucx failed"; }
    grep -q "backend=ucx" "$WORK/two.txt" || fail "the run did not use the ucx backend"
    grep -q "verify      PASS" "$WORK/two.txt" || fail "--verify did not pass on ucx across hosts"
    two=$(awk '/output_checksum/{print $2}' "$WORK/two.txt")
    [[ -n "$one" && "$one" == "$two" ]] || fail "checksum on ucx across hosts '$two' != single host '$one'"
    # 3. A rank killed mid-run (rank 2, on the second host): the others gone within 5 s, the error naming it.
    "$ROOT/tests/comm/ucx_dead_peer_test.sh" "$WAVEEP" 2 "$WAVEEP_CLUSTER_PREFIX-h1" -- \
      "$CLUSTER" mpirun -np 4 --map-by ppr:2:node || fail "a killed rank was not handled as it must be"
    echo "PASS [$CASE]: conformance suite on ucx across 2 hosts x 2; verify PASS, checksum $two == single host;" \
      "a killed rank ended the job within 5 s, named"
    ;;
esac
