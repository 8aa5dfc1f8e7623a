#!/usr/bin/env bash
# An emulated multi-host cluster on one Linux machine (docs/perf/cluster-2026-11-29): each host is a network namespace with its own
# hostname (UTS namespace) and one NIC (a veth pair) into a switch (a bridge); each NIC is shaped with tc in both
# directions (tbf for the rate; netem for delay, jitter and loss). An unmodified `mpirun --hostfile` launches ranks
# across the hosts through an rsh agent that enters a host's namespaces: shared memory inside a host, TCP between.
# The hosts share this machine's cores: Open MPI is told to yield when idle (OMPI_MCA_mpi_yield_when_idle=1 unless set).
#
#   sudo scripts/cluster.sh up --hosts 2 --rate 1gbit                  # 2 hosts, every NIC 1 Gbit/s each way
#   sudo scripts/cluster.sh up --hosts 4 --rate 2gbit --node-rate 3=500mbit --delay 100us
#   sudo scripts/cluster.sh mpirun -np 4 --map-by ppr:2:node build/bin/waveep run --model=tiny --verify
#   sudo scripts/cluster.sh shape --rate 5gbit                          # reshape a running cluster's NICs
#   sudo scripts/cluster.sh status                                      # hosts, addresses, qdiscs, tc counters
#   sudo scripts/cluster.sh exec wvp-h1 ip -s link                      # a command inside one host
#   sudo scripts/cluster.sh down                                        # remove everything `up` made
#   sudo scripts/cluster.sh up --hosts 2 --slots 2 --slurm              # ... plus a Slurm cluster on the hosts
#   eval "$(scripts/cluster.sh env)"; sbatch -N2 scripts/slurm/verified_run.sbatch   # Slurm's own commands
#   eval "$(scripts/cluster.sh env)"; mpirun --hostfile "$WAVEEP_CLUSTER_HOSTFILE" -np 2 ...   # plain mpirun
#
# Options of `up` (and `shape`, which takes the shaping ones):
#   --hosts N            hosts (namespaces), 1..64 (default 2)
#   --slots S            MPI slots per host in the hostfile (default 1)
#   --rate R             NIC rate per direction, tc units (100mbit, 1gbit, 2.5gbit, ...; default 1gbit)
#   --delay D            one-way delay added to every packet a host sends (netem; e.g. 100us, 1ms; default none)
#   --jitter J           delay variation (needs --delay)
#   --loss P             packet loss in percent on every packet a host sends (e.g. 0.1)
#   --node-rate I=R      host I (0-based) gets rate R instead (repeatable): the slow NIC
#   --node-delay I=D     host I gets delay D instead (repeatable)
#   --subnet A.B.C       /24 for the hosts, inside 198.18.0.0/15 (default 198.18.0; hosts .1.., switch .254)
#   --prefix P           name prefix of namespaces, hostnames, bridge and state (default wvp; <= 8 characters)
#   --slurm              also start Slurm: munged, slurmctld on host 0, one slurmd per host (each host offers
#                        --slots CPUs), partition 'waveep', MpiDefault=pmix; `env` then exports SLURM_CONF
# Environment: WAVEEP_CLUSTER_PREFIX (same as --prefix), WAVEEP_CLUSTER_DIR (state; default /run/waveep-cluster/P).
#
# Addresses come only from the benchmarking range 198.18.0.0/15; nothing is routed anywhere else. `up` is
# idempotent (it takes down a cluster of the same prefix first) and removes what it made when it fails part-way.
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2 (ip, tc with the tbf and netem qdiscs) and util-linux
# (unshare, nsenter); --slurm needs Slurm 22.05+ (slurmctld, slurmd, slurm-client) and munge. Exit codes: 0 ok,
# 1 failure, 2 bad arguments, 77 this machine cannot host namespaces or start Slurm (tests skip on 77).
set -euo pipefail
shopt -s inherit_errexit  # a failing tc inside $(...) must fail the command too

