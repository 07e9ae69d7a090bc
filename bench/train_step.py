"""Training step of a small Qwen2-style model: reasonax (JAX) vs transformers + torch.optim.AdamW, same run.

    python bench/train_step.py [--batch 8] [--seq 512] [--steps 5] [--warmup 2] [--remat none]
    python bench/train_step.py --layers 2 --hidden 64 --heads 4 --kv_heads 2 --mlp 128 --vocab 512 \
        --seq 32 --batch 2 --steps 2 --warmup 1            # a tiny run to check the script (seconds)

Both sides start from the same weights: a transformers Qwen2ForCausalLM drawn with
torch.manual_seed(--seed) (initializer_range --init_std), saved once as an HF directory and loaded
into JAX with reasonax.model.load_hf. Default model: vocab 32000, hidden 512, 8 layers, 8 heads
(head_dim 64), 2 KV heads, MLP 2048, q/k/v biases, untied embeddings (the table and the LM head are
separate matrices): about 63M parameters, of which about 47M are matmul weights (the LM head included,
the lookup table not).

Same batch for both: --batch rows of --seq random token ids; inputs are tokens[:, :-1], targets the
next tokens tokens[:, 1:], every target weighted 1 (the mean NLL over batch*seq tokens).
- torch: float32, model(inputs).logits, F.cross_entropy over all positions, backward,
  clip_grad_norm_(1.0), AdamW (decay on weight matrices only, like reasonax's decay_mask),
  zero_grad(set_to_none=True); torch.set_num_threads(os.cpu_count()).
- JAX: float32 params, reasonax.train.sft_loss + build_train_step on a 1-device mesh, the
  optimizer of reasonax.train.state.make_optimizer with the same lr, betas, eps, weight decay and
  clip norm (constant lr: warmup 0, end_lr_ratio 1; torch's lr is constant too).
Timing: every step is timed on its own (JAX: until the new state is ready), after --warmup steps
(JAX: after the compile, which is timed separately); the figures are medians over --steps steps
per round, --rounds rounds alternating torch and JAX, all pooled. Run it on a quiet machine: with
other processes on the cores, torch's OpenMP threads stall (matmuls intermittently ~40x slower were
seen on the 2-core machine under load) while XLA's thread pool degrades gracefully, which inflates
the ratio; compare the min column with the median to spot it.

Sanity check: the first-step losses (same weights, same batch, before any update) must agree to
--loss_rtol relative; the last-step losses after the same updates are printed too.

FLOPs: reasonax.model.flops.train_flops = 6 * P_matmul * tokens + 3x causal attention (QK^T and PV
over the pairs a causal row attends), the same model FLOPs for both sides whatever they recompute.
MFU = achieved model FLOP/s / the matmul FLOP/s measured in this process: an --matmul_n^3 float32
matmul in JAX (reasonax.train.monitor.measure_matmul_flops) and in torch; each side is reported
against both peaks.

With --jax_only (no torch side) the model may be a preset, e.g. on a GPU:
    python bench/train_step.py --jax_only --platform cuda --preset qwen2.5-1.5b --dtype bfloat16 \
        --batch 8 --seq 2048 --attention cudnn --remat dots
where MFU is also reported against the chip's table peak (reasonax.train.monitor.CHIPS).

LoRA: --lora_r R trains rank-R adapters (alpha 2R, q/k/v/o/gate/up/down) on the frozen base on
both sides (JAX: reasonax.train.adapters, the base as the step's frozen aux; torch: peft), from B =
0 (so the first-step losses still match); run it with and without for LoRA vs full. The printed
train-state bytes (trained params + AdamW moments) and XLA's compiled-step memory are the JAX
side's; MFU keeps the full-training model FLOPs (6*P*tokens), so compare LoRA by tokens/s.

XLA variations to try on CPU: --remat none|full|dots, --loss_chunk N, --attention einsum|blockwise|auto,
--layer_loop scan|unroll (default auto: unrolled on CPU, as the recipes), --accum N (micro-batches
on both sides: on this CPU, rows of 1-2 x 512 tokens run faster per token than 8),
--xla_flags='--xla_...' (appended to XLA_FLAGS before jax is imported; write it with '=' so
argparse does not read the value as an option).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_argument_group("model (default: ~63M-param Qwen2-style, untied)")
    g.add_argument("--vocab", type=int, default=32000)
    g.add_argument("--hidden", type=int, default=512)
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv_heads", type=int, default=2)
    g.add_argument("--head_dim", type=int, default=0, help="0: hidden // heads")
    g.add_argument("--mlp", type=int, default=2048)
    g.add_argument("--tie", action="store_true", help="tie the LM head to the embedding table")
    g.add_argument("--init_std", type=float, default=0.02, help="initializer_range of the HF init")
    g.add_argument("--preset", default="", help="with --jax_only: a reasonax preset (e.g. qwen2.5-1.5b); "
                   "the model flags above are then ignored unless given explicitly")
    g = ap.add_argument_group("batch and timing")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--seq", type=int, default=512)
    g.add_argument("--steps", type=int, default=5, help="timed steps per round and side")
    g.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (after the JAX compile)")
    g.add_argument("--rounds", type=int, default=1, help="rounds of (torch, JAX) timing, alternating")
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("optimizer (both sides)")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--b1", type=float, default=0.9)
    g.add_argument("--b2", type=float, default=0.95)
    g.add_argument("--eps", type=float, default=1e-8)
    g.add_argument("--weight_decay", type=float, default=0.1)
    g.add_argument("--clip", type=float, default=1.0)
    g = ap.add_argument_group("JAX variations")
    g.add_argument("--dtype", default="float32", help="param dtype of both sides (float32; bfloat16 for GPU runs)")
    g.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    g.add_argument("--loss_chunk", type=int, default=0, help="positions per CE chunk (0: 256 MiB logits budget)")
    g.add_argument("--attention", default="einsum", choices=("auto", "einsum", "blockwise", "splash", "cudnn"))
    g.add_argument("--attention_block", type=int, default=256, help="blockwise kernel block size")
    g.add_argument("--accum", type=int, default=1,
                   help="micro-batches per step, both sides (gradient accumulation; same batch, same update)")
    g.add_argument("--lora_r", type=int, default=0,
                   help="> 0: both sides train LoRA adapters of this rank (alpha 2r, all seven projections) on "
                        "the frozen base: JAX reasonax.train.adapters, torch peft.get_peft_model; 0: full")
    g.add_argument("--layer_loop", default="auto", choices=("auto", "scan", "unroll"),
                   help="JAX layer stack: lax.scan over stacked weights or unrolled (auto: unrolled on CPU, "
                        "as the recipes' train.layer_loop)")
    g.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before importing jax")
    g.add_argument("--platform", default="cpu", help="JAX_PLATFORMS (''; leave it to jax)")
    g = ap.add_argument_group("torch")
    g.add_argument("--jax_only", action="store_true", help="no torch side (e.g. GPU runs)")
    g.add_argument("--torch_attn", default="sdpa", choices=("sdpa", "eager"))
    g.add_argument("--torch_adamw", default="fused", choices=("fused", "foreach", "loop"),
                   help="torch.optim.AdamW implementation (fused: the fastest on CPU)")
    g.add_argument("--torch_threads", type=int, default=0, help="0: os.cpu_count()")
    g = ap.add_argument_group("measurement and output")
    g.add_argument("--matmul_n", type=int, default=2048, help="size of the matmul-peak measurement")
    g.add_argument("--matmul_repeats", type=int, default=10)
    g.add_argument("--loss_rtol", type=float, default=1e-4)
    g.add_argument("--hf_dir", default="", help="where to save the HF model (default: a temporary directory)")
    g.add_argument("--json", default="", help="write all figures to this JSON file")
    g.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md table (header and row)")
    args = ap.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    args.explicit = {a.dest for a in ap._actions
                     if any(tok == s or tok.startswith(s + "=") for tok in given for s in a.option_strings)}
    if args.preset and not args.jax_only:
        ap.error("--preset needs --jax_only (the torch side builds its model from the flags)")
    return args


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def torch_matmul_flops(n: int, repeats: int, dtype) -> float:
    import torch

    a = torch.ones((n, n), dtype=dtype)
    torch.mm(a, a)
    return 2 * n**3 / min(_timed(lambda: torch.mm(a, a))[0] for _ in range(repeats))


def hf_config(args):
    import transformers

    head_dim = args.head_dim or args.hidden // args.heads
    return transformers.Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=head_dim,
        max_position_embeddings=max(2048, args.seq), rms_norm_eps=1e-6, tie_word_embeddings=args.tie,
        initializer_range=args.init_std, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=None, eos_token_id=None, pad_token_id=None)


def jax_model_config(args):
    """The ModelConfig of a --jax_only run (preset with overrides, or the model flags)."""
    from reasonax.model import config as config_lib

    flag_fields = {"vocab": "vocab_size", "hidden": "hidden_size", "layers": "num_layers", "heads": "num_heads",
                   "kv_heads": "num_kv_heads", "head_dim": "head_dim", "mlp": "intermediate_size",
                   "tie": "tie_embeddings"}
    if args.preset:
        cfg = config_lib.get_preset(args.preset)
        over = {field: getattr(args, flag) for flag, field in flag_fields.items() if flag in args.explicit}
        if ("hidden_size" in over or "num_heads" in over) and "head_dim" not in over:
            over["head_dim"] = over.get("hidden_size", cfg.hidden_size) // over.get("num_heads", cfg.num_heads)
        cfg = cfg.replace(**over)
    else:
        cfg = config_lib.qwen2(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp,
                               num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                               head_dim=args.head_dim or args.hidden // args.heads, tie_embeddings=args.tie,
                               rms_norm_eps=1e-6)
    return cfg


class TorchSide:
    def __init__(self, model, tokens, args):
        import torch

        self.torch = torch
        if args.lora_r:  # PEFT LoRA: the base frozen, A/B trained
            import peft

            model = peft.get_peft_model(model, peft.LoraConfig(
                r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        self.model = model.train()
        self.inputs = torch.from_numpy(tokens[:, :-1]).long()
        self.targets = torch.from_numpy(tokens[:, 1:]).long()
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.trained_params = sum(p.numel() for _, p in trained)
        decay = [p for n, p in trained if p.ndim >= 2]  # weight matrices (embeddings, LoRA A/B too)
        no_decay = [p for n, p in trained if p.ndim < 2]  # norms and biases
        kw = {"fused": dict(fused=True), "foreach": dict(foreach=True), "loop": dict(foreach=False)}[args.torch_adamw]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=args.lr, betas=(args.b1, args.b2), eps=args.eps, **kw)
        self.clip = args.clip
        self.accum = args.accum
        if self.inputs.shape[0] % self.accum:
            raise ValueError(f"--batch {self.inputs.shape[0]} does not split into --accum {self.accum} micro-batches")

    def step(self) -> float:
        torch = self.torch
        total, n = 0.0, self.targets.numel()
        for i in range(self.accum):  # micro-batch i = rows i, i+accum, ... (as reasonax.train.step splits)
            logits = self.model(input_ids=self.inputs[i::self.accum]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                     self.targets[i::self.accum].reshape(-1), reduction="sum") / n
            loss.backward()  # gradients accumulate: the token mean of the whole batch
            total += float(loss.detach())
        if self.clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total


class JaxSide:
    def __init__(self, cfg, params, tokens, args, mesh):
        import functools

        import jax
        import jax.numpy as jnp
        import numpy as np

        from reasonax.model import lora
        from reasonax.model.params import ADAPTERS
        from reasonax.train import adapters
        from reasonax.train import state as state_lib
        from reasonax.train.loss import sft_loss
        from reasonax.train.step import batch_sharding, build_train_step, resolve_layer_loop

        self.jax = jax
        optim = state_lib.OptimConfig(lr=args.lr, warmup_steps=0, total_steps=10**9, end_lr_ratio=1.0, b1=args.b1,
                                      b2=args.b2, eps=args.eps, weight_decay=args.weight_decay, clip_norm=args.clip)
        dtype = jnp.dtype(args.dtype)
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        chunk = args.loss_chunk or None
        self.aux = ()
        specs = None
        if args.lora_r:  # the state: float32 adapters (A as PEFT draws it, B = 0); the base rides as aux
            cfg = cfg.replace(lora=lora.LoraConfig(r=args.lora_r, alpha=2.0 * args.lora_r))
            specs = adapters.trainable_specs(cfg)
            self.aux = (params,)
            params = {"layers": {ADAPTERS: lora.init_adapters(cfg, jax.random.key(args.seed), jnp.float32, mesh)}}

            def loss(trained, mb, base):
                return sft_loss(adapters.combine(base, trained), mb, cfg, chunk)
        else:
            loss = functools.partial(sft_loss, cfg=cfg, chunk=chunk)
        optimizer = state_lib.make_optimizer(optim, cfg, specs)
        abstract = state_lib.abstract_state(cfg, optimizer, mesh, jnp.float32 if specs else dtype, specs)
        shardings = jax.tree.map(lambda a: a.sharding, abstract)
        self.state = state_lib.create_state(params, cfg, optimizer, mesh, specs)
        self.trained_params = sum(x.size for x in jax.tree.leaves(self.state.params))
        self.unroll = resolve_layer_loop(args.layer_loop, on_cpu=mesh.devices.flat[0].platform == "cpu")
        self.step_fn = build_train_step(loss, optimizer, shardings, mesh, accum_steps=args.accum,
                                        unroll_layers=self.unroll, lr_schedule=state_lib.schedule(optim),
                                        aux_shardings=jax.tree.map(lambda x: x.sharding, self.aux[0]) if self.aux else None)
        B, T = tokens.shape[0], tokens.shape[1] - 1
        batch = {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
                 "weights": np.ones((B, T), np.float32), "segment_ids": np.ones((B, T), np.int32),
                 "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()}
        self.batch = jax.device_put(batch, batch_sharding(mesh))
        t0 = time.perf_counter()
        self.compiled = self.step_fn.lower(self.state, self.batch, *self.aux).compile()
        self.compile_s = time.perf_counter() - t0
        mem = self.compiled.memory_analysis()  # XLA's buffer assignment of the step (bytes)
        self.memory = None if mem is None else {
            "arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
            "aliased": mem.alias_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
            "total": mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes}
        self.state_bytes = sum(x.nbytes for x in jax.tree.leaves((self.state.params, self.state.opt_state)))
        self.flops_xla = None
        try:  # XLA's own count of the compiled step (recomputation included), for reference
            cost = self.compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            self.flops_xla = float(cost["flops"]) if cost and "flops" in cost else None
        except Exception:  # noqa: BLE001 - not every backend reports it
            pass

    def step(self) -> float:
        with self.jax.set_mesh(self.step_fn.mesh):
            self.state, metrics = self.compiled(self.state, self.batch, *self.aux)
        self.jax.block_until_ready(self.state)
        return float(metrics["loss"])


def _run(side, n, losses):
    times = []
    for _ in range(n):
        dt, loss = _timed(side.step)
        times.append(dt)
        losses.append(loss)
    return times


def main(argv=None):
    args = parse_args(argv)
    if args.platform:
        os.environ["JAX_PLATFORMS"] = args.platform
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from reasonax import model
    from reasonax.model import flops as flops_lib
    from reasonax.train import monitor

    mesh = model.make_mesh(devices=jax.devices()[:1])
    rng = np.random.default_rng(args.seed)
    torch_side = None
    tmp = None
    if args.jax_only:
        cfg = jax_model_config(args)
        params = model.init_params(cfg, jax.random.key(args.seed), jnp.dtype(args.dtype), mesh, std=args.init_std)
    else:
        import torch
        import transformers

        torch.set_num_threads(args.torch_threads or os.cpu_count())
        torch.manual_seed(args.seed)
        tdtype = getattr(torch, args.dtype)
        hf_model = transformers.Qwen2ForCausalLM._from_config(hf_config(args), attn_implementation=args.torch_attn,
                                                              dtype=torch.float32)
        if args.hf_dir:
            path = Path(args.hf_dir)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="train_step_bench_")
            path = Path(tmp.name)
        hf_model.save_pretrained(str(path))
        hf_model = hf_model.to(tdtype)
        cfg, params = model.load_hf(path, dtype=args.dtype, mesh=mesh)
    cfg = cfg.replace(remat=args.remat, attention_impl=args.attention, attention_block=args.attention_block)
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1))
    n_params = model.num_params(cfg)
    tokens_per_step = args.batch * args.seq
    fl = flops_lib.train_flops(cfg, args.batch, args.seq)
    step_flops = fl["total"]

    dev = jax.devices()[0]
    jax_peak = monitor.measure_matmul_flops(args.dtype, n=args.matmul_n, repeats=args.matmul_repeats)
    table_peak = monitor.device_peak_flops(dev) if dev.platform != "cpu" else None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({dev.platform}: {dev.device_kind})", end="")
    torch_peak = None
    if not args.jax_only:
        torch_peak = torch_matmul_flops(args.matmul_n, args.matmul_repeats, tdtype)
        print(f"; torch {torch.__version__} ({torch.get_num_threads()} threads, attn {args.torch_attn}, "
              f"AdamW {args.torch_adamw}); transformers {transformers.__version__}", end="")
    print()
    print(f"model: {cfg.model_type} vocab {cfg.vocab_size}, hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
          f"{cfg.num_heads} heads x {cfg.head_dim} ({cfg.num_kv_heads} kv), mlp {cfg.intermediate_size}, "
          f"{'tied' if cfg.tie_embeddings else 'untied'}: {n_params / 1e6:.1f}M params "
          f"({flops_lib.matmul_params(cfg) / 1e6:.1f}M matmul)")
    print(f"batch {args.batch} x seq {args.seq} = {tokens_per_step} tokens/step, {args.dtype}; JAX remat "
          f"{args.remat}, attention {args.attention}, loss_chunk {args.loss_chunk or 'auto'}, accum {args.accum}"
          + f", layer_loop {args.layer_loop}"
          + (f"; XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else ""))
    print(f"model FLOPs/step: {step_flops / 1e9:.2f} GFLOP (6*P*tokens {fl['dense'] / 1e9:.2f} + causal attention "
          f"{fl['attention'] / 1e9:.2f})")
    print(f"measured matmul peak ({args.dtype}, {args.matmul_n}^3): JAX {jax_peak / 1e9:.1f} GFLOP/s"
          + (f", torch {torch_peak / 1e9:.1f} GFLOP/s" if torch_peak else "")
          + (f"; table peak {table_peak / 1e12:.0f} TFLOP/s" if table_peak else ""), flush=True)

    jax_side = JaxSide(cfg, params, tokens, args, mesh)
    del params
    xla = jax_side.flops_xla
    print(f"JAX layers: {'unrolled' if jax_side.unroll else 'lax.scan'}; compile: {jax_side.compile_s:.2f} s"
          + (f" (XLA cost analysis, for reference only: {xla / 1e9:.2f} GFLOP/step)" if xla else ""), flush=True)
    mem = jax_side.memory
    print(f"JAX trained params {jax_side.trained_params / 1e6:.2f}M{' (LoRA r=%d, base frozen)' % args.lora_r if args.lora_r else ''}; "
          f"train state (trained params + AdamW) {jax_side.state_bytes / 2**20:.1f} MiB"
          + (f"; compiled step: total {mem['total'] / 2**20:.1f} MiB (arguments {mem['arguments'] / 2**20:.1f}, "
             f"temporaries {mem['temporaries'] / 2**20:.1f})" if mem else ""), flush=True)
    if not args.jax_only:
        torch_side = TorchSide(hf_model, tokens, args)
        print(f"torch trained params {torch_side.trained_params / 1e6:.2f}M", flush=True)

    losses = {"torch": [], "jax": []}
    times = {"torch": [], "jax": []}
    sides = [("torch", torch_side), ("jax", jax_side)] if torch_side else [("jax", jax_side)]
    for name, side in sides:
        t, first = _timed(side.step)
        losses[name].append(first)
        print(f"{name} first step: {t:.2f} s, loss {first:.6f}", flush=True)
        _run(side, args.warmup, losses[name])
    for _ in range(args.rounds):
        for name, side in sides:
            times[name] += _run(side, args.steps, losses[name])

    res = {"args": {k: v for k, v in vars(args).items() if k != "explicit"}, "model_params": n_params,
           "matmul_params": flops_lib.matmul_params(cfg), "tokens_per_step": tokens_per_step,
           "model_flops_per_step": fl, "jax_matmul_peak": jax_peak, "torch_matmul_peak": torch_peak,
           "table_peak": table_peak, "jax_compile_s": jax_side.compile_s, "xla_flops_per_step": jax_side.flops_xla,
           "device": f"{dev.platform}: {dev.device_kind}", "cpu_count": os.cpu_count(),
           "jax_version": jax.__version__, "lora_r": args.lora_r, "jax_trained_params": jax_side.trained_params,
           "jax_state_bytes": jax_side.state_bytes, "jax_compiled_memory": jax_side.memory,
           "torch_trained_params": torch_side.trained_params if torch_side else None,
           "torch_version": None if args.jax_only else torch.__version__}
    for name, _ in sides:
        med = statistics.median(times[name])
        achieved = step_flops / med
        res[name] = {"step_s_median": med, "step_s_all": times[name], "tokens_per_s": tokens_per_step / med,
                     "achieved_flops": achieved, "mfu_vs_jax_matmul": achieved / jax_peak,
                     "mfu_vs_torch_matmul": achieved / torch_peak if torch_peak else None,
                     "mfu_vs_table": achieved / table_peak if table_peak else None,
                     "first_loss": losses[name][0], "last_loss": losses[name][-1], "losses": losses[name]}

    print()
    head = "| side | step s (median / min) | tokens/s | GFLOP/s | MFU vs JAX matmul | MFU vs torch matmul |"
    print(head + (" MFU vs table peak |" if table_peak else ""))
    print("|---" * (6 + bool(table_peak)) + "|")
    for name, _ in sides:
        r = res[name]
        pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
        print(f"| {name} | {r['step_s_median']:.3f} / {min(r['step_s_all']):.3f} | {r['tokens_per_s']:,.0f} | "
              f"{r['achieved_flops'] / 1e9:.1f} | {pct(r['mfu_vs_jax_matmul'])} | {pct(r['mfu_vs_torch_matmul'])} |"
              + (f" {pct(r['mfu_vs_table'])} |" if table_peak else ""))
    ok = True
    if torch_side:
        ratio = res["jax"]["tokens_per_s"] / res["torch"]["tokens_per_s"]
        res["ratio_jax_over_torch"] = ratio
        lt, lj = res["torch"]["first_loss"], res["jax"]["first_loss"]
        rel = abs(lj - lt) / abs(lt)
        last_rel = abs(res["jax"]["last_loss"] - res["torch"]["last_loss"]) / abs(res["torch"]["last_loss"])
        ok = rel <= args.loss_rtol
        res["first_loss_rel_diff"], res["last_loss_rel_diff"], res["losses_match"] = rel, last_rel, ok
        n_steps = len(losses["jax"])
        print(f"tokens/s ratio JAX / torch: {ratio:.2f}x")
        print(f"first-step loss: torch {lt:.6f}, JAX {lj:.6f}, relative diff {rel:.2e} "
              f"({'match' if ok else 'MISMATCH'} at rtol {args.loss_rtol:g})")
        print(f"loss after {n_steps - 1} updates on the same batch: torch {res['torch']['last_loss']:.6f}, "
              f"JAX {res['jax']['last_loss']:.6f}, relative diff {last_rel:.2e}")
    if args.markdown:
        print()
        print("| model | batch x seq | micro-batches | JAX layers | remat | JAX tokens/s | torch tokens/s | ratio | "
              "JAX MFU | torch MFU | matmul peak GFLOP/s (JAX / torch) | first-step loss (JAX / torch) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        t = res.get("torch")
        j = res["jax"]
        dash = lambda x, fmt: "-" if x is None else fmt.format(x)  # noqa: E731
        print(f"| {n_params / 1e6:.0f}M {cfg.model_type} {args.dtype} | {args.batch}x{args.seq} | {args.accum} | "
              f"{'unrolled' if jax_side.unroll else 'scan'} | {args.remat} | "
              f"{j['tokens_per_s']:,.0f} | {dash(t and t['tokens_per_s'], '{:,.0f}')} | "
              f"{dash(res.get('ratio_jax_over_torch'), '{:.2f}x')} | {j['mfu_vs_jax_matmul']:.0%} | "
              f"{dash(t and t['mfu_vs_jax_matmul'], '{:.0%}')} | {jax_peak / 1e9:.0f} / "
              f"{dash(torch_peak and torch_peak / 1e9, '{:.0f}')} | {j['first_loss']:.5f} / "
              f"{dash(t and t['first_loss'], '{:.5f}')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
