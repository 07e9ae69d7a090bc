"""GRPO on CPU, side by side: reasonax (JAX) vs TRL's GRPOTrainer (torch + transformers), same run.

    python bench/grpo.py                                   # the defaults (~75 s on a quiet 2-core machine)
    python bench/grpo.py --steps 2 --warmup 1 --prompts 2 --group 4 --max_new_tokens 16 \
        --hidden 64 --intermediate 128 --layers 2 --heads 4 --kv_heads 2 --head_dim 16    # a check (~25 s)
    python bench/grpo.py --json /tmp/grpo.json --markdown /tmp/grpo.md

Needs TRL in the environment (not a reasonax dependency): `pip install trl` (1.16 keeps
torch 2.13.0+cpu and transformers 5.23; it adds datasets and pandas).

One model, one set of weights: a Qwen2-style model (reasonax preset qwen2.5-0.5b with the shape
flags as overrides, byte tokenizer, vocab 259, tied embeddings) drawn by reasonax
(params.init_params, seed --seed, std 0.02) and written once with reasonax.model.save_hf plus the
byte tokenizer's files. reasonax GRPO starts from that HF directory (model.path), and TRL loads
the same directory with AutoModelForCausalLM.from_pretrained(dtype=float32, attn_implementation=
--attn). A logits check on one prompt before training confirms both read the same weights.

Same workload on both sides (what each one is configured with, field by field, is in
reasonax_config / trl_config below):
- --prompts arithmetic prompts per step (reasonax.tasks.arithmetic, the file reasonax writes)
  in the same order: TRL's dataset is laid out in the order of reasonax's prompt stream and
  TRL's shuffling is off, so step k of both runs samples from the same prompts. Prompts are
  tokenized alike: BOS + the prompt's bytes.
- --group completions per prompt, up to --max_new_tokens new tokens, temperature 1, top-p 1,
  no top-k; a completion ends at the EOS token (258) on both sides.
- The same reward: the digit share of the completion (tests.test_grpo.digit_reward, the very
  function for both) plus correctness by reasonax's grader (reasonax always adds it; TRL gets
  it as a second reward function, weight 1, so the summed reward is identical). Rewards are
  normalised per group by the unbiased std + 1e-4 on both sides.
- mu = num_iterations = 1, one optimizer step per rollout batch (no minibatches, no gradient
  accumulation), beta = 0 (no reference model), clip range 0.2 / 0.28, token-mean aggregation
  (TRL loss_type 'dapo': sum of masked per-token losses / number of completion tokens in the
  generation batch; with one process, steps_per_generation 1 and no accumulation this equals
  'bnpo' and reasonax's 'token-mean'). With mu = 1 neither side runs an extra forward for
  old log-probs.
- AdamW at a constant --lr, betas (0.9, 0.95), eps 1e-8, no weight decay, gradients clipped to
  global norm 1.0, float32 throughout.

Timing. The two runs are sequential in this process: reasonax first, then TRL (--order swaps
them), with torch limited to --threads threads (default: all cores, 2 here); JAX's XLA CPU
runtime uses all cores. A step is measured from the end of one optimizer update to the end of
the next (the wall time of everything the trainer does: rollout, reward, rows/padding,
forward/backward/update, logging). The first --warmup steps are excluded (reasonax: XLA
compilation of the sampler and the train step; TRL: torch's first-call overheads); the first
step's time is reported separately. Of each timed step:
- rollout = the sampler call (reasonax: sample.generate, the time/rollout metric of
  reasonax.train.grpo.rollout; TRL: GRPOTrainer._generate_single_turn, i.e. left padding +
  model.generate + cutting at EOS). rollout tok/s = generated completion tokens / rollout s.
- reward = the reward functions (reasonax: decoding + grader + digit reward, time/reward; TRL:
  GRPOTrainer._calculate_rewards).
- update = step - rollout - reward: the loss forward/backward, the optimizer update and all
  per-step bookkeeping (rows, advantages, logging). update tok/s = real (non-pad) prompt +
  completion tokens of the batch / update s.

What could not be aligned is listed in CAVEATS below, which is printed with the table.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # for `reasonax` and the shared reward tests.test_grpo.digit_reward
    sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

REWARD_FN = "tests.test_grpo.digit_reward"  # a dotted path reasonax loads; TRL calls the same function
NUM_RECORDS, NUM_HELDOUT, ARITH_STEPS = 2000, 8, 2  # synthetic arithmetic problems (2 operations each)

F = flags.FLAGS
flags.DEFINE_integer("steps", 20, "timed optimizer steps per side")
flags.DEFINE_integer("warmup", 3, "untimed steps first (>= 1: the first step compiles / warms up)")
flags.DEFINE_integer("prompts", 4, "prompts per step")
flags.DEFINE_integer("group", 8, "completions per prompt (G)")
flags.DEFINE_integer("max_new_tokens", 64, "max completion tokens")
flags.DEFINE_integer("max_prompt_len", 64, "reasonax's prompt slot (rows are max_prompt_len + max_new_tokens); "
                     "the arithmetic prompts are <= 46 tokens")
flags.DEFINE_integer("hidden", 256, "hidden size")
flags.DEFINE_integer("intermediate", 768, "MLP size")
flags.DEFINE_integer("layers", 4, "layers")
flags.DEFINE_integer("heads", 4, "query heads")
flags.DEFINE_integer("kv_heads", 2, "KV heads")
flags.DEFINE_integer("head_dim", 64, "head dim")
flags.DEFINE_float("lr", 1e-5, "AdamW learning rate (constant)")
flags.DEFINE_integer("accum", 1, "reasonax: micro-batches per update (gradient accumulation, the same update); "
                     "TRL: one batch")
flags.DEFINE_integer("seed", 0, "init, data and sampling seed")
flags.DEFINE_enum("attn", "sdpa", ["sdpa", "eager"], "transformers attention implementation for TRL")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: os.cpu_count())")
flags.DEFINE_enum("order", "reasonax,trl", ["reasonax,trl", "trl,reasonax"], "which side runs first")
flags.DEFINE_integer("pack_len", 0, "reasonax: the packed update's row length (grpo.pack_len; 0: unpacked rows)")
flags.DEFINE_integer("pack_rows", 0, "reasonax: packed rows per micro-batch (grpo.pack_rows; 0: the default)")
flags.DEFINE_string("json", "", "write all figures as JSON here")
flags.DEFINE_string("markdown", "", "write the markdown report here too")
flags.DEFINE_string("workdir", "", "scratch directory (default: a fresh one under /tmp, removed at the end)")

CAVEATS = """\
- Generation algorithms differ: reasonax's rollout engine (reasonax.sample.engine) prefills each
  distinct prompt once, copies its KV into the G sample slots and decodes in jitted blocks of
  grpo.block_steps steps over a fixed set of slots, freeing a slot when its row ends (EOS or
  max_new_tokens) and moving the last rows into fewer slots, with attention over the filled part
  of the cache only; TRL repeats each prompt G times, prefills all P x G rows (left padded to the
  longest prompt) and decodes with HF generate's Python loop and a growing DynamicCache, every
  row until all rows are done or max_new_tokens is reached.
