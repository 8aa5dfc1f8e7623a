#!/usr/bin/env bash
# readme_sample_test.sh <mpiexec> <waveep> <README.md>
# The README's sample summary ("What the summary means") must be what `mpirun -np 4 waveep run --model=tiny --verify`
# prints: its deterministic lines (model, configuration, verify, output_checksum) are compared exactly; the timing
# lines are illustrative and skipped.
set -euo pipefail
mpiexec="$1" waveep="$2" readme="$3"
sample=$(awk '/^### What the summary means/{f=1} f&&/^```$/{n++; if(n==2) exit; next} f&&n==1' "$readme")
[[ -n "$sample" ]] || { echo "FAIL: no sample block under '### What the summary means' in $readme"; exit 1; }
actual=$("$mpiexec" --oversubscribe --bind-to none -np 4 "$waveep" run --model=tiny --verify 2>/dev/null)
keep() { grep -E '^(waveep run:|  tokens/rank=|  verify |  output_checksum )'; }
if ! diff <(keep <<<"$sample") <(keep <<<"$actual"); then
  echo "FAIL: the README's sample (<) differs from what the command prints now (>): update README.md"
  exit 1
fi
echo "OK: README sample matches ($(keep <<<"$actual" | tail -1 | sed 's/^ *//'))"
