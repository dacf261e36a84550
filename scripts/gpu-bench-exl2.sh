#!/usr/bin/env bash
# The quantization issue's GPU benchmark: a Llama-3-8B-shaped model at 4.0 bpw EXL2 (random packed
# weights written by `lathe quantize --synthetic` in the layout lathe's quantizer picks for 4.0 bpw)
# against the same shape in bf16 (made by bench/hf_llama8b_baseline.py --skip-bench, random
# weights), both run by lathe on the same card in the same call. Prints JSON and a table.
#   scripts/gpu-bench-exl2.sh [LATHE_BINARY] [BF16_DIR] [EXL2_DIR]
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LATHE=${1:-/tmp/gpu-check-build/build/bin/lathe}
BF16=${2:-/tmp/llama3-8b-shape}
EXL2=${3:-/tmp/llama3-8b-exl2-4.0}
LOGS=${OUT:-/tmp/gpu-bench}
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="/tmp/gpu-check-build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ ! -f "$BF16/config.json" ]; then
  echo "== making the bf16 model folder $BF16"
  PYTHONUNBUFFERED=1 timeout 420 python3 "$ROOT/bench/hf_llama8b_baseline.py" "$BF16" --skip-bench \
    >"$LOGS/hf-make.json" 2>"$LOGS/hf-make.err" || { echo "making the model failed:"; tail -20 "$LOGS/hf-make.err"; exit 1; }
fi
echo "== lathe quantize --synthetic (4.0 bpw)"
start=$(date +%s)
timeout 300 "$LATHE" quantize --synthetic -m "$BF16" -o "$EXL2" --bpw 4.0 || exit 1
echo "written in $(( $(date +%s) - start )) s; $(du -sh "$EXL2" | cut -f1)"
ARGS=(-p 512,2048 -c 128 -n 64 -r 3 -b ${BATCHES:-1,16} --json)
for which in exl2 bf16; do
  dir=$EXL2; [ $which = bf16 ] && dir=$BF16
  echo "== lathe bench $which"
  timeout 300 "$LATHE" bench -m "$dir" --device cuda "${ARGS[@]}" ${LATHE_ARGS:-} >"$LOGS/$which.json" 2>"$LOGS/$which.err" ||
    { echo "lathe bench $which failed:"; tail -20 "$LOGS/$which.err"; }
  cat "$LOGS/$which.json"
done
python3 - "$LOGS/exl2.json" "$LOGS/bf16.json" <<'PY'
import json, sys
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return {}
q, b = load(sys.argv[1]), load(sys.argv[2])
keys = sorted(k for k in set(q) | set(b) if k.endswith("tok_s"))
print(f"{'metric':28} {'bf16':>10} {'exl2 4.0':>10} {'ratio':>8}")
for k in keys:
    bv, qv = b.get(k), q.get(k)
    r = f"{qv / bv:.2f}x" if bv and qv else "-"
    print(f"{k:28} {bv if bv is None else round(bv, 1)!s:>10} {qv if qv is None else round(qv, 1)!s:>10} {r:>8}")
for k in ("device_used_bytes", "weight_bytes", "roofline_fraction"):
    print(k, "bf16:", b.get(k), "exl2:", q.get(k))
PY