- reasonax trains on rows cut to the batch's longest prompt + completion rounded up to a
  multiple of grpo.row_bucket (64), or with --pack_len > 0 on packed rows (several prompt +
  completion sequences per row, first fit, grpo.pack_rows from the batch's token budget); TRL's
  rows are the batch's longest prompt + longest completion; update tok/s counts only real tokens
  on both sides. reasonax also computes logits at every position, TRL only at completion
  positions (logits_to_keep); with a 259-token vocabulary that is a small cost.
- JAX runs XLA's CPU thread pool over all cores, torch uses --threads intra-op threads; the two
  runs do not overlap in time (JAX's pool is idle while TRL runs). Both are very sensitive to
  other processes on a 2-core machine, torch far more (TRL's step went from 0.9 s to 3.7-6.7 s
  with one other busy process; reasonax's from 1.4 s to 2.6 s): trust only a run whose header
  says "(quiet)".
- Sampling uses different random streams (JAX PRNG vs torch), so completions, rewards and
  EOS positions differ; mean completion lengths are reported to show the amount of work matched.
- Steps include each trainer's own per-step bookkeeping: reasonax logs every step to
  metrics.jsonl (log_every 1, needed for the per-step rollout metrics); TRL's console logging
  is off (logging_steps above the run) but it still accumulates its metrics each step.
"""


# ----------------------------------------------------------------------------------------------
# Shared model and data


def model_overrides() -> dict:
    return dict(vocab_size=259, hidden_size=F.hidden, intermediate_size=F.intermediate, num_layers=F.layers,
                num_heads=F.heads, num_kv_heads=F.kv_heads, head_dim=F.head_dim, tie_embeddings=True,
                bos_token_id=257, eos_token_ids=(258,), pad_token_id=256)


def write_init_checkpoint(hf_dir: Path) -> dict:
    """reasonax's random init (preset + overrides, seed, std 0.02) as an HF directory with the byte
    tokenizer; returns the logits of a probe prompt for the cross-check with torch."""
    import jax
    import numpy as np

    from reasonax import model
    from reasonax.model import hf
    from reasonax.tasks.byte_tokenizer import byte_tokenizer

    cfg = model.get_preset("qwen2.5-0.5b").replace(**model_overrides())
    mesh = model.make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    params = model.init_params(cfg, jax.random.key(F.seed), "float32", mesh, std=0.02)
    tok_dir = hf_dir.parent / "tokenizer"
    byte_tokenizer(tok_dir)
    hf.save_hf(params, cfg, hf_dir, tokenizer_dir=tok_dir)
    probe = [257, *"Compute 12 + 34 - 5, working left to right.\n".encode()]
    logits = np.asarray(model.forward(params, jax.numpy.asarray([probe], jax.numpy.int32), cfg))[0]
    return {"probe": probe, "logits": logits, "num_params": int(model.num_params(cfg))}


# ----------------------------------------------------------------------------------------------
# reasonax


def reasonax_config(workdir: Path, hf_dir: Path, num_steps: int):
    from reasonax.train.grpo import default_config

    c = default_config()
    c.workdir = str(workdir)
    c.model.path, c.model.preset = str(hf_dir), ""
    c.tokenizer = "bytes"
    c.seed = F.seed
    c.synthetic.task = "arithmetic"
    c.synthetic.num_examples, c.synthetic.num_heldout, c.synthetic.steps = NUM_RECORDS, NUM_HELDOUT, ARITH_STEPS
    g = c.grpo
    g.template = "raw"  # BOS + the prompt text, as TRL's tokenizer call renders it
    g.prompts_per_step, g.group_size = F.prompts, F.group
    g.max_prompt_len, g.max_new_tokens = F.max_prompt_len, F.max_new_tokens
    g.temperature, g.top_p, g.top_k = 1.0, 1.0, 0
    g.mu, g.minibatches, g.beta = 1, 1, 0.0
    g.eps_low, g.eps_high = 0.2, 0.28
    g.scale_rewards, g.adv_eps, g.aggregation = "group", 1e-4, "token-mean"
    g.reward_fns = [REWARD_FN]
    g.pack_len, g.pack_rows = F.pack_len, F.pack_rows
    c.num_steps, c.accum_steps = num_steps, F.accum
    c.optim.lr, c.optim.warmup_steps, c.optim.total_steps, c.optim.end_lr_ratio = F.lr, 0, num_steps, 1.0
    c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay, c.optim.clip_norm = 0.9, 0.95, 1e-8, 0.0, 1.0
    c.param_dtype = "float32"
    c.eval_every, c.log_every, c.tensorboard, c.export_hf, c.peak_flops = 0, 1, False, "none", "1e11"
    c.checkpoint.every, c.checkpoint.async_save = 10**9, False  # only the final save, after the timing
    return c


def run_reasonax(workdir: Path, hf_dir: Path) -> dict:
    """GRPO via reasonax.train.grpo.run with timestamps taken where each step's rollout starts."""
    import jax

    from reasonax.train import grpo
    from reasonax.train.grpo import rollout

    total = F.warmup + F.steps + 1  # the extra step's start closes the last timed one
    c = reasonax_config(workdir, hf_dir, total)
    marks, real_tokens, step_metrics = [], [], []
    orig_next, orig_rows = rollout.RolloutSource.next, rollout.completion_examples

    def timed_next(self, state):
        jax.block_until_ready(state.params)  # the previous update has finished: a step boundary
        marks.append(time.perf_counter())
        batch = orig_next(self, state)
        step_metrics.append(self.metrics())
        return batch

    def counted_rows(prompt_tokens, completions, *args, **kw):
        rows = orig_rows(prompt_tokens, completions, *args, **kw)
        real_tokens.append(sum(len(p) + len(c) for p, c in zip(prompt_tokens, completions)))
        return rows

    rollout.RolloutSource.next, rollout.completion_examples = timed_next, counted_rows
    t0 = time.perf_counter()
    try:
        grpo.run(c)
    finally:
        rollout.RolloutSource.next, rollout.completion_examples = orig_next, orig_rows
    wall = time.perf_counter() - t0
    steps = []
    for k in range(total - 1):  # step k+1 runs from marks[k] to marks[k+1]
        m = step_metrics[k]
        gen = m["rollout/tokens_per_sec"] * m["time/rollout"]
        steps.append(dict(seconds=marks[k + 1] - marks[k], rollout=m["time/rollout"], reward=m["time/reward"],
                          generated=gen, real_tokens=real_tokens[k], length=m["rollout/length_mean"],
                          reward_mean=m["reward/mean"], truncated=m["rollout/truncated"]))
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    out = summarize(steps)
    out.update(startup_seconds=marks[0] - t0, total_wall_seconds=wall, first_loss=losses[0] if losses else None)
    return out


def write_records(workdir: Path) -> None:
    """The files reasonax.train.grpo.write_synthetic writes for reasonax_config (it keeps existing ones)."""
    from reasonax import jsonl
    from reasonax.tasks import arithmetic

    d = workdir / "data"
    d.mkdir(parents=True, exist_ok=True)
    jsonl.rewrite(d / "arithmetic.jsonl", arithmetic.records(NUM_RECORDS, F.seed, ARITH_STEPS))
    jsonl.rewrite(d / "arithmetic-heldout.jsonl", arithmetic.records(NUM_HELDOUT, F.seed + 10_000, ARITH_STEPS))


def load_records(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "data" / "arithmetic.jsonl").read_text().splitlines()]


def prompt_order(n: int, seed: int, count: int):
    """The record indices reasonax's RolloutSource draws, in order (its prompt stream)."""
    from reasonax.train.grpo import rollout

    it = rollout.prompt_stream(n, seed)
    return [int(next(it)) for _ in range(count)]


# ----------------------------------------------------------------------------------------------
# TRL


def trl_config(out_dir: Path, max_steps: int):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out_dir), report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, seed=F.seed, data_seed=F.seed, dataloader_num_workers=0,
        max_steps=max_steps, per_device_train_batch_size=F.prompts * F.group, gradient_accumulation_steps=1,
        num_generations=F.group, max_completion_length=F.max_new_tokens, shuffle_dataset=False,
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False,
        num_iterations=1, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        mask_truncated_completions=False,
        learning_rate=F.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
    )


