"""The GRPO update packed against unpacked, on recorded rollout lengths (bench/rollout.py --lengths).

    python bench/rollout.py --part rollout --skip static,tunix,vllm,engine_cache --engine_calls 1 --lengths /tmp/len_fewshot.json
    python bench/grpo_pack.py --lengths /tmp/len_fewshot.json [--questions 8] [--pack_len 2048] [--accum 4]
    python bench/grpo_pack.py --lengths /tmp/len_fewshot.json --questions 0 --pack_len 4096 --accum 2 --steps 2   # BENCHMARKS.md's run (~10 min)

Each recorded completion becomes one sequence of its prompt length + completion length (random
token ids: only the shapes matter) for bench/grpo.py's small model (Qwen2-style, hidden 256, MLP
768, 4 layers, 4 heads of 64, vocab 259, float32; the same flags; layers scanned and
rematerialised, --remat). One GRPO train step (the ppo loss, token-mean, mu 1, one minibatch,
--accum micro-batches, AdamW) runs on:

- unpacked: one row per completion, rows cut to the batch's longest prompt + completion rounded up
  to a multiple of --row_bucket (rollout.RolloutSource's layout without grpo.pack_len);
- packed: first fit into rows of --pack_len tokens within each micro-batch (rollout.pack_rows),
  with as many packed rows per micro-batch as this batch needs (a token budget that fits it).

Reported per layout: update positions (rows x row length), real tokens, the padding fraction and
the wall time per step (median of --steps timed steps after one compiling step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", required=True)
    ap.add_argument("--questions", type=int, default=8, help="use the first N questions' completions (0: all)")
    ap.add_argument("--pack_len", type=int, default=2048)
    ap.add_argument("--row_bucket", type=int, default=64)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--remat", default="full", help="rematerialise each layer (none | full | dots): keeps the "
                                                     "unpacked step's attention scores within this machine's memory")
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    import functools

    import jax
    import numpy as np
    import optax

    from reasonax import model
    from reasonax.train import step as ST
    from reasonax.train import state as S
    from reasonax.train.grpo import LossParams, grpo_loss, rollout

    rec = json.loads(open(a.lengths).read())
    n = (a.questions or rec["questions"]) * rec["samples"]
    plen, clen = rec["prompt"][:n], rec["completion"][:n]
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 256, p)) for p in plen]
    comps = [list(rng.integers(0, 256, max(c, 1))) for c in clen]
    lps = [list(-rng.random(len(c))) for c in comps]
    full = max(plen) + rec["max_new_tokens"]
    examples = rollout.completion_examples(prompts, comps, lps, [False] * n, full, mask_truncated=False)
    T = rollout.row_length(max(len(e["inputs"]) for e in examples), full, a.row_bucket)
    unpacked = rollout.build_rows(prompts, comps, lps, [False] * n, T, mask_truncated=False)
    _, needed = rollout.pack_rows(examples, a.accum, a.pack_len, 1)
    packed, _ = rollout.pack_rows(examples, a.accum, a.pack_len, needed)
    adv = rng.normal(size=n).astype(np.float32)

    cfg = model.get_preset("qwen2.5-0.5b").replace(
        vocab_size=259, hidden_size=a.hidden, intermediate_size=a.intermediate, num_layers=a.layers, num_heads=4,
        num_kv_heads=2, head_dim=64, tie_embeddings=True, bos_token_id=257, eos_token_ids=(258,), pad_token_id=256,
        remat=a.remat)
    mesh = model.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    params = model.init_params(cfg, jax.random.key(0), "float32", mesh, std=0.02)
    opt = optax.adamw(1e-5, b1=0.9, b2=0.95, weight_decay=0.0)
    fn = functools.partial(grpo_loss, cfg=cfg, hp=LossParams(), chunk=None)
    p0 = jax.device_get(params)
    report = {"lengths": a.lengths, "template": rec.get("template"), "sequences": n, "pack_len": a.pack_len,
              "accum": a.accum, "model": dict(hidden=a.hidden, intermediate=a.intermediate, layers=a.layers),
              "machine": f"{os.uname().machine}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    for name, rows in (("unpacked", unpacked), ("packed", packed)):
        state = S.create_state(jax.tree.map(jax.numpy.array, p0), cfg, opt, mesh)
        step = ST.build_train_step(fn, opt, jax.tree.map(lambda x: x.sharding, state), mesh, accum_steps=a.accum)
        batch = jax.device_put({**rows, "advantages": adv}, ST.batch_sharding(mesh))
        times = []
        for _ in range(a.steps + 1):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
            print(f"{name} step {len(times)}: {times[-1]:.1f} s", flush=True)
        positions = rows["inputs"].size
        real = int((rows["segment_ids"] > 0).sum())
        report[name] = {"rows": rows["inputs"].shape[0], "row_len": rows["inputs"].shape[1], "positions": positions,
                        "real_tokens": real, "padding": 1 - real / positions, "step_s": statistics.median(times[1:]),
                        "first_step_s": times[0], "loss": float(metrics["loss"])}
        print(json.dumps({name: report[name]}), flush=True)
    u, p = report["unpacked"], report["packed"]
    report["position_ratio"] = u["positions"] / p["positions"]
    report["time_ratio"] = u["step_s"] / p["step_s"]
    report["gain_vs_target"] = report["time_ratio"] / (0.8 * report["position_ratio"])
    print(json.dumps({k: report[k] for k in ("position_ratio", "time_ratio", "gain_vs_target")}), flush=True)
    if a.json:
        open(a.json, "w").write(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
