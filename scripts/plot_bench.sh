#!/usr/bin/env bash
# plot_bench.sh CSV OUT_DIR — runs plot_bench.py with a Python that has matplotlib (Debian's python3-matplotlib).
set -euo pipefail
here="$(dirname "$0")"
for py in python3 /usr/bin/python3; do
  if "$py" -c "import matplotlib" 2>/dev/null; then exec "$py" "$here/plot_bench.py" "$@"; fi
done
echo "[waveep] error: no python3 with matplotlib (install python3-matplotlib: scripts/install_deps.sh)" >&2
exit 1