def run_trl(workdir: Path, hf_dir: Path, records: list[dict], order: list[int], probe: dict) -> dict:
    import numpy as np
    import torch
    import transformers
    from datasets import Dataset
    from trl import GRPOTrainer

    from reasonax.eval import grader
    from tests.test_grpo import digit_reward

    torch.set_num_threads(F.threads or os.cpu_count())
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                              attn_implementation=F.attn)
    with torch.no_grad():  # same weights: logits of the probe prompt vs reasonax's
        logits = model(torch.tensor([probe["probe"]])).logits[0].numpy()
    logit_diff = float(np.abs(logits - probe["logits"]).max())

    # TRL's reward signature: (prompts, completions, **dataset columns) -> floats.
    def digit_share(prompts, completions, **_):
        return digit_reward(prompts, completions, None)

    def correct(prompts, completions, answer, **_):
        return [float(x) for x in grader.grade_batch(list(completions), [a.strip() for a in answer], fallback=False)]

    # reasonax's prompt stream order, consumed in order (shuffle_dataset=False)
    data = Dataset.from_list([{"prompt": records[i]["prompt"], "answer": records[i]["answer"]} for i in order])
    total = F.warmup + F.steps
    trainer = GRPOTrainer(model=model, reward_funcs=[correct, digit_share], args=trl_config(workdir / "trl", total),
                          train_dataset=data, processing_class=tokenizer)

    gen_times, rew_times, generated, real_tokens, lengths, rewards = [], [], [], [], [], []
    orig_gen, orig_rew = trainer._generate_single_turn, trainer._calculate_rewards

    def timed_generate(prompt_ids, *args, **kw):
        t = time.perf_counter()
        completion_ids, logprobs = orig_gen(prompt_ids, *args, **kw)
        gen_times.append(time.perf_counter() - t)
        generated.append(sum(len(c) for c in completion_ids))
        lengths.append(float(np.mean([len(c) for c in completion_ids])))
        real_tokens.append(sum(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)))
        return completion_ids, logprobs

    def timed_rewards(*args, **kw):
        t = time.perf_counter()
        out = orig_rew(*args, **kw)
        rew_times.append(time.perf_counter() - t)
        rewards.append(float(out.sum(dim=1).mean()))
        return out

    trainer._generate_single_turn, trainer._calculate_rewards = timed_generate, timed_rewards

    marks = []

    class Marks(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())  # after the optimizer step: a step boundary

    trainer.add_callback(Marks())
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    steps = [dict(seconds=marks[k + 1] - marks[k], rollout=gen_times[k], reward=rew_times[k], generated=generated[k],
                  real_tokens=real_tokens[k], length=lengths[k], reward_mean=rewards[k]) for k in range(total)]
    out = summarize(steps)
    out.update(startup_seconds=marks[0] - t0, total_wall_seconds=wall, max_logit_diff_vs_reasonax=logit_diff,
               attn_implementation=F.attn, torch_threads=torch.get_num_threads(),
               optimizer=f"{type(opt).__name__}(fused={opt.defaults.get('fused')}, foreach={opt.defaults.get('foreach')})")
    return out


