#!/usr/bin/env bash
# Runs lathe's tokenizer_bench and HF tokenizers' bench.js on the same text and tokenizers and
# prints one table: MB/s of each (whole file in one call, and line by line) and lathe/HF ratios.
# Token counts of both sides must agree (same ids => same count); a differing count is flagged.
#
# usage: scripts/hf-tokenizers/compare-bench.sh [BUILD_DIR] [TEXT_FILE] [TOKENIZERS_DIR]
#   BUILD_DIR defaults to build; it must hold bench/tokenizer/tokenizer_bench (ninja tokenizer_bench)
#   and npm/node_modules/tokenizers (npm install --prefix BUILD_DIR/npm tokenizers@0.23.2, or set
#   LATHE_NPM_DIR). TEXT_FILE defaults to ../shared/data/text/val.txt, TOKENIZERS_DIR to
#   BUILD_DIR/tokenizers (scripts/fetch-tokenizers.sh). LATHE_TOKENIZER_BENCH overrides the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
text=${2:-$here/../../../shared/data/text/val.txt}
toks=${3:-$build/tokenizers}
bin=${LATHE_TOKENIZER_BENCH:-$build/bench/tokenizer/tokenizer_bench}
export LATHE_NPM_DIR=${LATHE_NPM_DIR:-$build/npm}
[ -x "$bin" ] || { echo "missing $bin (build the tokenizer_bench target)" >&2; exit 1; }
[ -f "$text" ] || { echo "missing text file $text" >&2; exit 1; }
[ -d "$LATHE_NPM_DIR/node_modules/tokenizers" ] || {
  echo "missing $LATHE_NPM_DIR/node_modules/tokenizers (npm install --prefix $LATHE_NPM_DIR tokenizers@0.23.2)" >&2; exit 1; }
names=(llama2 llama3_1 qwen3 deepseek_v3 gemma3 gptoss)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" "$text" "$toks" "${names[@]}" >"$tmp/lathe.jsonl"
node "$here/bench.js" "$text" "$toks" "${names[@]}" >"$tmp/hf.jsonl"
node - "$tmp/lathe.jsonl" "$tmp/hf.jsonl" "$(nproc)" <<'JS'
const fs = require('fs');
const read = (f) => Object.fromEntries(fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean)
  .map((l) => JSON.parse(l)).map((r) => [r.tokenizer, r]));
const [lathe, hf] = [read(process.argv[2]), read(process.argv[3])];
const any = Object.values(lathe)[0];
console.log(`encode throughput, ${(any.bytes / 1e6).toFixed(2)} MB text, median of 5, one thread each ` +
            `(${process.argv[4]} cores on this machine); MB/s`);
const row = (c) => c.map((x, i) => (i === 0 ? String(x).padEnd(12) : String(x).padStart(11))).join(' ');
console.log(row(['tokenizer', 'lathe whole', 'HF whole', 'ratio', 'lathe lines', 'HF lines', 'ratio', 'ktok/s L', 'ktok/s HF']));
for (const name of Object.keys(lathe)) {
  const l = lathe[name], h = hf[name];
  if (!h) { console.log(row([name, l.whole_mbps.toFixed(2), 'n/a'])); continue; }
  const flag = l.whole_tokens !== h.whole_tokens || l.lines_tokens !== h.lines_tokens ? ' token counts differ!' : '';
  console.log(row([name, l.whole_mbps.toFixed(2), h.whole_mbps.toFixed(2), (l.whole_mbps / h.whole_mbps).toFixed(2) + 'x',
                   l.lines_mbps.toFixed(2), h.lines_mbps.toFixed(2), (l.lines_mbps / h.lines_mbps).toFixed(2) + 'x',
                   (l.whole_tps / 1e3).toFixed(0), (h.whole_tps / 1e3).toFixed(0)]) + flag);
}
JS
