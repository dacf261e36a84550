#!/usr/bin/env bash
# The CUDA issue's end-to-end benchmark on the GPU machine: a Llama-3-8B-shaped model with random
# bf16 weights is made once by transformers (bench/hf_llama8b_baseline.py, which also measures
# transformers on it), then the same folder is loaded by lathe. Prints both as JSON and a table.
#   scripts/gpu-bench-8b.sh [LATHE_BINARY] [MODEL_DIR]
# LATHE_BINARY defaults to the gpu-check bundle's (/tmp/gpu-check-build/build/bin/lathe).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LATHE=${1:-/tmp/gpu-check-build/build/bin/lathe}
MODEL=${2:-/tmp/llama3-8b-shape}
LOGS=${OUT:-/tmp/gpu-bench}
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="/tmp/gpu-check-build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== transformers baseline (and model folder $MODEL)"
PYTHONUNBUFFERED=1 timeout 420 python3 "$ROOT/bench/hf_llama8b_baseline.py" "$MODEL" ${HF_ARGS:-} \
  >"$LOGS/hf.json" 2>"$LOGS/hf.err" || { echo "transformers baseline failed:"; tail -20 "$LOGS/hf.err"; }
cat "$LOGS/hf.json"
echo "== lathe"
timeout 300 "$LATHE" bench -m "$MODEL" --device cuda -p 512,2048 -c 128,4096 -n 64 -r 3 ${LATHE_ARGS:-} \
  --json >"$LOGS/lathe.json" 2>"$LOGS/lathe.err" || { echo "lathe bench failed:"; tail -20 "$LOGS/lathe.err"; }
cat "$LOGS/lathe.json"
echo "== lathe batched decode (ctx 128)"
timeout 300 "$LATHE" bench -m "$MODEL" --device cuda -p 16 -c 128 -b 8,32 -n 64 -r 3 ${LATHE_ARGS:-} \
  --json >"$LOGS/lathe-batch.json" 2>"$LOGS/lathe-batch.err" || { echo "lathe batched bench failed:"; tail -20 "$LOGS/lathe-batch.err"; }
cat "$LOGS/lathe-batch.json"
echo "== lathe without graphs (ctx 128)"
timeout 300 "$LATHE" bench -m "$MODEL" --device cuda -p 16 -c 128 -n 64 -r 3 --no-graphs ${LATHE_ARGS:-} \
  --json >"$LOGS/lathe-nograph.json" 2>"$LOGS/lathe-nograph.err" || { echo "lathe bench (no graphs) failed:"; tail -20 "$LOGS/lathe-nograph.err"; }
cat "$LOGS/lathe-nograph.json"
python3 - "$LOGS/hf.json" "$LOGS/lathe.json" "$LOGS/lathe-batch.json" "$LOGS/lathe-nograph.json" <<'PY'
import json, sys
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return {}
hf = load(sys.argv[1])
la = load(sys.argv[2])
la.update({k: v for k, v in load(sys.argv[3]).items() if k.startswith("decode_b")})
ng = load(sys.argv[4])
if "decode_ctx128_tok_s" in ng:
    la["decode_ctx128_nograph_tok_s"] = ng["decode_ctx128_tok_s"]
rows = [("decode b1 ctx128 tok/s", "decode_b1_ctx128_tok_s", "decode_ctx128_tok_s"),
        ("decode b1 ctx4096 tok/s", "decode_b1_ctx4096_tok_s", "decode_ctx4096_tok_s"),
        ("decode b1 ctx128 no graphs", "decode_b1_ctx128_tok_s", "decode_ctx128_nograph_tok_s"),
        ("decode b8 ctx128 tok/s", "decode_b8_ctx128_tok_s", "decode_b8_ctx128_tok_s"),
        ("decode b32 ctx128 tok/s", "decode_b32_ctx128_tok_s", "decode_b32_ctx128_tok_s"),
        ("prefill 512 tok/s", "prefill_512_tok_s", "prefill_512_tok_s"),
        ("prefill 2048 tok/s", "prefill_2048_tok_s", "prefill_2048_tok_s")]
print(f"{'metric':28} {'transformers':>14} {'lathe':>12} {'ratio':>8}")
for name, h, l in rows:
    hv = hf.get(h); lv = la.get(l) if l else None
    ratio = f"{lv / hv:.2f}x" if hv and lv else "-"
    print(f"{name:28} {hv if hv is None else round(hv, 1)!s:>14} {lv if lv is None else round(lv, 1)!s:>12} {ratio:>8}")
print("lathe ttft (prefill 512) ms:", la.get("ttft_512_ms"), " transformers ttft ctx128 s:", hf.get("ttft_ctx128_s"))
print("lathe roofline fraction:", la.get("roofline_fraction"), " peak GiB:", (la.get("device_used_bytes") or 0) / 2**30,
      " transformers peak GiB:", hf.get("peak_memory_gib"))
PY