PREFIX="${WAVEEP_CLUSTER_PREFIX:-wvp}"
HOSTS=2
SLOTS=1
RATE=1gbit
DELAY=""
JITTER=""
LOSS=""
SUBNET=198.18.0
SLURM=0
declare -A NODE_RATE=() NODE_DELAY=()

die() {
  echo "cluster.sh: error: $*" >&2
  exit 1
}
usage_error() {
  echo "cluster.sh: $* (try --help)" >&2
  exit 2
}
unavailable() {
  echo "cluster.sh: cannot emulate hosts here: $*" >&2
  exit 77
}
say() { echo "[cluster] $*" >&2; }

state_dir() { echo "${WAVEEP_CLUSTER_DIR:-/run/waveep-cluster/$PREFIX}"; }
host_name() { echo "$PREFIX-h$1"; }
bridge_name() { echo "$PREFIX-br"; }

# Rate in tc units -> bytes per second (integer). Accepts bit, kbit, mbit, gbit (decimal), bps/kbps/... (bytes).
rate_bytes_per_s() {
  local r="${1,,}" num unit
  if [[ ! "$r" =~ ^([0-9]+(\.[0-9]+)?)([a-z]*)$ ]]; then return 1; fi
  num="${BASH_REMATCH[1]}"
  unit="${BASH_REMATCH[3]}"
  local mult
  case "$unit" in
    bit) mult=0.125 ;; kbit) mult=125 ;; mbit) mult=125000 ;; gbit) mult=125000000 ;;
    bps) mult=1 ;; kbps) mult=1000 ;; mbps) mult=1000000 ;; gbps) mult=1000000000 ;;
    *) return 1 ;;
  esac
  awk -v n="$num" -v m="$mult" 'BEGIN { v = n * m; if (v < 1) exit 1; printf "%d\n", v }'
}

check_rate() {
  local bps
  bps=$(rate_bytes_per_s "$1") || usage_error "$2=$1 is not a rate (examples: 500mbit, 1gbit, 2.5gbit)"
  # Below 1 Mbit/s an MPI job spends minutes in its handshakes; above 100 Gbit/s tbf on veth is CPU-bound anyway.
  if ((bps < 125000 || bps > 12500000000)); then usage_error "$2=$1 must be between 1mbit and 100gbit"; fi
}

check_time() {
  [[ "$1" =~ ^[0-9]+(\.[0-9]+)?(us|usec|ms|msec|s|sec)$ ]] || usage_error "$2=$1 is not a time (examples: 100us, 2ms)"
}

