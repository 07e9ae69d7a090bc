"""Each policy loss (ppo, gspo, cispo) learns: 30 GRPO steps of the tiny CPU config on the
digit-share reward (a reward a random model can climb; tests.test_grpo.digit_reward) with
minibatches = 2, so that the ratios differ from 1 and the losses differ from each other; the
packed update (pack_len) on. Prints the mean reward of the first and last 5 steps per loss.

    python bench/grpo_objectives.py --workdir=/tmp/grpo_objectives [--steps 30] [--losses ppo,gspo,cispo]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def config(workdir: Path, loss: str, steps: int):
    spec = importlib.util.spec_from_file_location("grpo_tiny_cpu", ROOT / "configs" / "grpo_tiny_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.workdir = str(workdir)
    c.synthetic.num_examples, c.synthetic.num_heldout = 200, 8
    c.grpo.prompts_per_step, c.grpo.group_size = 4, 8
    c.grpo.max_prompt_len, c.grpo.max_new_tokens = 64, 16
    c.grpo.reward_fns = ["tests.test_grpo.digit_reward"]
    c.grpo.minibatches, c.grpo.pack_len = 2, 160
    c.grpo.policy_loss = loss
    if loss == "gspo":
        c.grpo.aggregation = "seq-mean-token-mean"
    c.num_steps = c.optim.total_steps = steps
    c.optim.lr = 1e-2
    c.eval_every, c.log_every, c.peak_flops, c.tensorboard, c.export_hf = 0, 1, "1e11", False, "none"
    c.checkpoint.every = steps
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--losses", default="ppo,gspo,cispo")
    a = ap.parse_args()
    from reasonax.train import grpo

    for loss in a.losses.split(","):
        w = Path(a.workdir) / loss
        t0 = time.perf_counter()
        grpo.run(config(w, loss, a.steps))
        rows = [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]
        r = [x["reward/mean"] for x in rows if "reward/mean" in x]
        pad = [x["update/padding"] for x in rows if "update/padding" in x]
        clip = [x["clip_frac"] for x in rows if "clip_frac" in x]
        print(json.dumps(dict(loss=loss, steps=len(r), first5=sum(r[:5]) / 5, last5=sum(r[-5:]) / 5,
                              padding=sum(pad) / len(pad), clip_frac=sum(clip) / len(clip),
                              seconds=round(time.perf_counter() - t0, 1))), flush=True)


if __name__ == "__main__":
    main()
