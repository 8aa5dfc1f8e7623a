#!/usr/bin/env bash
# Runs the README's set-up commands the way a fresh machine would: in a bare Debian chroot (debootstrap minbase:
# no compiler, no MPI, no git), on a clean clone of this checkout's HEAD, with an empty environment. What
# scripts/install_deps.sh forgets to install fails here, not on a user's machine or in CI.
#
#   scripts/fresh_machine_check.sh                 # ./scripts/run.sh (the main job)
#   scripts/fresh_machine_check.sh --test          # ./scripts/test.sh (install, -Werror build, the whole ctest suite)
#   scripts/fresh_machine_check.sh --keep --dir /tmp/fm   # keep the chroot there (DIR must be new or empty)
#
# Needs root, debootstrap (installed with apt-get when missing) and the distribution's package mirror (the one in
# /etc/apt/sources.list*, else deb.debian.org). The chroot shares this machine's kernel: the tests' network
# namespaces and MPI shared memory work in it. Mounts (proc, sys, dev, dev/pts, dev/shm) are undone and the chroot
# removed on every exit unless --keep. Exit status: the command's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

cmd=run
dir=""
keep=0
suite=bookworm
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir|--suite) [[ $# -ge 2 ]] || { echo "fresh_machine_check.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;&
    --test) cmd="test"; shift ;;
    --run) cmd="run"; shift ;;
    --dir) dir="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --suite) suite="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fresh_machine_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "fresh_machine_check.sh: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
if [[ -n $dir ]]; then
  # Absolute (the mount check below compares with findmnt's paths), and new or empty: its contents are deleted at
  # the end without --keep, and the clone needs an empty place.
  dir="$(realpath -m "$dir")"
  if [[ -e $dir && -n "$(ls -A "$dir" 2>/dev/null)" ]]; then
    echo "fresh_machine_check.sh: --dir $dir is not empty (give a new or empty folder)" >&2
    exit 2
  fi
  mkdir -p "$dir"
else
  dir="$(mktemp -d /tmp/waveep-fresh.XXXXXX)"
fi
root="$dir/root"
log() { echo "[fresh] $*" >&2; }

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true; done
  # Never delete through a mount that is still there (the chroot's /dev is the host's).
  if findmnt -rn -o TARGET | grep -q "^$root/"; then
    log "mounts under $root remain; not deleting $dir"
  elif [[ $keep -eq 0 ]]; then
    rm -rf --one-file-system "$dir"
  else
    log "kept $dir"
  fi
}
trap cleanup EXIT

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
fi
mirror=$( (grep -rshoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ ||
  true) | awk '{print $2}' | head -1)
mirror="${mirror:-http://deb.debian.org/debian}"
log "debootstrap $suite (minbase) from $mirror into $root"
t0=$(date +%s)
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
  { tail -20 "$dir/debootstrap.log" >&2; exit 1; }

mkdir -p "$root/work"
git clone -q "$ROOT" "$root/work/main"
[[ -d "$ROOT/../shared" ]] && cp -r "$ROOT/../shared" "$root/work/shared"
# A machine resolves its own name: without /etc/hosts every mpirun waits ~5 s for DNS to fail on the host name.
cp /etc/resolv.conf /etc/hosts "$root/etc/"
mkdir -p "$root/run/netns"
# mnt TARGET MOUNT-ARGS...: mounts and records it for the cleanup; a failure ends the run naming the mount.
mnt() {
  local target="$1"
  shift
  mount "$@" "$target" || { log "mount $* $target failed"; exit 1; }
  mounted+=("$target")
}
# The chroot's / must be a mount point, as a machine's is: `ip netns add` (the cluster tests) remounts it.
mnt "$root" --bind "$root"
mnt "$root/proc" -t proc proc
mnt "$root/sys" --rbind /sys
mount --make-rslave "$root/sys" || { log "mount --make-rslave $root/sys failed"; exit 1; }
mnt "$root/dev" --bind /dev
mnt "$root/dev/pts" -t devpts devpts -o newinstance,ptmxmode=0666
mnt "$root/dev/shm" -t tmpfs tmpfs

log "$(git -C "$root/work/main" log --oneline -1)"
log "running ./scripts/$cmd.sh in the chroot (log: $dir/$cmd.log)"
t1=$(date +%s)
set +e
chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  TERM=dumb CI="${CI:-}" /bin/bash -c "cd /work/main && ./scripts/$cmd.sh < /dev/null" >"$dir/$cmd.log" 2>&1
rc=$?
set -e
t2=$(date +%s)
tail -15 "$dir/$cmd.log"
log "scripts/$cmd.sh exit status $rc after $((t2 - t1)) s (chroot built in $((t1 - t0)) s)"
if [[ $keep -eq 0 ]]; then
  cp "$dir/$cmd.log" "/tmp/waveep-fresh-$cmd.log"
  log "log copied to /tmp/waveep-fresh-$cmd.log"
fi
exit $rc
