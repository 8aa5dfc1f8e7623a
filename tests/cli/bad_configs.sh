#!/usr/bin/env bash
# Writes the malformed/invalid model files used by the bad-input tests into $1.
set -eu
d="$1"; mkdir -p "$d"
echo '{"hidden_size": 256, "moe_intermediate_size": 128,, }' > "$d/malformed.json"
echo '{"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 16}' > "$d/incomplete.json"
echo '{"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 17}' > "$d/topk_too_big.json"
echo '{"hidden_size": 256, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 0}' > "$d/topk_zero.json"
echo '{"hidden_size": 200, "moe_intermediate_size": 128, "n_routed_experts": 16, "num_experts_per_tok": 2}' > "$d/h200.json"
