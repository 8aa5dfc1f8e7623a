#!/usr/bin/env bash
# Wave sweep across emulated hosts (scripts/cluster.sh): for every (hosts, ranks per host, NIC rate) it brings the
# cluster up, probes it (`waveep topo probe`, so the model sees the shaped NICs), and runs `waveep bench --cluster`
# over the models, tokens and waves: measured step time, speedup over W=1 in the same run, and the topology model's
# prediction side by side. Needs root. Everything it made is removed on exit.
#
#   sudo scripts/cluster_bench.sh                                       # the default sweep (see below)
#   HOSTS="2" PER_HOST="1" RATES="1600mbit" MODELS=tiny TOKENS=4096 sudo -E scripts/cluster_bench.sh
# Environment: HOSTS (list, default "2 4"), PER_HOST (ranks per host, default "1 2"), RATES (tc rates, default
# "500mbit 1gbit 2gbit 5gbit"), MODELS (default tiny,small-i), TOKENS (default 4096), WAVES (default 1,2,4,8),
# STEPS (default 5), OUT_DIR (default out/cluster_bench), EXTRA (more bench flags).
# Output: OUT_DIR/h<H>x<P>_<rate>/{probe.json,bench.csv,bench.json,bench.txt} and OUT_DIR/all.csv (one row per point,
# with hosts, per_host and rate_mbit columns added).
set -euo pipefail
source "$(dirname "$0")/common.sh"

HOSTS="${HOSTS:-2 4}"
PER_HOST="${PER_HOST:-1 2}"
RATES="${RATES:-500mbit 1gbit 2gbit 5gbit}"
MODELS="${MODELS:-tiny,small-i}"
TOKENS="${TOKENS:-4096}"
WAVES="${WAVES:-1,2,4,8}"
STEPS="${STEPS:-5}"
OUT_DIR="${OUT_DIR:-$WAVEEP_ROOT/out/cluster_bench}"
EXTRA="${EXTRA:-}"
CLUSTER="$WAVEEP_ROOT/scripts/cluster.sh"
export WAVEEP_CLUSTER_PREFIX="${WAVEEP_CLUSTER_PREFIX:-wvpb}"

[[ $(id -u) -eq 0 ]] || { echo "cluster_bench.sh: needs root (network namespaces); run with sudo -E" >&2; exit 2; }
waveep_build waveep
WAVEEP="$WAVEEP_BUILD_DIR/bin/waveep"
mkdir -p "$OUT_DIR"
trap '"$CLUSTER" down >/dev/null 2>&1 || true' EXIT
all="$OUT_DIR/all.csv"
: >"$all"
for h in $HOSTS; do
  for p in $PER_HOST; do
    for rate in $RATES; do
      dir="$OUT_DIR/h${h}x${p}_${rate}"
      mkdir -p "$dir"
      np=$((h * p))
      log "hosts=$h ranks/host=$p rate=$rate (np=$np)"
      "$CLUSTER" up --hosts "$h" --slots "$p" --rate "$rate" >/dev/null
      timeout 600 "$CLUSTER" mpirun -np "$np" --map-by "ppr:$p:node" "$WAVEEP" topo probe --model=tiny \
        --probe_max_bytes=4194304 --probe_pair_bytes=4194304 --probe_pair_iters=4 --out="$dir/probe.json" \
        >"$dir/probe.txt" 2>&1 || { cat "$dir/probe.txt"; exit 1; }
      # shellcheck disable=SC2086
      timeout 1800 "$CLUSTER" mpirun -np "$np" --map-by "ppr:$p:node" "$WAVEEP" bench --models="$MODELS" \
        --tokens_list="$TOKENS" --waves_list="$WAVES" --steps="$STEPS" --cluster="$dir/probe.json" \
        --csv="$dir/bench.csv" --json="$dir/bench.json" --quiet $EXTRA | tee "$dir/bench.txt"
      mbit=$(awk -v r="$rate" 'BEGIN { n = r + 0; if (r ~ /gbit$/) n *= 1000; print n }')
      if [[ ! -s "$all" ]]; then head -1 "$dir/bench.csv" | sed 's/^/hosts,per_host,rate_mbit,/' >"$all"; fi
      tail -n +2 "$dir/bench.csv" | sed "s/^/$h,$p,$mbit,/" >>"$all"
    done
  done
done
for py in python3 /usr/bin/python3; do
  if "$py" -c "import matplotlib" 2>/dev/null; then
    "$py" "$WAVEEP_ROOT/scripts/plot_cluster_bench.py" "$all" "$OUT_DIR/speedup_vs_rate.png"
    break
  fi
done
log "results: $all"
