"""SLM against plain CLM on a corpus with a known share of junk tokens (CPU, a few minutes).

    python bench/slm_noise.py --workdir=/tmp/slm_noise [--steps=300 --seeds=0,1,2 --noise=0.3]

1. Data (reasonax.tasks.arithmetic, byte tokenizer, so one character = one token):
   reference set: clean problems (seed 1000); training set: other problems whose completions are
   `noise` junk characters (random spans between words); held-out set: clean problems (seed 2000).
2. Reference model: plain SFT of the tiny Qwen-style model on the clean reference set
   (configs/slm_ref_tiny_cpu.py).
3. For each seed, from the same init and the same batches: SLM (ratio, batch scope, offline
   reference scores) and CLM (SFT on all completion tokens), `steps` steps each; both evaluated
   on the clean held-out set every `eval_every` steps (mean CE over completion tokens).

Writes <workdir>/slm_noise.png (held-out clean loss curves, and the training curves) and
<workdir>/slm_noise.json, and prints a markdown table of the final clean losses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/reasonax_slm_noise", "output directory (data, runs, PNG, JSON); reused runs resume")
flags.DEFINE_integer("steps", 300, "training steps of each SLM / CLM run")
flags.DEFINE_integer("ref_steps", 300, "training steps of the reference model")
flags.DEFINE_list("seeds", ["0", "1", "2"], "init / data-order seeds; SLM and CLM share each seed")
flags.DEFINE_float("noise", 0.3, "share of training-completion characters that are junk")
flags.DEFINE_float("ratio", 0.6, "SLM: fraction of tokens kept")
flags.DEFINE_integer("eval_every", 25, "held-out evaluation interval (steps)")
flags.DEFINE_integer("num_train", 4000, "training problems")
flags.DEFINE_integer("num_heldout", 400, "held-out clean problems")


def _load_config(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _common(c, workdir: Path, files: list[str], heldout: str, steps: int, seed: int):
    c.workdir = str(workdir)
    c.synthetic.task = ""
    c.data.files = files
    c.eval_data.files = [heldout]
    c.eval_every = FLAGS.eval_every
    c.num_steps = c.optim.total_steps = steps
    c.seed = c.data.seed = seed
    c.peak_flops = "1e11"  # no MFU measurement needed here
    c.tensorboard = False
    c.checkpoint.every = steps
    c.export_hf = "none"
    return c


def write_data(workdir: Path) -> dict:
    from reasonax import jsonl
    from reasonax.tasks import arithmetic

    d = workdir / "data"
    d.mkdir(parents=True, exist_ok=True)
    noisy = arithmetic.add_noise(arithmetic.records(FLAGS.num_train, seed=0), FLAGS.noise, seed=0)
    sets = {"reference": arithmetic.records(FLAGS.num_train, seed=1000), "train": noisy,
            "heldout": arithmetic.records(FLAGS.num_heldout, seed=2000)}
    paths = {}
    for name, recs in sets.items():
        paths[name] = str(d / f"{name}.jsonl")
        if not Path(paths[name]).is_file():
            jsonl.rewrite(paths[name], recs)
    chars = sum(len(r["completion"]) for r in noisy)
    paths["noise_share"] = sum(r["noise_chars"] for r in noisy) / chars
    return paths


def _curve(workdir: Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r.get(key) is not None]


def main(argv):
    del argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from reasonax.train import sft, slm

    workdir = Path(FLAGS.workdir)
    paths = write_data(workdir)
    t0 = time.perf_counter()

    ref = _common(_load_config("slm_ref_tiny_cpu"), workdir / "reference", [paths["reference"]], paths["heldout"],
                  FLAGS.ref_steps, seed=1000)
    ref.export_hf = str(workdir / "reference" / "hf")
    if not (workdir / "reference" / "hf" / "config.json").is_file():
        sft.run(ref)
    ref_clean = _curve(workdir / "reference", "eval/loss")[-1][1]

    runs = {}
    for seed in map(int, FLAGS.seeds):
        c = _common(_load_config("slm_tiny_cpu"), workdir / f"slm-{seed}", [paths["train"]], paths["heldout"],
                    FLAGS.steps, seed)
        c.slm.reference.path = ref.export_hf
        c.slm.ratio = FLAGS.ratio
        c.slm.scores_dir = str(workdir / "ref_scores")  # shared by the seeds (same data, same reference)
        slm.run(c)
        b = _common(_load_config("sft_tiny_cpu"), workdir / f"clm-{seed}", [paths["train"]], paths["heldout"],
                    FLAGS.steps, seed)
        for k in ("synthetic", "model", "data", "optim", "seq_len", "batch_size", "accum_steps", "remat"):
            b[k] = c[k]  # identical model, data order, optimizer: only the loss differs
        sft.run(b)
        runs[seed] = {name: {"eval": _curve(workdir / f"{name}-{seed}", "eval/loss"),
                             "train": _curve(workdir / f"{name}-{seed}", "loss")} for name in ("slm", "clm")}
        runs[seed]["slm"]["train_all"] = _curve(workdir / f"slm-{seed}", "slm/loss_all")

    summary = {"noise_share": paths["noise_share"], "ratio": FLAGS.ratio, "steps": FLAGS.steps,
               "reference_clean_loss": ref_clean, "seconds": time.perf_counter() - t0,
               "final": {s: {n: r[n]["eval"][-1][1] for n in ("slm", "clm")} for s, r in runs.items()},
               "runs": runs}
    (workdir / "slm_noise.json").write_text(json.dumps(summary, indent=1))
    plot(runs, workdir / "slm_noise.png", summary)
    print(table(summary))


def table(summary: dict) -> str:
    import numpy as np

    rows = ["| seed | SLM clean held-out loss | CLM clean held-out loss | SLM - CLM |", "|---|---|---|---|"]
    for s, f in summary["final"].items():
        rows.append(f"| {s} | {f['slm']:.4f} | {f['clm']:.4f} | {f['slm'] - f['clm']:+.4f} |")
    slm_, clm_ = (np.array([f[n] for f in summary["final"].values()]) for n in ("slm", "clm"))
    rows.append(f"| mean | {slm_.mean():.4f} | {clm_.mean():.4f} | {(slm_ - clm_).mean():+.4f} |")
    return (f"noise share {summary['noise_share']:.3f}, SLM ratio {summary['ratio']}, {summary['steps']} steps; "
            f"reference (clean SFT) held-out loss {summary['reference_clean_loss']:.4f}; "
            f"{summary['seconds']:.0f} s\n\n" + "\n".join(rows))


def plot(runs: dict, path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"slm": "tab:blue", "clm": "tab:orange"}
    for seed, r in runs.items():
        for name in ("slm", "clm"):
            label = f"{name.upper()}" if seed == min(runs) else None
            ax1.plot(*zip(*r[name]["eval"]), color=colors[name], alpha=0.8, label=label, marker=".")
            ax2.plot(*zip(*r[name]["train"]), color=colors[name], alpha=0.5,
                     label=f"{name.upper()} train loss ({'kept' if name == 'slm' else 'all'} tokens)"
                     if seed == min(runs) else None)
        ax2.plot(*zip(*r["slm"]["train_all"]), color="tab:green", alpha=0.5,
                 label="SLM train loss (all tokens)" if seed == min(runs) else None)
    ax1.axhline(summary["reference_clean_loss"], color="gray", ls="--", label="reference model")
    ax1.set(xlabel="step", ylabel="clean held-out loss (nats/token)", yscale="log",
            title=f"held-out clean loss, {len(runs)} seeds")
    ax2.set(xlabel="step", ylabel="training loss", yscale="log",
            title=f"training corpus: {summary['noise_share']:.0%} junk characters")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    app.run(main)
