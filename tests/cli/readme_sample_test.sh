#!/usr/bin/env bash
# readme_sample_test.sh <mpiexec> <waveep> <README.md>
# The README's sample summary ("What the summary means") must be what `mpirun -np 4 waveep run --model=tiny --verify`
# prints: its deterministic lines (model, configuration, verify) are compared exactly; the timing lines are
# illustrative and skipped. The output_checksum depends on the BLAS kernel (OpenBLAS picks one per CPU, or
# OPENBLAS_CORETYPE forces one; the line names it): it must be the sample's or one the README's output_checksum
# paragraph lists for another kernel.
set -euo pipefail
mpiexec="$1" waveep="$2" readme="$3"
sample=$(awk '/^### What the summary means/{f=1} f&&/^```$/{n++; if(n==2) exit; next} f&&n==1' "$readme")
[[ -n "$sample" ]] || { echo "FAIL: no sample block under '### What the summary means' in $readme"; exit 1; }
actual=$("$mpiexec" --oversubscribe --bind-to none -np 4 "$waveep" run --model=tiny --verify 2>/dev/null)
keep() { grep -E '^(waveep run:|  tokens/rank=|  verify )'; }
if ! diff <(keep <<<"$sample") <(keep <<<"$actual"); then
  echo "FAIL: the README's sample (<) differs from what the command prints now (>): update README.md"
  exit 1
fi
sum=$(grep -E '^  output_checksum ' <<<"$actual" | awk '{print $2}')
[[ -n "$sum" ]] || { echo "FAIL: the command printed no output_checksum"; exit 1; }
if ! grep -Eq "^  output_checksum ${sum}( |\$)" <<<"$sample" && ! grep -q "\`${sum}\`" "$readme"; then
  echo "FAIL: output_checksum ${sum} is neither the README sample's nor one it lists for another BLAS kernel: if this"
  echo "      kernel ($(grep -E '^  output_checksum ' <<<"$actual" | sed 's/.*(BLAS kernel //; s/)$//')) is new, add its checksum to the"
  echo "      README's output_checksum paragraph (check first that it is the same for every --waves and rank count)"
  exit 1
fi
echo "OK: README sample matches ($(keep <<<"$actual" | tail -1 | sed 's/^ *//'))"
