#!/usr/bin/env bash
# Idempotent installer for waveep's build and run dependencies (Debian/Ubuntu).
#
# Installs only the packages that are missing, via apt-get, as root or through sudo.
# Nothing is downloaded outside the distribution's package archive.
#
#   scripts/install_deps.sh            # install what is missing
#   scripts/install_deps.sh --check    # list what is missing, install nothing (exit 1 if any)
#   scripts/install_deps.sh --tests    # also what only the test suite needs: Slurm and munge (cluster.slurm_sbatch), procps
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  openmpi-bin libopenmpi-dev
  libucx-dev
  libabsl-dev
  libgtest-dev libgmock-dev
  libbenchmark-dev
  libopenblas-dev
  nlohmann-json3-dev
  iproute2 util-linux
  python3 python3-numpy python3-matplotlib
)

# Only for the tests: a Slurm controller and node daemon on the emulated hosts (scripts/cluster.sh up --slurm), and
# pgrep/pkill (the hung-peer and dead-peer tests find and stop their ranks; slim images lack procps).
TEST_PACKAGES=(slurmctld slurmd slurm-client munge procps)

check_only=0
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    --tests) PACKAGES+=("${TEST_PACKAGES[@]}") ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install_deps.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "[install_deps] all ${#PACKAGES[@]} packages present"
  exit 0
fi
echo "[install_deps] missing: ${missing[*]}"
if [[ $check_only -eq 1 ]]; then exit 1; fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "[install_deps] error: apt-get not found; install these packages with your package manager: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "[install_deps] error: not root and sudo not found; as root run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "[install_deps] installed ${#missing[@]} packages"
