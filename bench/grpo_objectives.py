"""Each policy loss (ppo, gspo, cispo) learns: 30 GRPO steps of the tiny CPU config on the
digit-share reward (a reward a random model can climb; tests.test_grpo.digit_reward) with
minibatches = 2, so that the ratios differ from 1 and the losses differ from each other; the
packed update (pack_len) on. Prints the mean reward of the first and last 5 steps per loss.

    python bench/grpo_objectives.py --workdir=/tmp/grpo_objectives [--steps 30] [--losses ppo,gspo,cispo]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # reasonax and tests (the config and the shared digit reward)

from tests.test_grpo import _tiny  # noqa: E402


def config(workdir: Path, loss: str, steps: int):
    """tests.test_grpo's tiny config with 2 minibatches, the packed update and `loss`."""
    changes = {"grpo.minibatches": 2, "grpo.pack_len": 160, "grpo.policy_loss": loss, "num_steps": steps,
               "optim.total_steps": steps, "checkpoint.every": steps}
    if loss == "gspo":
        changes["grpo.aggregation"] = "seq-mean-token-mean"
    return _tiny(workdir, **changes)


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