# ----------------------------------------------------------------------------------------------
# Summary


class OtherLoad:
    """CPU time used by other processes while a side runs, in cores (from /proc/stat minus this
    process). torch's OpenMP threads stall badly when another process takes a core (steps ~30x
    slower were seen on the 2-core machine at the smallest settings), XLA's pool degrades more
    gracefully, so a busy machine skews the ratio; the report flags it."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _busy() -> int:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(f) - f[3] - (f[4] if len(f) > 4 else 0)  # all but idle and iowait

    @staticmethod
    def _own() -> int:
        f = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15])  # utime stime cutime cstime

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t
        self.cores = max(0.0, (self._busy() - self.busy - (self._own() - self.own)) / self.tick / dt)
        return False


def idle_load(seconds: float = 2.0) -> float:
    """Cores busy with other processes over `seconds` while this one sleeps."""
    with OtherLoad() as m:
        time.sleep(seconds)
    return m.cores


def summarize(steps: list[dict]) -> dict:
    """Totals over the timed steps (after --warmup); the first step's time on its own."""
    timed = steps[F.warmup:]
    s = lambda k: sum(x[k] for x in timed)  # noqa: E731
    secs, roll, rew = s("seconds"), s("rollout"), s("reward")
    update = secs - roll - rew
    return dict(
        timed_steps=len(timed), steps_per_sec=len(timed) / secs, step_seconds=secs / len(timed),
        rollout_seconds=roll / len(timed), reward_seconds=rew / len(timed), update_seconds=update / len(timed),
        rollout_tokens_per_sec=s("generated") / roll, update_tokens_per_sec=s("real_tokens") / update,
        mean_completion_length=s("length") / len(timed), reward_mean=s("reward_mean") / len(timed),
        first_step_seconds=steps[0]["seconds"], per_step=steps,
    )


