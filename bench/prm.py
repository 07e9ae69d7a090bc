"""PRM step scoring throughput (model.prm.score_steps) on Gemma 3 270M shapes, random weights, CPU.

    python bench/prm.py [--solutions 16] [--batch_size 8] [--dtype float32] [--repeats 1]

Builds solutions of a realistic shape for GSM8K-style math (per setting: prompt tokens, steps per
solution, tokens per step; the separator is one token), scores them all with score_steps (rows
padded to power-of-two length buckets, batch_size rows per call) and reports steps/s, real
tokens/s, the padded share of the computed positions, and the model FLOP/s of the real tokens
(one forward without the unembedding plus the 1-logit head; computed here from flops.forward_flops).
The first call (compilation) is timed apart; the rate is the median over --repeats calls.
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# (prompt tokens, steps per solution, tokens per step): short and long GSM8K-style solutions
SETTINGS = ((64, 4, 24), (96, 8, 40))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--solutions", type=int, default=16)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    import jax
    import numpy as np

    from reasonax.model import config, flops, params as params_lib, prm

    cfg = config.get_preset("gemma3-270m")
    params = prm.init_prm(params_lib.init_params(cfg, jax.random.key(0), args.dtype), cfg, jax.random.key(1))
    V, D = cfg.vocab_size, cfg.hidden_size
    print(f"# Gemma 3 270M shapes (random weights), {args.dtype}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, jax {jax.__version__}, load {os.getloadavg()[0]:.1f}")
    print("| prompt | steps x tokens | rows/call | compile s | steps/s | tokens/s | padded share | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for prompt_len, n_steps, step_len in SETTINGS:
        rows, ends = [], []
        for _ in range(args.solutions):
            # lengths vary +-25% around the setting, as sampled solutions do
            steps = [list(rng.integers(3, V, max(1, int(step_len * rng.uniform(0.75, 1.25))))) for _ in range(n_steps)]
            ids, e = prm.join_steps([2, *rng.integers(3, V, prompt_len)], steps, [108])
            rows.append(ids)
            ends.append(e)
        t0 = time.perf_counter()
        prm.score_steps(params, cfg, rows[:args.batch_size], ends[:args.batch_size], batch_size=args.batch_size)
        compile_s = time.perf_counter() - t0  # includes one call; every bucket of the run is compiled below
        prm.score_steps(params, cfg, rows, ends, batch_size=args.batch_size)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            prm.score_steps(params, cfg, rows, ends, batch_size=args.batch_size)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        real = sum(map(len, rows))
        by_bucket = {}
        for r in rows:
            by_bucket.setdefault(prm.bucket_len(len(r)), []).append(r)
        computed = sum(-(-len(m) // args.batch_size) * args.batch_size * T for T, m in by_bucket.items())
        fl = sum(flops.forward_flops(cfg, 1, len(r))["total"] - 2 * V * D * len(r) + 2 * D * len(r) for r in rows)
        steps = sum(map(len, ends))
        print(f"| {prompt_len} | {n_steps} x {step_len} | {args.batch_size} | {compile_s:.1f} | {steps / t:.1f} | "
              f"{real / t:,.0f} | {1 - real / computed:.0%} | {fl / t / 1e9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
