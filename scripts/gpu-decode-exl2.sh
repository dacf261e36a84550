#!/usr/bin/env bash
# Decode speed of the Llama-3-8B-shaped model at 4.0 bpw EXL2 on the GPU machine, quickly: the
# packed weights are written by `lathe quantize --synthetic` from a config.json alone (no bf16
# folder), then `lathe bench` decodes under each variant (environment settings), one row each.
#   scripts/gpu-decode-exl2.sh [LATHE_BINARY]
# VARIANTS: space-separated label=S1,S2 (label alone: no settings), each setting an environment
# assignment ENV=v or a lathe option --opt:value (e.g. q4=--kv-cache:q4); BATCHES (default 1,8,16);
# BENCH_ARGS (default -p 16 -c 128 -n 64 -r 3).
set -u
LATHE=${1:-/tmp/gpu-check-build/build/bin/lathe}
CFG=/tmp/llama3-8b-config
EXL2=/tmp/llama3-8b-exl2-4.0
export LD_LIBRARY_PATH="/tmp/gpu-check-build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -f "$EXL2/config.json" ]; then
  mkdir -p "$CFG"
  python3 - "$CFG/config.json" <<'PY'
import json, sys
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 128, "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
           "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
           "torch_dtype": "bfloat16"}, open(sys.argv[1], "w"), indent=1)
PY
  t0=$SECONDS
  timeout 300 "$LATHE" quantize --synthetic -m "$CFG" -o "$EXL2" --bpw 4.0 >/dev/null || exit 1
  echo "synthetic 4.0 bpw model written in $((SECONDS - t0)) s"
fi
for v in ${VARIANTS:-default}; do
  label=${v%%=*}
  settings=""; [ "$label" != "$v" ] && settings=${v#*=}
  envs=(); opts=()
  for item in $(echo "$settings" | tr ',' ' '); do
    case "$item" in --*) opts+=("${item%%:*}" "${item#*:}") ;; *) envs+=("$item") ;; esac
  done
  j=$(env "${envs[@]}" timeout 300 "$LATHE" bench -m "$EXL2" --device cuda ${BENCH_ARGS:--p 16 -c 128 -n 64 -r 3} \
      -b "${BATCHES:-1,8,16}" "${opts[@]}" --json 2>/tmp/decode-bench.err) || { echo "$label: failed"; tail -3 /tmp/decode-bench.err; continue; }
  python3 -c 'import json,sys; j=json.loads(sys.argv[2]); print(f"{sys.argv[1]:28}", "  ".join(f"{k}={v:.1f}" if k.endswith("tok_s") else f"{k}={v:.3f}" for k,v in j.items() if k.endswith("tok_s") or k.endswith("host_ratio")))' "$label" "$j"
done