def machine() -> dict:
    import importlib.metadata as md

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {p: md.version(p) for p in ("jax", "jaxlib", "torch", "transformers", "trl", "accelerate", "datasets")}
    return dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), platform=platform.platform(),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), **versions)


def markdown(res: dict) -> str:
    r, t, m = res["reasonax"], res["trl"], res["machine"]
    cols = [("steps/s", "steps_per_sec", 3, True), ("step s", "step_seconds", 2, False),
            ("rollout s", "rollout_seconds", 2, False), ("rollout tok/s", "rollout_tokens_per_sec", 0, True),
            ("reward s", "reward_seconds", 3, False),
            ("update s", "update_seconds", 2, False), ("update tok/s", "update_tokens_per_sec", 0, True),
            ("mean completion len", "mean_completion_length", 1, None),
            ("first step s", "first_step_seconds", 1, False)]

    def fmt(x, d):
        return f"{x:,.{d}f}"

    lines = ["| | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, side in (("reasonax", r), ("TRL", t)):
        lines.append(f"| {name} | " + " | ".join(fmt(side[k], d) for _, k, d, _ in cols) + " |")
    ratio = []
    for _, k, _, higher in cols:  # how many times faster reasonax is (lengths: plain ratio)
        x = r[k] / t[k] if higher in (True, None) else t[k] / r[k]
        ratio.append(f"{x:.2f}x")
    lines.append("| reasonax speed-up | " + " | ".join(ratio) + " |")
    a = res["args"]
    head = [
        f"GRPO step, reasonax vs TRL GRPOTrainer — {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; jax {m['jax']}, jaxlib {m['jaxlib']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, trl {m['trl']}, accelerate {m['accelerate']}, python {m['python']}.",
        f"Model: Qwen2-style, hidden {a['hidden']}, MLP {a['intermediate']}, {a['layers']} layers, {a['heads']} heads "
        f"({a['kv_heads']} KV, head_dim {a['head_dim']}), vocab 259 (bytes), tied embeddings, "
        f"{res['num_params'] / 1e6:.2f}M params, float32; same init for both (max |logit diff| "
        f"{t['max_logit_diff_vs_reasonax']:.1e}).",
        f"Workload: {a['prompts']} prompts x {a['group']} completions per step, <= {a['max_new_tokens']} new tokens, "
        f"temperature 1, mu 1, beta 0, token-mean loss, AdamW lr {a['lr']:g}; {a['steps']} timed steps after "
        f"{a['warmup']} warm-up steps; order {a['order']}.",
        f"TRL: attn_implementation={t['attn_implementation']}, torch threads {t['torch_threads']}, "
        f"optimizer {t['optimizer']}, use_vllm=False (HF generate with KV cache).",
        "",
    ]
    loads = (m["other_load_before"], r["other_load_cores"], t["other_load_cores"])
    head.insert(-1, f"CPU used by other processes (cores): {loads[0]:.2f} before, {loads[1]:.2f} during reasonax, "
                    f"{loads[2]:.2f} during TRL" + (" -- WARNING: the machine was not quiet; figures are unreliable"
                                                    if max(loads) > 0.2 else " (quiet)."))
    tail = ["", f"Rollout = sampling; update = step - rollout - reward (forward/backward/optimizer + bookkeeping). "
                f"Mean reward over the timed steps: reasonax {r['reward_mean']:.3f}, TRL {t['reward_mean']:.3f}.",
            "", "Not aligned:", CAVEATS]
    return "\n".join(head + lines + tail)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if F.warmup < 1:
        raise app.UsageError("--warmup must be >= 1 (the first step compiles)")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax's per-save INFO lines
    own = not F.workdir
    root = Path(F.workdir or tempfile.mkdtemp(prefix="grpo_bench_", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    hf_dir = root / "init_hf"
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    try:
        probe = write_init_checkpoint(hf_dir)
        res = {"args": {k: getattr(F, k) for k in ("steps", "warmup", "prompts", "group", "max_new_tokens",
                                                    "max_prompt_len", "hidden", "intermediate", "layers", "heads",
                                                    "kv_heads", "head_dim", "lr", "seed", "attn", "threads",
                                                    "order")},
               "num_params": probe["num_params"], "machine": machine()}
        rx_dir = root / "reasonax"
        if rx_dir.exists():
            shutil.rmtree(rx_dir)
        res["machine"]["other_load_before"] = idle_load()
        for side in F.order.split(","):
            print(f"== {side} ==", flush=True)
            with OtherLoad() as load:
                if side == "reasonax":
                    res[side] = run_reasonax(rx_dir, hf_dir)
                else:
                    if "reasonax" not in res:  # TRL first: write the data file reasonax will write (the same)
                        write_records(rx_dir)
                    records = load_records(rx_dir)
                    order = prompt_order(len(records), F.seed, (F.warmup + F.steps + 1) * F.prompts)
                    res[side] = run_trl(root, hf_dir, records, order, probe)
            res[side]["other_load_cores"] = load.cores
        text = markdown(res)
        print(text)
        if F.markdown:
            Path(F.markdown).write_text(text + "\n")
        if F.json:
            Path(F.json).write_text(json.dumps(res, indent=1) + "\n")
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
