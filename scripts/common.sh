#!/usr/bin/env bash
# Shared helpers for waveep's scripts. Source it: `source "$(dirname "$0")/common.sh"`.

WAVEEP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WAVEEP_BUILD_DIR="${WAVEEP_BUILD_DIR:-$WAVEEP_ROOT/build}"
WAVEEP_JOBS="${WAVEEP_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { echo "[waveep] $*" >&2; }

# mpirun that works as root (CI), with more ranks than cores, and without binding every rank to one core.
waveep_mpirun() {
  if [[ $(id -u) -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  mpirun --oversubscribe --bind-to none "$@"
}

# Configures (once) and builds the given targets in $WAVEEP_BUILD_DIR. Extra CMake args in $WAVEEP_CMAKE_ARGS.
waveep_build() {
  local build_type="${WAVEEP_BUILD_TYPE:-Release}"
  if [[ ! -f "$WAVEEP_BUILD_DIR/CMakeCache.txt" ]] || [[ -n "${WAVEEP_CMAKE_ARGS:-}" ]]; then
    log "configuring $WAVEEP_BUILD_DIR ($build_type)"
    # shellcheck disable=SC2086
    cmake -S "$WAVEEP_ROOT" -B "$WAVEEP_BUILD_DIR" -DCMAKE_BUILD_TYPE="$build_type" ${WAVEEP_CMAKE_ARGS:-} >&2
  fi
  log "building ${*:-all} with $WAVEEP_JOBS jobs"
  if [[ $# -gt 0 ]]; then
    local t args=()
    for t in "$@"; do args+=(--target "$t"); done
    cmake --build "$WAVEEP_BUILD_DIR" -j "$WAVEEP_JOBS" "${args[@]}" >&2
  else
    cmake --build "$WAVEEP_BUILD_DIR" -j "$WAVEEP_JOBS" >&2
  fi
}
