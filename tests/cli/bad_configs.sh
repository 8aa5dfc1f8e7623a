#!/usr/bin/env bash
# Writes the malformed/invalid model files used by the bad-input tests into $1.
set -eu
d="$1"; mkdir -p "$d"
echo '{"hidden_size": 256, "moe_intermediate_size": 128,, }' > "$d/malformed.json"
echo '{"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 16}' > "$d/incomplete.json"
echo '{"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 17}' > "$d/topk_too_big.json"
echo '{"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 0}' > "$d/topk_zero.json"
echo '{"hidden_size": 200, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 2}' > "$d/h200.json"
# Hostile inputs (issue: reliability). Each must end with exit 2 and one line naming what is wrong.
python3 - "$d" <<'PY'
import json, sys
d = sys.argv[1]
base = {"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 4}
open(f"{d}/deep.json", "w").write('{"hidden_size": 256, "description": ' + "[" * 70000 + "]" * 70000 + "}")
json.dump(dict(base, n_routed_experts=2**32 + 16), open(f"{d}/wrap_experts.json", "w"))
json.dump(dict(base, num_experts_per_tok=2**32 + 4), open(f"{d}/wrap_topk.json", "w"))
json.dump(dict(base, hidden_size=2**40, moe_intermediate_size=2**40), open(f"{d}/huge.json", "w"))
open(f"{d}/number_overflow.json", "w").write('{"hidden_size": 1e99999, "moe_intermediate_size": 128}')
json.dump(dict(base, hidden_size=65536, moe_intermediate_size=65536, n_routed_experts=1024), open(f"{d}/big.json", "w"))
PY
rm -f "$d/fifo.json"; mkfifo "$d/fifo.json"
