"""SFT then GRPO of a tiny model on synthetic arithmetic: held-out accuracy before and after (CPU).

    python bench/grpo_arithmetic.py --workdir=/tmp/grpo_arith [--sft_steps=300 --grpo_steps=150 --lr=1e-4]

1. SFT (configs/sft_tiny_cpu.py): the tiny Qwen-style byte-level model on worked arithmetic
   solutions ending in \\boxed{answer}.
2. GRPO (configs/grpo_tiny_cpu.py) from the SFT export: correctness reward from the strict
   grader, G completions per prompt, on the same kind of problems.
3. Greedy accuracy on held-out problems (other seed) of the SFT model (= GRPO step 0) and after
   GRPO, graded strictly (no last-number fallback).

Prints a markdown table and writes <workdir>/grpo_arithmetic.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/reasonax_grpo_arithmetic", "output directory (runs are resumed if present)")
flags.DEFINE_integer("sft_steps", 300, "SFT steps")
flags.DEFINE_integer("grpo_steps", 150, "GRPO steps")
flags.DEFINE_integer("prompts", 8, "GRPO prompts per step")
flags.DEFINE_integer("group", 16, "GRPO completions per prompt")
flags.DEFINE_float("lr", 1e-4, "GRPO learning rate")
flags.DEFINE_integer("heldout", 200, "held-out problems")
flags.DEFINE_bool("dynamic_sampling", True, "DAPO dynamic sampling (resample all-equal groups, up to 3 rounds)")
flags.DEFINE_integer("task_steps", 1, "operations per arithmetic problem (SFT, GRPO and held-out)")
flags.DEFINE_integer("max_value", 9, "largest starting value / operand of the arithmetic problems")


def _config(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    import jax

    from reasonax.model import convert
    from reasonax.train import common, grpo, sft
    from reasonax.train.grpo import rollout

    workdir = Path(FLAGS.workdir)
    s = _config("sft_tiny_cpu")
    s.workdir = str(workdir / "sft")
    s.num_steps = s.optim.total_steps = FLAGS.sft_steps
    s.synthetic.steps, s.synthetic.max_value = FLAGS.task_steps, FLAGS.max_value
    s.peak_flops, s.tensorboard = "1e11", False
    t0 = time.perf_counter()
    if not (workdir / "sft" / "hf" / "config.json").is_file():
        sft.run(s)
    t_sft = time.perf_counter() - t0

    g = _config("grpo_tiny_cpu")
    g.workdir = str(workdir / "grpo")
    g.model.path, g.model.preset, g.model.overrides = str(workdir / "sft" / "hf"), "", {}
    g.synthetic.num_heldout = FLAGS.heldout
    g.synthetic.steps, g.synthetic.max_value = FLAGS.task_steps, FLAGS.max_value
    g.grpo.eval_limit = FLAGS.heldout
    g.grpo.prompts_per_step, g.grpo.group_size = FLAGS.prompts, FLAGS.group
    g.num_steps = g.optim.total_steps = FLAGS.grpo_steps
    g.optim.lr = FLAGS.lr
    g.grpo.dynamic_sampling = FLAGS.dynamic_sampling
    g.eval_every = FLAGS.grpo_steps // 3
    g.peak_flops, g.tensorboard = "1e11", False

    # accuracy of the SFT model on the held-out prompts GRPO evaluates on
    _, held_file = grpo.write_synthetic(g)
    cfg, params = convert.load_model(g.model.path)
    tokenizer = common.load_tokenizer(g)
    eos = grpo.stop_ids(g, cfg, tokenizer)
    held = rollout.load_prompts(dataclasses.replace(grpo.check_config(g).grpo, files=(held_file,)), tokenizer, g.grpo.max_prompt_len)
    before = grpo.accuracy_evaluator(held, cfg, tokenizer, g.grpo, eos, grpo.stop_strings(g))(params)["accuracy"]
    del params
    jax.clear_caches()

    t0 = time.perf_counter()
    grpo.run(g)
    t_grpo = time.perf_counter() - t0
    rows = [json.loads(x) for x in (workdir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    rewards = [(r["step"], r["reward/accuracy"]) for r in rows if "reward/accuracy" in r]
    after = evals[-1][1]
    first = sum(v for _, v in rewards[:10]) / len(rewards[:10])
    last = sum(v for _, v in rewards[-10:]) / len(rewards[-10:])
    summary = {"sft_steps": FLAGS.sft_steps, "grpo_steps": FLAGS.grpo_steps, "prompts": FLAGS.prompts,
               "group": FLAGS.group, "heldout": len(held), "accuracy_before": before, "accuracy_after": after,
               "evals": evals, "train_accuracy_first10": first, "train_accuracy_last10": last,
               "sft_seconds": t_sft, "grpo_seconds": t_grpo}
    (workdir / "grpo_arithmetic.json").write_text(json.dumps(summary, indent=1))
    print(f"\n| held-out greedy accuracy ({len(held)} problems) | value |\n|---|---|\n"
          f"| after SFT ({FLAGS.sft_steps} steps, {t_sft:.0f} s) | {before:.3f} |\n"
          + "".join(f"| after GRPO step {s_} | {a:.3f} |\n" for s_, a in evals)
          + f"\nGRPO: {FLAGS.grpo_steps} steps x {FLAGS.prompts} prompts x {FLAGS.group} completions in "
          f"{t_grpo:.0f} s; sampled-completion accuracy, first 10 steps {first:.3f}, last 10 steps {last:.3f}")


if __name__ == "__main__":
    app.run(main)
