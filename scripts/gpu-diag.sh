#!/usr/bin/env bash
# Where a decode step's and a prefill's time goes, on the GPU machine, without a profiler:
# the 8B-shaped model (made by bench/hf_llama8b_baseline.py --skip-bench if missing) is benchmarked
# with LATHE_CUDA_SKIP naming ops that are then not launched at all; the drop in step time is what
# those ops cost inside the recorded graph. Then one LATHE_CUDA_PROFILE=1 prefill table.
#   scripts/gpu-diag.sh [LATHE_BINARY] [MODEL_DIR]
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LATHE=${1:-/tmp/gpu-check-build/build/bin/lathe}
MODEL=${2:-/tmp/llama3-8b-shape}
export LD_LIBRARY_PATH="/tmp/gpu-check-build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -f "$MODEL/config.json" ] || python3 "$ROOT/bench/hf_llama8b_baseline.py" "$MODEL" --skip-bench >/dev/null 2>&1
row() {  # label, skip list, extra bench args
  local j
  j=$(LATHE_CUDA_SKIP="$2" timeout 120 "$LATHE" bench -m "$MODEL" --device cuda ${3:-} --json 2>/dev/null)
  python3 -c 'import json,sys; j=json.loads(sys.argv[2]); print(f"{sys.argv[1]:44}", "  ".join(f"{k}={v:.1f}" for k,v in j.items() if k.endswith("tok_s")))' "$1" "$j"
}
DEC="-p 16 -c 128 -n 64 -r 5"
row "decode: nothing skipped" "" "$DEC"
for s in attention_batch rope_store_kv add_rms_norm top_k embedding "matmul (gemv)" "ffn (gemv + glu)" \
         "attention_batch,rope_store_kv,add_rms_norm,rms_norm,top_k,embedding"; do
  row "decode: skip $s" "$s" "$DEC"
done
PRE="-p 2048 -c 0 -n 1 -r 5"
row "prefill: nothing skipped" "" "$PRE"
for s in attention_batch "ffn (fused bf16)" "matmul (cublas)" add_rms_norm rope_store_kv; do
  row "prefill: skip $s" "$s" "$PRE"
done
LATHE_CUDA_PROFILE=1 "$LATHE" bench -m "$MODEL" --device cuda $PRE 2>&1 | grep "cuda profile" | head -20
