#!/usr/bin/env bash
# expect_failure.sh [--rc N] [--max-s S] <regex> <command...>
# Passes when the command exits non-zero (not by timeout) within 60 s and its output matches <regex>; with --rc, the
# exit status must be N (2 = bad input, 1 = runtime error); with --max-s, it must end within S seconds.
set -u
want_rc=""
max_s=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rc) want_rc="$2"; shift 2 ;;
    --max-s) max_s="$2"; shift 2 ;;
    *) break ;;
  esac
done
regex="$1"; shift
t0=$(date +%s.%N)
out="$(timeout 60 "$@" 2>&1)"; rc=$?
dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
echo "$out" | tail -20
if [[ $rc -eq 0 ]]; then echo "FAIL: expected a non-zero exit, got 0"; exit 1; fi
if [[ $rc -eq 124 ]]; then echo "FAIL: timed out (hang) after 60 s"; exit 1; fi
if [[ $rc -ge 128 ]]; then echo "FAIL: killed by signal $((rc - 128))"; exit 1; fi
if [[ -n $want_rc && $rc -ne $want_rc ]]; then echo "FAIL: exit $rc, expected $want_rc"; exit 1; fi
if awk -v d="$dt" -v m="$max_s" 'BEGIN {exit !(d > m)}'; then echo "FAIL: took ${dt}s, more than ${max_s}s"; exit 1; fi
if ! grep -Eq -- "$regex" <<<"$out"; then echo "FAIL: output does not match /$regex/"; exit 1; fi
echo "OK: exit $rc in ${dt}s, message matches /$regex/"
