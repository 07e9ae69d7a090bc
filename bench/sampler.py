"""Decode throughput of the sampler vs transformers' generate on the real Gemma 3 270M, same run.

    python bench/sampler.py [--dtypes float32,bfloat16] [--batches 1,8,64] [--new 64] [--hf_repeats 1]

Greedy, EOS off, every row generates --new tokens; tokens/s counts generated tokens over the whole
call (prefill included) for both. "decode-only" is the steady-state rate of the decode loop:
(new - 8) tokens per row over the time difference between --new and 8 new tokens. The machine's limits are measured in the same process:
read bandwidth (sum over a 1 GiB array) and matmul FLOP/s (2048^3 dot). Per decode step the
sampler reads every parameter once plus the KV cache (it attends over the whole fixed-size cache),
so the bandwidth limit at batch B is B * bandwidth / (param bytes + B * cache bytes per row); the
FLOP limit is peak / (2 * matmul params + attention) per token. Both are compared with the
decode-only rate.
"""

import argparse
import dataclasses
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def read_bandwidth(n_bytes=1 << 30, repeats=5):
    import jax
    import jax.numpy as jnp

    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a.sum())
    f(x).block_until_ready()
    best = min(_timed(lambda: f(x).block_until_ready()) for _ in range(repeats))
    return n_bytes / best


def matmul_peak(dtype, n=2048, repeats=5):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    return 2 * n**3 / min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Question: Tom has 3 apples and buys 5 more.",
           "The history of mathematics deals with", "In 1905, Albert Einstein published",
           "Photosynthesis is the process by which", "A prime number is a natural number",
           "The quick brown fox jumps over"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf_repeats", type=int, default=1)
    ap.add_argument("--skip_hf_above", type=int, default=64, help="skip transformers above this batch size")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from reasonax import model, sample
    from reasonax.model import flops, gguf

    path = gguf.gemma3_270m_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    bw = read_bandwidth()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} ({jax.devices()[0].platform}); "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); transformers {transformers.__version__}")
    print(f"measured read bandwidth: {bw / 1e9:.1f} GB/s")
    print("| dtype | batch | reasonax tok/s | transformers tok/s | ratio | reasonax decode-only tok/s | "
          "bandwidth limit tok/s | decode of bw limit | FLOP limit tok/s | decode of FLOP limit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        cfg, params = model.load_hf(path, dtype=dtype)
        ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
        peak = matmul_peak(jnp.dtype(dtype))
        param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
        for batch in map(int, args.batches.split(",")):
            prompts = [tok(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(batch)]
            sp = sample.SamplingParams(max_new_tokens=args.new, temperature=0.0)
            run = lambda s: sample.generate(params, cfg, prompts, s, eos_ids=())  # noqa: E731
            short = dataclasses.replace(sp, max_new_tokens=8)
            run(sp), run(short)  # compile
            ours = statistics.median(_timed(lambda: run(sp)) for _ in range(args.repeats))
            ours_short = statistics.median(_timed(lambda: run(short)) for _ in range(args.repeats))
            ours_tps = batch * args.new / ours
            decode_tps = batch * (args.new - 8) / max(ours - ours_short, 1e-9)  # steady-state decode steps
            hf_tps = None
            if batch <= args.skip_hf_above:
                T = max(map(len, prompts))
                ids = torch.zeros(batch, T, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, p in enumerate(prompts):
                    ids[i, T - len(p):] = torch.tensor(p)
                    mask[i, T - len(p):] = 1
                gen = lambda: ref.generate(ids, attention_mask=mask, max_new_tokens=args.new,  # noqa: E731
                                           min_new_tokens=args.new, do_sample=False, pad_token_id=0)
                with torch.inference_mode():
                    gen()  # warm up
                    hf = statistics.median(_timed(gen) for _ in range(args.hf_repeats))
                hf_tps = batch * args.new / hf
            T = sample.sampler.bucket(max(map(len, prompts)))
            cache_row = 2 * cfg.num_layers * (T + args.new) * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(dtype).itemsize
            bw_limit = batch * bw / (param_bytes + batch * cache_row)
            per_token = flops.forward_flops(cfg, 1, 1, context=T + args.new // 2, causal=True)["total"]
            flop_limit = peak / per_token
            print(f"| {dtype} | {batch} | {ours_tps:.1f} | {'-' if hf_tps is None else f'{hf_tps:.1f}'} | "
                  f"{'-' if hf_tps is None else f'{ours_tps / hf_tps:.2f}x'} | {decode_tps:.1f} | {bw_limit:.1f} | "
                  f"{decode_tps / bw_limit:.0%} | {flop_limit:.1f} | {decode_tps / flop_limit:.0%} |", flush=True)


if __name__ == "__main__":
    main()
