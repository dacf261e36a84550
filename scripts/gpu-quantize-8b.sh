#!/usr/bin/env bash
# The quantization issue's timing goal: `lathe quantize --device cuda` of a Llama-3-8B-shaped bf16
# model (random weights from bench/hf_llama8b_baseline.py --skip-bench, a Llama 3 tokenizer copied
# in) to 4.0 bpw, measured end to end (calibration, measurement, optimizer, final GPTQ pass, file).
#   scripts/gpu-quantize-8b.sh [LAYERS] [TOKENIZER_JSON]
# LAYERS < 32 times a truncated model (the time grows linearly with the layer count).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAYERS=${1:-32}
TOKENIZER=${2:-$ROOT/carry/tok/tokenizer.json}
LATHE=${LATHE:-/tmp/gpu-check-build/build/bin/lathe}
BF16=/tmp/llama3-8b-shape-$LAYERS
OUTDIR=/tmp/llama3-8b-q40-$LAYERS
LOGS=${OUT:-/tmp/gpu-quantize}
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="/tmp/gpu-check-build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -f "$BF16/config.json" ]; then
  start=$(date +%s)
  PYTHONUNBUFFERED=1 timeout 420 python3 "$ROOT/bench/hf_llama8b_baseline.py" "$BF16" --layers "$LAYERS" --skip-bench \
    >"$LOGS/hf-make.json" 2>"$LOGS/hf-make.err" || { echo "making the model failed:"; tail -20 "$LOGS/hf-make.err"; exit 1; }
  cp "$TOKENIZER" "$BF16/tokenizer.json"
  echo "bf16 model ($LAYERS layers) made in $(( $(date +%s) - start )) s"
fi
rm -rf "$OUTDIR"
start=$(date +%s%N)
"$LATHE" quantize -m "$BF16" -o "$OUTDIR" --bpw 4.0 --device cuda --json ${QUANT_ARGS:-} >"$LOGS/quantize.json" 2>"$LOGS/quantize.err"
rc=$?
secs=$(( ($(date +%s%N) - start) / 1000000 ))e-3
tail -c 2000 "$LOGS/quantize.err" | tr '\r' '\n' | tail -8
python3 - "$LOGS/quantize.json" "$secs" "$LAYERS" "$rc" <<'PY'
import json, sys
path, secs, layers, rc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    r = json.load(open(path))
except Exception:
    r = {}
print(f"quantize rc={rc}: {layers} layers in {secs:.1f} s wall; 32-layer estimate {secs * 32 / layers / 60:.1f} min;"
      f" bpw {r.get('bpw')}, measured {r.get('measured')}, report seconds {r.get('seconds')}")
PY
