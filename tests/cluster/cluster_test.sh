#!/usr/bin/env bash
# Across hosts, for real: an emulated cluster (scripts/cluster.sh: network namespaces with their own hostnames,
# veth NICs into a bridge, tc-shaped) and mpirun --hostfile over it. Each case brings up its own hosts (own prefix and
# subnet inside 198.18.0.0/15) and removes them on every exit, failed or not.
#
#   cluster_test.sh WAVEEP verify_2x2   # 2 hosts x 2 ranks, --verify, checksum == the single-host run's
#   cluster_test.sh WAVEEP probe_nic    # 4 hosts x 1 rank, host 3 at half rate: probe within 10%, check names it
#
# Exit 77 (ctest: skipped) with the reason when this machine cannot emulate hosts (not root, no namespaces, no tc).
set -euo pipefail
WAVEEP="$1"
CASE="$2"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CLUSTER="$ROOT/scripts/cluster.sh"
WORK="$(mktemp -d)"
case "$CASE" in
  verify_2x2) export WAVEEP_CLUSTER_PREFIX=wvpta SUBNET=198.18.71 ;;
  probe_nic) export WAVEEP_CLUSTER_PREFIX=wvptb SUBNET=198.18.72 ;;
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
    echo "SKIP [$CASE]: this machine cannot emulate hosts (see the line above)"
    exit 77
  fi
  [[ $rc -eq 0 ]] || fail "scripts/cluster.sh up $* exited $rc"
}

case "$CASE" in
  verify_2x2)
    up --hosts 2 --slots 2 --rate 2gbit
    # Single host first, same 256 global tokens (4 x 64): the reference checksum.
    timeout 120 mpirun -np 4 --oversubscribe --bind-to none "$WAVEEP" run --model=tiny --tokens_per_rank=64 \
      --steps=2 --timeout_s=60 >"$WORK/one.txt" 2>&1 || { cat "$WORK/one.txt"; fail "single-host run failed"; }
    timeout 180 "$CLUSTER" mpirun -np 4 --map-by ppr:2:node "$WAVEEP" run --model=tiny --tokens_per_rank=64 \
      --steps=2 --waves=2 --verify --timeout_s=60 >"$WORK/two.txt" 2>&1 || { cat "$WORK/two.txt"; fail "2-host run failed"; }
    cat "$WORK/two.txt"
    grep -q "ranks=4 nodes=2" "$WORK/two.txt" || fail "expected 'ranks=4 nodes=2' (one node per emulated host)"
    grep -q "verify      PASS" "$WORK/two.txt" || fail "--verify did not pass across hosts"
    one=$(awk '/output_checksum/{print $2}' "$WORK/one.txt")
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
esac
