#!/usr/bin/env node
// Reference outputs of Hugging Face tokenizers (npm `tokenizers`, the Rust library's Node
// binding) for lathe's differential test. Reads JSONL {"tokenizer": path, "text": ...} on stdin
// (path: a tokenizer.json file or the folder holding one) and writes, per input line and in
// order, {"ids", "ids_with_special", "decode", "decode_skip_special"}: the same four fields as
// ../shared/fixtures/tokenizers/*.jsonl, or {"error": message} when the reference fails.
// The package is found through NODE_PATH or LATHE_NPM_DIR (an `npm install --prefix` folder).
'use strict';
const fs = require('fs');
const path = require('path');
const readline = require('readline');

function loadTokenizers() {
  const dir = process.env.LATHE_NPM_DIR;
  if (dir) return require(path.join(path.resolve(dir), 'node_modules', 'tokenizers'));
  return require('tokenizers');
}

async function main() {
  const { Tokenizer } = loadTokenizers();
  const cache = new Map();  // one loaded tokenizer per path: loading a 10 MB file costs ~100 ms
  const get = (p) => {
    let file = p;
    if (fs.existsSync(p) && fs.statSync(p).isDirectory()) file = path.join(p, 'tokenizer.json');
    if (!cache.has(file)) cache.set(file, Tokenizer.fromFile(file));
    return cache.get(file);
  };
  const out = [];
  const flush = () => {
    if (out.length) process.stdout.write(out.join(''));
    out.length = 0;
  };
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let result;
    try {
      const req = JSON.parse(line);
      const tok = get(req.tokenizer);
      const ids = (await tok.encode(req.text, null, { addSpecialTokens: false })).getIds();
      const idsWithSpecial = (await tok.encode(req.text, null, { addSpecialTokens: true })).getIds();
      result = {
        ids: Array.from(ids),
        ids_with_special: Array.from(idsWithSpecial),
        decode: await tok.decode(Array.from(ids), false),
        decode_skip_special: await tok.decode(Array.from(idsWithSpecial), true),
      };
    } catch (e) {
      result = { error: String(e && e.message ? e.message : e) };
    }
    out.push(JSON.stringify(result) + '\n');
    if (out.length >= 256) flush();
  }
  flush();
}

main().catch((e) => {
  process.stderr.write(`reference.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
