#!/usr/bin/env python3
"""Baseline for the CUDA issue, run on the GPU machine: builds a Llama-3-8B-shaped model with random
bf16 weights (transformers from_config, seeded), saves it to a folder lathe loads too, and measures
transformers 5.x on the same card: decode tok/s at batch 1 (context 128 and 4096), batch 8 and 32,
prefill tok/s at 512 and 2048, time to first token, peak memory. Prints one JSON object.

usage: hf_llama8b_baseline.py OUT_DIR [--layers 32] [--skip-save] [--skip-bench]
"""
import argparse, json, os, sys, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def shape_config(layers):
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
                       eos_token_id=128001, torch_dtype="bfloat16")


def timed(fn, reps=3):
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--skip-save", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = shape_config(args.layers)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    # from_config init draws small normal weights: non-zero, realistic magnitudes.
    if not args.skip_save:
        t0 = time.perf_counter()
        model.save_pretrained(args.out, safe_serialization=True, max_shard_size="5GB")
        print(f"saved to {args.out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.skip_bench:
        return
    res = {"card": torch.cuda.get_device_name(0), "transformers": __import__("transformers").__version__,
           "torch": torch.__version__, "layers": args.layers}
    g = torch.Generator(device="cuda").manual_seed(1)
    vocab = cfg.vocab_size

    def decode_rate(batch, ctx, new=64):
        ids = torch.randint(1, vocab, (batch, ctx), device="cuda", generator=g)
        run = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       pad_token_id=0)
        with torch.no_grad():
            run(4)  # warm-up
            t_short = timed(lambda: run(1), reps=3)
            t_long = timed(lambda: run(new + 1), reps=3)
        return batch * new / (t_long - t_short), t_short

    with torch.no_grad():
        for name, batch, ctx in [("b1_ctx128", 1, 128), ("b1_ctx4096", 1, 4096), ("b8_ctx128", 8, 128),
                                 ("b32_ctx128", 32, 128)]:
            rate, ttft = decode_rate(batch, ctx)
            res[f"decode_{name}_tok_s"] = rate
            if batch == 1 and ctx == 128:
                res["ttft_ctx128_s"] = ttft
        for n in (512, 2048):
            ids = torch.randint(1, vocab, (1, n), device="cuda", generator=g)
            model(ids)
            t = timed(lambda: model(ids, logits_to_keep=1))
            res[f"prefill_{n}_tok_s"] = n / t
    res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res))


if __name__ == "__main__":
    main()
