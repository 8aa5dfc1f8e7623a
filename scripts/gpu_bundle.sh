#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs from a CUDA build into one folder that can travel to a GPU machine which
# has CUDA, cuBLAS, NCCL, Open MPI 4.1 and OpenBLAS but no Abseil (and maybe not Debian's Google Benchmark):
#
#   scripts/gpu_bundle.sh [--build build-gpu] [--dest .gpu]
#
# DEST/build/... holds the executables at the same relative paths as in the build folder (bin/waveep,
# tests/<module>/<test>, bench/<bench>), DEST/lib the shared libraries they need that such a machine lacks (Abseil,
# libbenchmark), DEST/lib-fallback the ones it may or may not have (UCX with its transport modules in ucx/, libnuma):
# gpu_check.sh links to a fallback only for a library the machine cannot resolve, since Open MPI there uses the
# machine's own UCX. DEST/manifest.txt says what was packed from which commit. DEST.tar.gz holds the same, about a
# third of the size: carry that one (the device tool carries at most 64 MiB with the working tree) and pass it to
# gpu_check.sh --bundle, which unpacks it. CUDA, MPI, NCCL and libc stay behind:
# the GPU machine's own must be used (its driver and its mpirun). Build for Hopper first, for example
#   cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DWAVEEP_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90a
#   cmake --build build-gpu -j"$(nproc)"
set -euo pipefail
source "$(dirname "$0")/common.sh"

build="$WAVEEP_ROOT/build-gpu"
dest="$WAVEEP_ROOT/.gpu"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build|--dest) [[ $# -ge 2 ]] || { echo "gpu_bundle.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;&
    --build) build="$2"; shift 2 ;;
    --dest) dest="${2%/}"; shift 2 ;;  # .gpu/ -> .gpu, so that the archive .gpu.tar.gz lands beside it
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_bundle.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$build/bin/waveep" ]] || { echo "gpu_bundle.sh: $build/bin/waveep not found: build first (see --help)" >&2; exit 1; }
# CUDA on and a real nvcc found (a NOTFOUND compiler would bundle a CPU-only build whose CUDA tests all skip).
grep -q '^WAVEEP_ENABLE_CUDA:BOOL=ON' "$build/CMakeCache.txt" &&
  grep -Eq '^CMAKE_CUDA_COMPILER:[A-Z]+=/' "$build/CMakeCache.txt" ||
  { echo "gpu_bundle.sh: $build was configured without CUDA (WAVEEP_ENABLE_CUDA=ON and nvcc needed)" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$dest/build" "$dest/lib" "$dest/lib-fallback"
mapfile -t exes < <(cd "$build" && find bin tests bench -maxdepth 2 -type f -perm -u+x \
  \( -name waveep -o -name '*_test' -o -name 'waveep_*bench' \) 2>/dev/null | sort)
for e in "${exes[@]}"; do
  mkdir -p "$dest/build/$(dirname "$e")"
  cp "$build/$e" "$dest/build/$e"
  strip --strip-debug "$dest/build/$e" 2>/dev/null || true
done
# Libraries to carry: those a CUDA image lacks. Everything else (libc, libstdc++, CUDA, NCCL, MPI, OpenBLAS) comes
# from the GPU machine.
resolved=$(for e in "${exes[@]}"; do ldd "$build/$e"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
grep -E '/lib(absl_[a-z0-9_]+|benchmark[a-z_]*)\.so' <<<"$resolved" | while read -r lib; do cp -L "$lib" "$dest/lib/"; done
# UCX (the ucx and ucx_put backends) and what it needs, copied under the names the executables ask for; its transport
# modules (cma, ib, rdmacm) load from ucx/ beside libucs.
ucs=""
mapfile -t ucx_libs < <(grep -E '/libuc[ptsm]\.so' <<<"$resolved")
for lib in $(grep -E '/lib(ucp|uct|ucs|ucm|numa)\.so' <<<"$resolved"
             [[ ${#ucx_libs[@]} -eq 0 ]] || ldd "${ucx_libs[@]}" | awk '$1 ~ /^libnuma/ && $3 ~ /^\// {print $3}'); do
  cp -L "$lib" "$dest/lib-fallback/$(basename "$lib")"
  [[ $(basename "$lib") == libucs.so* ]] && ucs="$lib"
done
if [[ -n "$ucs" && -d "$(dirname "$(readlink -f "$ucs")")/ucx" ]]; then
  mkdir -p "$dest/lib-fallback/ucx"
  find "$(dirname "$(readlink -f "$ucs")")/ucx" -maxdepth 1 -name 'lib*.so.[0-9]' -exec cp -L {} "$dest/lib-fallback/ucx/" \;
fi
{
  echo "commit $(git -C "$WAVEEP_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$WAVEEP_ROOT" diff --quiet 2>/dev/null || echo ' (+ local changes)')"
  echo "built $(date -u +%FT%TZ) on $(hostname) from $build"
  grep -E "^(CMAKE_CUDA_ARCHITECTURES|CMAKE_BUILD_TYPE):[A-Z]*=" "$build/CMakeCache.txt"
  printf 'exe %s\n' "${exes[@]}"
  (cd "$dest/lib" && printf 'lib %s\n' *)
  (cd "$dest/lib-fallback" && find . -type f | sort | sed 's|^\./|fallback |')
} >"$dest/manifest.txt"
tar -czf "$dest.tar.gz" -C "$(dirname "$dest")" "$(basename "$dest")"
size_kib=$(du -sk "$dest" | cut -f1)
packed_kib=$(du -sk "$dest.tar.gz" | cut -f1)
log "bundle $dest: ${#exes[@]} executables, $(ls "$dest/lib" | wc -l) libraries, $(find "$dest/lib-fallback" -type f | wc -l) fallbacks, $((size_kib / 1024)) MiB; packed $dest.tar.gz $((packed_kib / 1024)) MiB"
# The device tool carries at most 64 MiB (working tree and carried paths together).
(( packed_kib < 48 * 1024 )) || log "WARNING: $dest.tar.gz is $((packed_kib / 1024)) MiB; a device run carries at most 64 MiB with the working tree"
