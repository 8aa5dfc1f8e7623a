#!/usr/bin/env bash
# expect_failure.sh <regex> <command...>
# Passes when the command exits non-zero (not by timeout) within 60 s and its output matches <regex>.
set -u
regex="$1"; shift
out="$(timeout 60 "$@" 2>&1)"; rc=$?
echo "$out" | tail -20
if [[ $rc -eq 0 ]]; then echo "FAIL: expected a non-zero exit, got 0"; exit 1; fi
if [[ $rc -eq 124 ]]; then echo "FAIL: timed out (hang) after 60 s"; exit 1; fi
if ! grep -Eq -- "$regex" <<<"$out"; then echo "FAIL: output does not match /$regex/"; exit 1; fi
echo "OK: exit $rc, message matches /$regex/"