parse_shaping_arg() {  # $1 = option, $2 = value; returns 1 if $1 is not a shaping option
  case "$1" in
    --rate) check_rate "$2" --rate; RATE="$2" ;;
    --delay) check_time "$2" --delay; DELAY="$2" ;;
    --jitter) check_time "$2" --jitter; JITTER="$2" ;;
    --loss)
      [[ "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v p="$2" 'BEGIN { exit !(p >= 0 && p < 100) }' ||
        usage_error "--loss=$2 must be a percentage in [0, 100)"
      LOSS="$2" ;;
    --node-rate)
      [[ "$2" =~ ^([0-9]{1,3})=(.+)$ ]] || usage_error "--node-rate=$2 must be I=RATE (host index, e.g. 1=500mbit)"
      check_rate "${BASH_REMATCH[2]}" "--node-rate (host ${BASH_REMATCH[1]})"
      NODE_RATE[$((10#${BASH_REMATCH[1]}))]="${BASH_REMATCH[2]}" ;;
    --node-delay)
      [[ "$2" =~ ^([0-9]{1,3})=(.+)$ ]] || usage_error "--node-delay=$2 must be I=DELAY (host index, e.g. 1=2ms)"
      check_time "${BASH_REMATCH[2]}" "--node-delay (host ${BASH_REMATCH[1]})"
      NODE_DELAY[$((10#${BASH_REMATCH[1]}))]="${BASH_REMATCH[2]}" ;;
    *) return 1 ;;
  esac
}

check_prefix() {
  [[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || usage_error "--prefix=$PREFIX must be 1-8 lowercase letters/digits"
}

require_root() {
  [[ $(id -u) -eq 0 ]] || unavailable "needs root (network and UTS namespaces, veth, tc); run it with sudo"
  local t
  for t in ip tc unshare nsenter; do
    command -v "$t" >/dev/null 2>&1 || unavailable "'$t' not found (apt-get install iproute2 util-linux)"
  done
}

# ---- state ----------------------------------------------------------------------------------------------------------
load_state() {
  local dir
  dir=$(state_dir)
  [[ -f "$dir/cluster.env" ]] || die "no cluster with prefix '$PREFIX' is up ($dir/cluster.env missing); run: $0 up"
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
}

# ---- shaping ------------------------------------------------------------------------------------------------------
# tbf burst: 1 ms at the rate, at least 64 KiB (a GSO super-packet); queue: 20 ms at the rate, at least 1 MiB.
shape_dev() {  # ns ("" = root) dev rate delay jitter loss
  local ns="$1" dev="$2" rate="$3" delay="$4" jitter="$5" loss="$6"
  local run=()
  [[ -n "$ns" ]] && run=(ip netns exec "$ns")
  local bps burst limit
  bps=$(rate_bytes_per_s "$rate")
  burst=$((bps / 1000 > 65536 ? bps / 1000 : 65536))
  limit=$((bps / 50 > 1048576 ? bps / 50 : 1048576))
  "${run[@]}" tc qdisc del dev "$dev" root 2>/dev/null || true
  if [[ -n "$delay" || -n "$loss" ]]; then
    local netem=(limit 100000)
    [[ -n "$delay" ]] && netem+=(delay "$delay" ${jitter:+"$jitter"})
    [[ -n "$loss" ]] && netem+=(loss "$loss%")
    "${run[@]}" tc qdisc add dev "$dev" root handle 1: netem "${netem[@]}"
    "${run[@]}" tc qdisc add dev "$dev" parent 1: handle 10: tbf rate "$rate" burst "$burst" limit "$limit"
  else
    "${run[@]}" tc qdisc add dev "$dev" root handle 1: tbf rate "$rate" burst "$burst" limit "$limit"
  fi
}

# Shapes host i's NIC both ways: egress inside the host (what it sends), egress of the switch port (what it receives).
# Delay, jitter and loss apply to what the host sends, so a path A -> B gets A's delay once.
shape_host() {
  local i="$1" h rate delay
  h=$(host_name "$i")
  rate="${NODE_RATE[$i]:-$RATE}"
  delay="${NODE_DELAY[$i]:-$DELAY}"
  shape_dev "$h" eth0 "$rate" "$delay" "$JITTER" "$LOSS"
  shape_dev "" "$h" "$rate" "" "" ""
}

# Shapes every host and reports "host=rate ..." on stderr.
shape_all() {
  local i rates=()
  for ((i = 0; i < HOSTS; i++)); do
    shape_host "$i"
    rates+=("$(host_name "$i")=${NODE_RATE[$i]:-$RATE}")
  done
  say "NICs: ${rates[*]}${DELAY:+, delay $DELAY}${JITTER:+ jitter $JITTER}${LOSS:+, loss $LOSS%}"
}

# The shaping options fit together and name existing hosts.
check_shaping() {
  local i
  for i in "${!NODE_RATE[@]}" "${!NODE_DELAY[@]}"; do
    ((i < HOSTS)) || usage_error "--node-rate/--node-delay name host $i, but there are $HOSTS hosts (0..$((HOSTS - 1)))"
  done
  [[ -z "$JITTER" || -n "$DELAY" ]] || usage_error "--jitter needs --delay"
}

# Delay, jitter and loss need netem; refuse them by name before touching any link where the kernel lacks it.
require_netem_if_asked() {
  if [[ -n "$DELAY$LOSS${NODE_DELAY[*]}" ]] &&
     ! unshare --net sh -c 'ip link set lo up && tc qdisc add dev lo root netem delay 1ms' 2>/dev/null; then
    die "--delay/--jitter/--loss/--node-delay need tc's netem qdisc, which this kernel lacks (CONFIG_NET_SCH_NETEM);" \
      "leave them out to shape the rate only"
  fi
}

write_env() {
  local dir="$1" i
  {
    echo "# written by scripts/cluster.sh up; sourced by its other commands"
    printf 'PREFIX=%q\nHOSTS=%q\nSLOTS=%q\nSUBNET=%q\nRATE=%q\nDELAY=%q\nJITTER=%q\nLOSS=%q\nSLURM=%q\n' \
      "$PREFIX" "$HOSTS" "$SLOTS" "$SUBNET" "$RATE" "$DELAY" "$JITTER" "$LOSS" "$SLURM"
    echo "declare -gA NODE_RATE=() NODE_DELAY=()"  # -g: sourced inside a function
    for i in "${!NODE_RATE[@]}"; do printf 'NODE_RATE[%q]=%q\n' "$i" "${NODE_RATE[$i]}"; done
    for i in "${!NODE_DELAY[@]}"; do printf 'NODE_DELAY[%q]=%q\n' "$i" "${NODE_DELAY[$i]}"; done
  } >"$dir/cluster.env"
}

# ---- Slurm --------------------------------------------------------------------------------------------------------
# One munged (in the root namespace, with its own key and socket), slurmctld inside host 0 and one slurmd inside every
# host, all configured by one slurm.conf in the state directory. Nothing uses cgroups (proctrack/linuxproc, task/none):
# the hosts share one kernel, and a container's cgroup tree is rarely writable (Slurm 22.05 also refuses a hybrid
# v1/v2 tree). Each node's spool, pid and log files, and its TmpFS, are its own (%n): the PMIx plugin makes a
# per-step client directory under TmpFS, and two nodes on one machine would otherwise make the same one.
slurm_dir() { echo "$(state_dir)/slurm"; }

require_slurm() {
  local t
  for t in slurmctld slurmd sbatch srun sinfo scontrol munged mungekey; do
    command -v "$t" >/dev/null 2>&1 ||
      unavailable "--slurm: '$t' not found (apt-get install slurmctld slurmd slurm-client munge)"
  done
  compgen -G "/usr/lib/*/slurm*/mpi_pmix*.so" >/dev/null || compgen -G "/usr/lib*/slurm*/mpi_pmix*.so" >/dev/null ||
    unavailable "--slurm: Slurm's PMIx plugin (mpi_pmix.so) is not installed (apt-get install slurm-wlm-basic-plugins)"
}

in_host() {  # index command...: runs a command inside host i's network and UTS namespaces
  local h
  h=$(host_name "$1")
  shift
  nsenter --net="/run/netns/$h" --uts="$(state_dir)/uts/$h" -- "$@"
}

slurm_write_conf() {
  local sd i
  sd=$(slurm_dir)
  {
    echo "# Slurm on the emulated cluster '$PREFIX', written by scripts/cluster.sh up --slurm. Not for a real cluster."
    echo "ClusterName=waveep$PREFIX"
    echo "SlurmctldHost=$(host_name 0)($SUBNET.1)"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$sd/munge.socket"
    echo "MpiDefault=pmix"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "SchedulerType=sched/backfill"
    echo "ReturnToService=2"
    # Every host claims --slots CPUs although they share this machine's cores.
    echo "SlurmdParameters=config_overrides"
    echo "StateSaveLocation=$sd/ctld"
    echo "SlurmctldPidFile=$sd/slurmctld.pid"
    echo "SlurmctldLogFile=$sd/slurmctld.log"
    echo "SlurmdSpoolDir=$sd/%n/spool"
    echo "SlurmdPidFile=$sd/%n/slurmd.pid"
    echo "SlurmdLogFile=$sd/%n/slurmd.log"
    echo "TmpFS=$sd/%n/tmp"
    echo "SlurmctldTimeout=30"
    echo "SlurmdTimeout=30"
    echo "InactiveLimit=0"
    echo "KillWait=5"
    echo "MinJobAge=600"
    for ((i = 0; i < HOSTS; i++)); do
      echo "NodeName=$(host_name "$i") NodeAddr=$SUBNET.$((i + 1)) CPUs=$SLOTS State=UNKNOWN"
    done
    echo "PartitionName=waveep Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$sd/slurm.conf"
}

slurm_logs() {  # the tail of every Slurm log, for a failure
  local f
  for f in "$(slurm_dir)"/munged.log "$(slurm_dir)"/slurmctld.log "$(slurm_dir)"/*/slurmd.log; do
    [[ -f "$f" ]] || continue
    echo "---- $f" >&2
    tail -n 15 "$f" >&2
  done
}

slurm_up() {
  local sd i h
  sd=$(slurm_dir)
  mkdir -p "$sd/ctld"
  chmod 0700 "$sd"
  for ((i = 0; i < HOSTS; i++)); do
    h=$(host_name "$i")
    mkdir -p "$sd/$h/spool" "$sd/$h/tmp"
    chmod 1777 "$sd/$h/tmp"
  done
  mungekey --create --keyfile="$sd/munge.key"
  # --force: munged runs as root here, which it only warns about then.
  munged --force --socket="$sd/munge.socket" --key-file="$sd/munge.key" --pid-file="$sd/munged.pid" \
    --log-file="$sd/munged.log" --seed-file="$sd/munged.seed"
  slurm_write_conf
  in_host 0 slurmctld -f "$sd/slurm.conf"
  for ((i = 0; i < HOSTS; i++)); do in_host "$i" slurmd -f "$sd/slurm.conf" -N "$(host_name "$i")"; done
  # Ready when every node registered and is idle.
  local deadline=$((SECONDS + 60)) idle=0
  while ((SECONDS < deadline)); do
    idle=$(SLURM_CONF="$sd/slurm.conf" timeout 10 sinfo -h -N -p waveep -t idle -o '%N' 2>/dev/null | wc -l || true)
    ((idle == HOSTS)) && break
    sleep 0.5
  done
  if ((idle != HOSTS)); then
    echo "cluster.sh: Slurm did not come up: $idle of $HOSTS node(s) idle after 60 s; its logs:" >&2
    SLURM_CONF="$sd/slurm.conf" timeout 10 sinfo -N -p waveep >&2 || true
    slurm_logs
    return 1
  fi
  say "slurm: slurmctld on $(host_name 0), slurmd on $HOSTS host(s) x $SLOTS CPU(s), partition waveep" \
    "(SLURM_CONF=$sd/slurm.conf)"
}

slurm_down() {  # the daemons inside the hosts end with the hosts' processes; munged runs outside them
  local sd pid
  sd=$(slurm_dir)
  [[ -f "$sd/munged.pid" ]] || return 0
  pid=$(cat "$sd/munged.pid" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && grep -q munged "/proc/$pid/comm" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # It writes its seed file on the way out: wait (at most 5 s) before its directory is removed.
    local i
    for ((i = 0; i < 50; i++)); do
      grep -q munged "/proc/$pid/comm" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] ||
        break
      sleep 0.1
    done
  fi
}

# ---- down ---------------------------------------------------------------------------------------------------------
cmd_down() {
  local dir h ns
  dir=$(state_dir)
  # Processes still inside a host (ranks, orted) would keep its namespace alive: end them first.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-h[0-9]+$" || true); do
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n "$pids" ]]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
  for h in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^$PREFIX-h[0-9]+$" || true); do
    ip link del "$h" 2>/dev/null || true
  done
  ip link del "$(bridge_name)" 2>/dev/null || true
  if [[ -d "$dir/uts" ]]; then
    for h in "$dir"/uts/*; do
      [[ -e "$h" ]] || continue
      umount "$h" 2>/dev/null || true
      rm -f "$h"
    done
  fi
  slurm_down
  rm -rf "$dir"
  say "down: prefix $PREFIX removed"
}

# ---- up -----------------------------------------------------------------------------------------------------------
cmd_up() {
  while [[ $# -gt 0 ]]; do
    local opt="$1" val
    if [[ "$opt" == --slurm ]]; then
      SLURM=1
      shift
      continue
    fi
    if [[ "$opt" == --*=* ]]; then
      val="${opt#*=}"
      opt="${opt%%=*}"
      shift
    else
      [[ $# -ge 2 ]] || usage_error "$opt needs a value"
      val="$2"
      shift 2
    fi
    case "$opt" in
      --hosts) [[ "$val" =~ ^[0-9]{1,3}$ ]] && ((10#$val >= 1 && 10#$val <= 64)) ||
          usage_error "--hosts=$val must be in [1, 64]"
        HOSTS=$((10#$val)) ;;
      --slots) [[ "$val" =~ ^[0-9]{1,4}$ ]] && ((10#$val >= 1 && 10#$val <= 256)) ||
          usage_error "--slots=$val must be in [1, 256]"
        SLOTS=$((10#$val)) ;;
      --subnet)
        [[ "$val" =~ ^198\.(18|19)\.([0-9]{1,3})$ ]] && ((BASH_REMATCH[2] <= 255)) ||
          usage_error "--subnet=$val must be 198.18.X or 198.19.X (the benchmarking range 198.18.0.0/15)"
        SUBNET="$val" ;;
      --prefix) PREFIX="$val" ;;
      *) parse_shaping_arg "$opt" "$val" || usage_error "unknown option '$opt' for up" ;;
    esac
  done
  check_prefix
  check_shaping
  require_root
  # Can this machine make a network namespace at all? (containers without CAP_SYS_ADMIN cannot)
  if ! unshare --net --uts true 2>/dev/null; then
    unavailable "unshare --net --uts failed (no CAP_SYS_ADMIN or namespaces disabled)"
  fi
  # ... and shape a link there? (tried on a throwaway namespace's loopback, never on this machine's)
  if ! unshare --net sh -c 'ip link set lo up && tc qdisc add dev lo root tbf rate 1gbit burst 64kb limit 1mb' \
      2>/dev/null; then
    unavailable "tc cannot add a tbf qdisc (kernel without CONFIG_NET_SCH_TBF?)"
  fi
  require_netem_if_asked
  ((SLURM == 0)) || require_slurm

  local dir br
  dir=$(state_dir)
  br=$(bridge_name)
  cmd_down >/dev/null 2>&1 || true  # idempotent: start from nothing
  mkdir -p "$dir/uts"
  # Anything that fails from here on removes what was made.
  trap 'echo "cluster.sh: up failed at line $LINENO; removing what was made" >&2; cmd_down >/dev/null 2>&1' ERR
  set -E

  ip link add "$br" type bridge
  ip addr add "$SUBNET.254/24" dev "$br"
  ip link set "$br" up
  for ((i = 0; i < HOSTS; i++)); do
    local h addr
    h=$(host_name "$i")
    addr="$SUBNET.$((i + 1))"
    ip netns add "$h"
    ip link add "$h" type veth peer name eth0 netns "$h"
    ip link set "$h" master "$br" up
    ip -n "$h" link set lo up
    ip -n "$h" addr add "$addr/24" dev eth0
    ip -n "$h" link set eth0 up
    # Its own hostname: Open MPI keys shared-memory segments and locality by hostname.
    touch "$dir/uts/$h"
    unshare --uts="$dir/uts/$h" hostname "$h"
  done
  shape_all

  # The hostfile, the rsh agent (host name = namespace name) and the MCA settings that make Open MPI use them.
  : >"$dir/hostfile"
  for ((i = 0; i < HOSTS; i++)); do echo "$(host_name "$i") slots=$SLOTS" >>"$dir/hostfile"; done
  cat >"$dir/rsh" <<EOF
#!/bin/sh
# rsh agent of the emulated cluster '$PREFIX' (scripts/cluster.sh): runs a command inside a host's namespaces.
# Called by Open MPI as: rsh [ssh-style options] HOST COMMAND...
while [ \$# -gt 0 ]; do
  case "\$1" in
    -l|-p|-o|-i|-F) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ \$# -ge 1 ] || { echo "rsh: no host given" >&2; exit 255; }
host="\$1"; shift
case "\$host" in
  $PREFIX-h[0-9]*) ;;
  *) echo "rsh: '\$host' is not a host of the emulated cluster '$PREFIX' (see $dir/hostfile)" >&2; exit 255 ;;
esac
[ -e "/run/netns/\$host" ] || { echo "rsh: host '\$host' is not up (scripts/cluster.sh status)" >&2; exit 255; }
exec nsenter --net="/run/netns/\$host" --uts="$dir/uts/\$host" -- /bin/sh -c "\$*"
EOF
  chmod +x "$dir/rsh"
  cat >"$dir/mpi.env" <<EOF
# Open MPI settings for the emulated cluster '$PREFIX': source it, then plain mpirun --hostfile works.
export WAVEEP_CLUSTER_HOSTFILE=$dir/hostfile
export OMPI_MCA_plm_rsh_agent=$dir/rsh
export OMPI_MCA_plm_rsh_no_tree_spawn=1
# Daemon wire-up and the TCP transport only over the emulated NICs, never over another interface.
export OMPI_MCA_oob_tcp_if_include=$SUBNET.0/24
export OMPI_MCA_btl_tcp_if_include=$SUBNET.0/24
# Open MPI 4.1's orted crashes in hwloc's shared-memory topology setup when several daemons start on one machine.
export OMPI_MCA_rtc=^hwloc
export OMPI_MCA_hwloc_base_binding_policy=none
# The emulated hosts share this machine's cores, but each sees only its own ranks, so Open MPI busy-waits (it yields
# only when it knows a host is oversubscribed). A rank spinning in a collective on one emulated host then holds the
# core that a rank on another one needs, which separate hosts never do: ranks waiting on the emulated link lost the
# CPU for 4-5 ms at a time (docs/perf/ucx-2026-11-30). A value set before this file is sourced wins.
export OMPI_MCA_mpi_yield_when_idle=\${OMPI_MCA_mpi_yield_when_idle:-1}
EOF
  write_env "$dir"
  ((SLURM == 0)) || slurm_up
  trap - ERR
  say "up: $HOSTS host(s) ${PREFIX}-h0..$((HOSTS - 1)) on $SUBNET.0/24 (switch $br at $SUBNET.254), $SLOTS slot(s) each"
  say "launch: $0 mpirun -np N ...   or   eval \"\$($0 env)\"; mpirun --hostfile \$WAVEEP_CLUSTER_HOSTFILE ..."
}

# Options given replace those of `up` (or the last `shape`); the others stay. Any --node-rate (--node-delay) replaces
# all per-host rates (delays).
cmd_shape() {
  load_state
  local reset_rates=1 reset_delays=1
  while [[ $# -gt 0 ]]; do
    local opt="$1" val
    if [[ "$opt" == --*=* ]]; then val="${opt#*=}"; opt="${opt%%=*}"; shift
    else [[ $# -ge 2 ]] || usage_error "$opt needs a value"; val="$2"; shift 2; fi
    if [[ "$opt" == --node-rate && $reset_rates -eq 1 ]]; then NODE_RATE=(); reset_rates=0; fi
    if [[ "$opt" == --node-delay && $reset_delays -eq 1 ]]; then NODE_DELAY=(); reset_delays=0; fi
    parse_shaping_arg "$opt" "$val" || usage_error "unknown option '$opt' for shape"
  done
  check_shaping
  require_netem_if_asked
  shape_all
  write_env "$(state_dir)"
}

cmd_status() {
  local dir
  dir=$(state_dir)
  if [[ ! -f "$dir/cluster.env" ]]; then
    echo "no cluster with prefix '$PREFIX' is up"
    return 3
  fi
  load_state
  echo "cluster '$PREFIX': $HOSTS host(s), subnet $SUBNET.0/24, $SLOTS slot(s) per host, state in $dir"
  local i
  for ((i = 0; i < HOSTS; i++)); do
    local h
    h=$(host_name "$i")
    if [[ ! -e /run/netns/$h ]]; then
      echo "  $h: MISSING (namespace gone)"
      continue
    fi
    echo "  $h  $SUBNET.$((i + 1))  rate ${NODE_RATE[$i]:-$RATE}  hostname $(nsenter --uts="$dir/uts/$h" hostname)"
    echo "    sends:    $(ip netns exec "$h" tc -s qdisc show dev eth0 | awk '/^qdisc tbf/{q=$0} /Sent/{print; exit}')"
    echo "    receives: $(tc -s qdisc show dev "$h" | awk '/Sent/{print; exit}')"
  done
  if ((SLURM == 1)); then
    echo "slurm: SLURM_CONF=$(slurm_dir)/slurm.conf"
    SLURM_CONF="$(slurm_dir)/slurm.conf" timeout 10 sinfo -N -p waveep | sed 's/^/  /' || echo "  (controller not answering)"
  fi
}

cmd_env() {
  load_state
  cat "$(state_dir)/mpi.env"
  if ((SLURM == 1)); then
    echo "# Slurm's commands (sbatch, srun, squeue, sinfo) talk to the emulated cluster's controller."
    echo "export SLURM_CONF=$(slurm_dir)/slurm.conf"
  fi
}

cmd_mpirun() {
  load_state
  # shellcheck disable=SC1091
  source "$(state_dir)/mpi.env"
  if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
  exec mpirun --hostfile "$WAVEEP_CLUSTER_HOSTFILE" --bind-to none "$@"
}

cmd_exec() {
  load_state
  [[ $# -ge 2 ]] || usage_error "exec needs HOST COMMAND..."
  local h="$1"
  shift
  [[ -e /run/netns/$h ]] || die "no host '$h' (hosts: $(host_name 0)..$(host_name $((HOSTS - 1))))"
  exec nsenter --net="/run/netns/$h" --uts="$(state_dir)/uts/$h" -- "$@"
}

main() {
  [[ $# -ge 1 ]] || usage_error "missing command: up | down | status | shape | env | mpirun | exec"
  local cmd="$1"
  shift
  # A global --prefix may come first: cluster.sh --prefix t up ...
  case "$cmd" in
    -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --prefix) PREFIX="$1"; shift; main "$@"; return ;;
    --prefix=*) PREFIX="${cmd#*=}"; main "$@"; return ;;
  esac
  check_prefix
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) require_root; cmd_down ;;
    status) cmd_status ;;
    shape) require_root; cmd_shape "$@" ;;
    env) cmd_env ;;
    mpirun) cmd_mpirun "$@" ;;
    exec) require_root; cmd_exec "$@" ;;
    *) usage_error "unknown command '$cmd' (up | down | status | shape | env | mpirun | exec)" ;;
  esac
}

main "$@"
