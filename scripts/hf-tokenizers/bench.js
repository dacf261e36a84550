#!/usr/bin/env node
// Encode throughput of HF tokenizers (npm tokenizers@0.23.2) on a text file, measured as
// bench/tokenizer/tokenizer_bench.cpp measures lathe: the whole file in one encode call, and line
// by line (one awaited call per line, newline kept); median of 5 runs after one warm-up; one JSON
// line per tokenizer. The line-by-line time includes the binding's per-call cost (a JS promise
// per call), which is what a Node user pays; encodeBatch is not used, so both sides run on one
// thread.
//
// usage: LATHE_NPM_DIR=build/npm node bench.js TEXT_FILE TOKENIZERS_DIR [NAME...]
'use strict';
const fs = require('fs');
const path = require('path');

const dir = process.env.LATHE_NPM_DIR;
const { Tokenizer } = dir ? require(path.join(path.resolve(dir), 'node_modules', 'tokenizers')) : require('tokenizers');

async function medianSeconds(fn, runs = 5) {
  await fn();
  const t = [];
  for (let r = 0; r < runs; ++r) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(t.length / 2)];
}

async function main() {
  const [file, tokDir, ...rest] = process.argv.slice(2);
  if (!file || !tokDir) {
    console.error('usage: node bench.js TEXT_FILE TOKENIZERS_DIR [NAME...]');
    process.exit(2);
  }
  const text = fs.readFileSync(file, 'utf8');
  const bytes = Buffer.byteLength(text, 'utf8');
  const lines = text.match(/[^\n]*\n|[^\n]+$/g) || [];
  const names = rest.length ? rest : ['llama2', 'llama3_1', 'qwen3', 'deepseek_v3', 'gemma3', 'gptoss'];
  const mb = bytes / 1e6;
  for (const name of names) {
    const tok = Tokenizer.fromFile(path.join(tokDir, name, 'tokenizer.json'));
    let wholeTokens = 0, lineTokens = 0;
    const whole = await medianSeconds(async () => {
      wholeTokens = (await tok.encode(text, null, { addSpecialTokens: false })).getIds().length;
    });
    const byLine = await medianSeconds(async () => {
      lineTokens = 0;
      for (const l of lines) lineTokens += (await tok.encode(l, null, { addSpecialTokens: false })).getIds().length;
    });
    console.log(JSON.stringify({
      tokenizer: name, bytes, whole_s: whole, whole_mbps: mb / whole, whole_tokens: wholeTokens,
      whole_tps: wholeTokens / whole, lines_s: byLine, lines_mbps: mb / byLine, lines_tokens: lineTokens,
      lines_tps: lineTokens / byLine,
    }));
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
