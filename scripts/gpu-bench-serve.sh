#!/usr/bin/env bash
# The serving issue's GPU benchmark: `lathe serve` on a Llama-3-8B-shaped model (the bf16 folder
# gpu-bench-exl2.sh makes, or any MODEL_DIR) driven by bench/serve/serve_load: several request rates
# with a spread of prompt/output lengths (throughput, TTFT and ITL p50/p99), and a shared-prefix
# workload (a ~2,000-token system prompt, varied questions: cached vs cold TTFT); then
# `lathe bench -b 1,8,32,64` for decode throughput by batch size. Run after gpu-check.sh unpacked the
# bundle (it carries serve_load).
#   scripts/gpu-bench-serve.sh [MODEL_DIR] [TEXT]
# Environment: RATES, REQUESTS (serve_load), SERVE_ARGS (extra `lathe serve` options, e.g.
# "--kv-cache q4"), SKIP_BENCH (no `lathe bench` at the end).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-/tmp/gpu-check-build/build/bin}
MODEL=${1:-/tmp/llama3-8b-shape}
TEXT=${2:-$ROOT/carry/shared/data/val.txt}
LOGS=${OUT:-/tmp/gpu-bench-serve}
PORT=${PORT:-18080}
mkdir -p "$LOGS"
export LD_LIBRARY_PATH="/tmp/gpu-check-build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -f "$MODEL/config.json" ]; then  # the bf16 8B shape with random weights, a Llama 3 tokenizer copied in
  PYTHONUNBUFFERED=1 timeout 420 python3 "$ROOT/bench/hf_llama8b_baseline.py" "$MODEL" --skip-bench >"$LOGS/hf-make.log" 2>&1 ||
    { echo "making the model failed"; tail -5 "$LOGS/hf-make.log"; exit 1; }
  cp "$ROOT/carry/tok/tokenizer.json" "$MODEL/"
fi
# A model folder without a tokenizer (lathe quantize --synthetic of a config) gets carry/tok's; ids
# past that tokenizer's vocabulary become plain vocabulary entries (" tok<id>"), so every token the
# model emits decodes to text and streams as its own chunk.
if [ ! -f "$MODEL/tokenizer.json" ]; then
  python3 - "$ROOT/carry/tok/tokenizer.json" "$MODEL/config.json" "$MODEL/tokenizer.json" <<'PY'
import json, sys
tok, cfg = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
vocab = tok["model"]["vocab"]
have = max(list(vocab.values()) + [t["id"] for t in tok.get("added_tokens", [])]) + 1
for i in range(have, cfg["vocab_size"]):
    vocab["\u2581tok%d" % i] = i
json.dump(tok, open(sys.argv[3], "w"))
PY
fi
"$BIN/lathe" serve -m "$MODEL" --port "$PORT" --device cuda ${SERVE_ARGS:-} >"$LOGS/serve.log" 2>&1 &
server=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 1; done
grep -m1 "KV blocks" "$LOGS/serve.log"
"$BIN/serve_load" --url "http://127.0.0.1:$PORT" --text "$TEXT" --rates ${RATES:-1,4,16,inf} --requests ${REQUESTS:-64} \
  --prompt-words 32:1024 --output-tokens 16:256 --prefix-words 1500 --prefix-requests 8 | tee "$LOGS/serve_load.txt"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^lathe_" | head -40
kill -TERM $server; wait $server
[ -n "${SKIP_BENCH:-}" ] && exit 0
"$BIN/lathe" bench -m "$MODEL" --device cuda -p 512 -c 128 -n 64 -r 3 -b 1,8,32,64 --json | tee "$LOGS/bench.json"
