// Copyright 2026 The waveep Authors.
//
// All waveep flags. Every flag that changes what is computed is part of CanonicalFlags(), hashed across ranks.
#include <cstdint>
#include <string>

#include "absl/flags/flag.h"
#include "ep/cli/cli.h"

ABSL_FLAG(std::string, model, "tiny", "Model preset name (configs/models/<name>.json) or path to a model JSON file");
ABSL_FLAG(int64_t, tokens_per_rank, 128, "Tokens per rank per step (>= 0; 0 is valid)");
ABSL_FLAG(int, steps, 5, "Timed MoE layer steps");
ABSL_FLAG(int, warmup, 1, "Untimed warm-up steps before the timed ones");
ABSL_FLAG(std::string, dtype, "bf16",
          "Dispatch dtype: bf16, or fp8 (e4m3 with one FP32 scale per 128 elements); "
          "combine is always bf16, accumulation fp32");
ABSL_FLAG(uint64_t, seed, 1, "Seed for the deterministic weights, hidden states and routing");
ABSL_FLAG(bool, verify, false, "Check every output against an independent dense reference (non-zero exit on failure)");
ABSL_FLAG(std::string, json, "", "Write a machine-readable result (one JSON object) to this file");
ABSL_FLAG(int, waves, 1, "Waves per step: 1 = sequential baseline; up to the experts per rank");
ABSL_FLAG(std::string, routing, "gate",
          "Routing of the synthetic tokens: gate (the model's router on random logits), uniform, or skewed "
          "(half the tokens on expert 0, upper half of the experts unused)");
ABSL_FLAG(std::string, backend, "mpi", "Communication backend (see `waveep topo probe --help` for the list)");
ABSL_FLAG(double, timeout_s, 60,
          "Timeout in seconds for every blocking wait; on expiry the error names rank, wave "
          "and peer");
ABSL_FLAG(std::string, trace, "", "Write a Chrome trace JSON of the last step (open in Perfetto / chrome://tracing)");
ABSL_FLAG(
    std::string, device, "cpu",
    "Compute device: cpu; cuda (each rank takes the GPU of its local rank, shared round-robin when ranks outnumber "
    "GPUs: use MPS); or cuda:N");
ABSL_FLAG(int, blas_threads, 0, "BLAS threads per rank; 0 = cores per rank minus one for the comm thread (min 1)");
ABSL_FLAG(bool, shared_experts, true, "Include the model's shared expert(s), computed locally on each rank");
ABSL_FLAG(bool, dedup, true,
          "Dispatch deduplication: send each token once per destination rank and wave instead of once per (token, "
          "expert) pair (output unchanged; --device=cpu only for now, CUDA sends every pair)");
ABSL_FLAG(bool, dedup_hosts, true,
          "With --dedup, when the ranks run on several hosts: send each token once per destination host and wave, to "
          "one rank there that forwards it over shared memory to the host's other ranks that need it (output "
          "unchanged)");
ABSL_FLAG(std::string, cluster, "",
          "Cluster description: a preset in configs/clusters/ or a JSON path (e.g. written by `waveep topo probe`); "
          "topo check/model/tune use it, bench adds the topology model's predicted step time next to the measured");
ABSL_FLAG(bool, quiet, false, "Only errors on stderr (no progress lines)");
ABSL_FLAG(std::string, checkpoint, "",
          "Hugging Face-style checkpoint directory (config.json + *.safetensors): run one MoE layer with its weights; "
          "the model shape comes from its config.json (else from --model)");
ABSL_FLAG(int, layer, -1, "MoE layer of --checkpoint to run; -1 = the first layer that has expert tensors");
ABSL_FLAG(std::string, input, "",
          "safetensors file with hidden_states [T, H] (F32/BF16, rounded to BF16) and optionally topk_idx + "
          "topk_weights [T, K]; the T tokens are split in order over the ranks (replaces --tokens_per_rank)");
ABSL_FLAG(std::string, output, "",
          "Write the layer output [T, H] (F32) and the routing used (topk_idx, topk_weights), gathered in token "
          "order, to this safetensors file (rank 0)");

namespace waveep::cli {

std::string CanonicalFlags() {
  return absl::StrCat("model=", absl::GetFlag(FLAGS_model), ";tokens_per_rank=", absl::GetFlag(FLAGS_tokens_per_rank),
                      ";steps=", absl::GetFlag(FLAGS_steps), ";warmup=", absl::GetFlag(FLAGS_warmup),
                      ";dtype=", absl::GetFlag(FLAGS_dtype), ";seed=", absl::GetFlag(FLAGS_seed),
                      ";verify=", absl::GetFlag(FLAGS_verify), ";waves=", absl::GetFlag(FLAGS_waves),
                      ";routing=", absl::GetFlag(FLAGS_routing), ";backend=", absl::GetFlag(FLAGS_backend),
                      ";device=", absl::GetFlag(FLAGS_device), ";shared=", absl::GetFlag(FLAGS_shared_experts),
                      ";dedup=", absl::GetFlag(FLAGS_dedup), ";dedup_hosts=", absl::GetFlag(FLAGS_dedup_hosts),
                      ";checkpoint=", absl::GetFlag(FLAGS_checkpoint), ";layer=", absl::GetFlag(FLAGS_layer),
                      ";input=", absl::GetFlag(FLAGS_input), ";output=", absl::GetFlag(FLAGS_output));
}

}  // namespace waveep::cli
