"""Selective Language Modeling (Rho-1, Lin et al. 2024, arXiv 2404.07965) on the shared loop.

A reference model trained on clean data scores every token; training keeps only the tokens
whose loss exceeds the reference's the most:

    L_ref(x_i)   = -log P_ref(x_i | x_<i)                  (stored, or computed in the step)
    L_delta(x_i) = L_theta(x_i) - L_ref(x_i)               excess loss; a constant (stop_gradient)
    kept         = top n_keep valid tokens by L_delta,     n_keep = max(1, floor(k * N_valid))
    L_SLM        = sum_{i kept} L_theta(x_i) / n_keep

Valid tokens are the trained targets of the data pipeline (weights > 0): padding and prompt
tokens are never ranked, kept or counted. Ties keep the earlier position.

Scope (slm.scope): 'batch' ranks all valid tokens of the batch together (the paper);
'sequence' keeps the top k% of each row. With gradient accumulation, slm.rank_over says which
batch 'batch' ranks over: 'global' (default) the whole optimizer batch of batch_size rows,
at the cost of one extra forward over it before the gradient passes (so selection does not
depend on accum_steps); 'micro' each micro-batch of batch_size / accum_steps rows on its own.
Both are the same with accum_steps = 1. Either way the loss is the sum over kept tokens of the
whole batch divided by their count.

Reference losses (slm.mode): 'offline' scores the data once with the reference model
(reasonax.train.ref_scores: sharded, resumable, float16 beside the data) and feeds them in the
batches; 'online' runs the reference forward inside the train step (no scoring pass, one extra
forward per step, the reference's params held on the mesh).

    python -m reasonax.train.sft --config=configs/slm_ref_tiny_cpu.py --config.workdir=/tmp/ref
    python -m reasonax.train.slm --config=configs/slm_tiny_cpu.py --config.workdir=/tmp/slm \\
        --config.slm.reference.path=/tmp/ref/hf
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from reasonax.model import convert
from reasonax.model.config import ModelConfig
from reasonax.train import data as data_lib
from reasonax.train import loop, ref_scores, sft
from reasonax.train.loss import batch_logprobs

SCOPES = ("batch", "sequence")
RANK_OVER = ("global", "micro")
MODES = ("offline", "online")


# ----------------------------------------------------------------------------------------------
# Selection and loss


def keep_count(n_valid: jax.Array, ratio: float) -> jax.Array:
    """n_keep = max(1, floor(ratio * n_valid)) (0 when n_valid = 0), exact in int32 arithmetic."""
    frac = Fraction(ratio).limit_denominator(10_000)
    p, q = frac.numerator, frac.denominator
    n = jnp.asarray(n_valid, jnp.int32)
    k = (n // q) * p + ((n % q) * p) // q
    return jnp.where(n > 0, jnp.maximum(k, 1), 0)


def _select_flat(excess: jax.Array, valid: jax.Array, ratio: float) -> jax.Array:
    key = jnp.where(valid, excess.astype(jnp.float32), -jnp.inf)
    order = jnp.argsort(-key, stable=True)  # descending excess, earlier position first on ties
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    return valid & (rank < keep_count(valid.sum(), ratio))


def select_tokens(excess, valid, ratio: float, scope: str = "batch") -> jax.Array:
    """bool [B,T]: the top `ratio` of valid tokens by excess loss, over the whole batch
    (scope='batch') or within each row (scope='sequence'). Invalid tokens are never selected."""
    excess, valid = jnp.asarray(excess), jnp.asarray(valid, bool)
    if excess.shape != valid.shape or excess.ndim != 2:
        raise ValueError(f"excess {excess.shape} and valid {valid.shape} must both be [B, T]")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio}: expected 0 < ratio <= 1")
    if scope == "batch":
        return _select_flat(excess.reshape(-1), valid.reshape(-1), ratio).reshape(excess.shape)
    if scope == "sequence":
        return jax.vmap(functools.partial(_select_flat, ratio=ratio))(excess, valid)
    raise ValueError(f"scope={scope!r}; expected one of {SCOPES}")


def reference_loss(batch: dict, aux: tuple, ref_cfg: ModelConfig | None, chunk: int | None) -> jax.Array:
    """L_ref [B,T]: the reference forward on aux[0] (online), else the batch's stored ref_loss."""
    if aux:
        return jax.lax.stop_gradient(-batch_logprobs(aux[0], batch, ref_cfg, chunk))
    if data_lib.REF_LOSS not in batch:
        raise ValueError("SLM batch has no 'ref_loss' (offline mode needs ref_scores in the data pipeline) "
                         "and no reference params were passed (online mode)")
    return batch[data_lib.REF_LOSS].astype(jnp.float32)


def selected_loss(loss: jax.Array, ref: jax.Array, keep: jax.Array, valid: jax.Array):
    """(sum of L_theta over kept, number kept, metrics) with the SLM diagnostics as
    (numerator, denominator) pairs: fraction selected, mean excess of selected / unselected
    tokens, the loss over all valid tokens and the reference's loss over them."""
    excess = jax.lax.stop_gradient(loss - ref)
    unkept = valid & ~keep
    f32 = lambda m: m.astype(jnp.float32).sum()  # noqa: E731
    total = lambda x, m: jnp.where(m, x, 0.0).sum()  # noqa: E731
    metrics = {
        "slm/selected_frac": (f32(keep), f32(valid)),
        "slm/excess_selected": (total(excess, keep), f32(keep)),
        "slm/excess_unselected": (total(excess, unkept), f32(unkept)),
        "slm/loss_all": (total(jax.lax.stop_gradient(loss), valid), f32(valid)),
        "slm/ref_loss": (total(ref, valid), f32(valid)),
    }
    return total(loss, keep), f32(keep), metrics


def slm_loss(params: dict, batch: dict, *aux, cfg: ModelConfig, ratio: float, scope: str = "batch",
             chunk: int | None = None, ref_cfg: ModelConfig | None = None):
    """The SLM loss_fn for step.build_train_step: (kept loss sum, kept count, metrics). The
    selection comes from batch['selected'] when a prepare step ranked the global batch."""
    loss = -batch_logprobs(params, batch, cfg, chunk)
    ref = reference_loss(batch, aux, ref_cfg, chunk)
    valid = batch["weights"] > 0
    keep = batch.get("selected")
    if keep is None:
        keep = select_tokens(jax.lax.stop_gradient(loss - ref), valid, ratio, scope)
    return selected_loss(loss, ref, keep, valid)


def global_selection(cfg: ModelConfig, ratio: float, chunk: int | None = None,
                     ref_cfg: ModelConfig | None = None):
    """A step `prepare`: one forward over all micro-batches, then batch-scope selection over the
    whole optimizer batch, stored as micro_batches['selected']."""

    def prepare(params, mbs, *aux):
        def excess_of(_, mb):
            return None, -batch_logprobs(params, mb, cfg, chunk) - reference_loss(mb, aux, ref_cfg, chunk)

        _, excess = jax.lax.scan(excess_of, None, mbs)  # [A, rows, T]
        T = excess.shape[-1]
        keep = select_tokens(excess.reshape(-1, T), (mbs["weights"] > 0).reshape(-1, T), ratio, "batch")
        return {**mbs, "selected": keep.reshape(excess.shape)}

    return prepare


# ----------------------------------------------------------------------------------------------
# Recipe


def default_config() -> ml_collections.ConfigDict:
    """SFT's fields (model, tokenizer, data, eval_data, synthetic, the loop's) plus slm.*."""
    c = sft.default_config()
    c.slm = ml_collections.ConfigDict(dict(
        ratio=0.6,            # k: fraction of valid tokens kept (paper: 0.6 at 1B, 0.7 at 7B); 1.0 = CLM
        scope="batch",        # batch: rank all tokens of the batch together | sequence: top k% per row
        rank_over="global",   # with accum_steps > 1, 'batch' ranks over: global (whole optimizer batch,
                              # +1 forward per step) | micro (each micro-batch alone)
        mode="offline",       # offline: score the data once and store it | online: reference forward in the step
        reference=dict(
            path="",          # reference model: HF directory or reasonax Orbax checkpoint (required)
            tokenizer="",     # its tokenizer directory ('' : the reference's own; 'bytes': built-in);
                              # it must equal the model's tokenizer
            param_dtype="",   # reference params dtype ('' : param_dtype)
        ),
        scores_dir="",        # offline reference scores ('' : <workdir>/ref_scores); reused when the
                              # data, tokenizer and settings match, resumed when partial
        scores_dtype="float16",  # float16 | float32
        score_batch_size=0,   # global rows per scoring forward (0: batch_size)
        part_records=4096,    # records per scoring part (the unit of resume)
    ))
    return c


def check_config(c) -> None:
    s = c.slm
    if not 0.0 < s.ratio <= 1.0:
        raise ValueError(f"slm.ratio={s.ratio}: expected 0 < ratio <= 1")
    for name, value, allowed in (("scope", s.scope, SCOPES), ("rank_over", s.rank_over, RANK_OVER),
                                 ("mode", s.mode, MODES), ("scores_dtype", s.scores_dtype, ref_scores.DTYPES)):
        if value not in allowed:
            raise ValueError(f"slm.{name}={value!r}; expected one of {allowed}")
    if not s.reference.path:
        raise ValueError("slm.reference.path is required (train one with configs/slm_ref_tiny_cpu.py, or "
                         "point it at an HF directory)")


def load_reference(c, mesh):
    """(ModelConfig, params on the mesh, tokenizer) of the reference model."""
    path = c.slm.reference.path
    ref_cfg, params = convert.load_model(path, c.slm.reference.param_dtype or c.param_dtype, mesh)
    tok = c.slm.reference.tokenizer
    if tok == "bytes":
        from reasonax.tasks.byte_tokenizer import byte_tokenizer

        tokenizer = byte_tokenizer()
    else:
        tok_dir = Path(tok) if tok else convert.tokenizer_path(path)
        if not (tok_dir / "tokenizer_config.json").is_file() and not (tok_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{tok_dir}: no tokenizer files for the reference model; set "
                                    f"slm.reference.tokenizer")
        from reasonax.model.prompts import load_tokenizer

        tokenizer = load_tokenizer(tok_dir)
    return ref_cfg.replace(remat="none"), params, tokenizer


def scores_dir(c) -> Path:
    return Path(c.slm.scores_dir or Path(c.workdir) / "ref_scores")


def score(c, data_cfg, mesh, ref_cfg, ref_params, tokenizer) -> ref_scores.RefScores:
    """The offline scoring pass for the run's data (reused / resumed when present)."""
    return ref_scores.score(ref_params, ref_cfg, tokenizer, data_cfg, scores_dir(c), mesh=mesh,
                            batch_size=c.slm.score_batch_size or c.batch_size, part_records=c.slm.part_records,
                            dtype=c.slm.scores_dtype, chunk=c.loss_chunk or None)


def run(c: ml_collections.ConfigDict, score_only: bool = False):
    """Score (offline mode), then train with the SLM loss per config; export HF at the end."""
    loop.init_distributed(c.distributed)
    check_config(c)
    cfg = sft.model_config(c)
    mesh = loop.make_mesh(c)
    tokenizer = sft.load_tokenizer(c)
    ref_cfg, ref_params, ref_tokenizer = load_reference(c, mesh)
    ref_scores.check_same_tokenizer(ref_tokenizer, tokenizer)
    data_cfg = sft.data_config(c)  # writes the synthetic task's data once, if one is set
    scores, aux = None, None
    if score_only and c.slm.mode != "offline":
        raise ValueError("--score_only needs slm.mode='offline' (online mode stores no scores)")
    if c.slm.mode == "offline":
        scores = score(c, data_cfg, mesh, ref_cfg, ref_params, ref_tokenizer)
        del ref_params
        if score_only:
            return scores
    else:
        aux = ref_params
    chunk = c.loss_chunk or None
    online_cfg = ref_cfg if aux is not None else None
    stats = data_lib.DataStats()
    dataset = data_lib.sft_dataset(data_cfg, tokenizer, global_batch=c.batch_size, stats=stats,
                                   ref_scores=scores)
    source = loop.DataSource(iter(dataset), mesh, stats)
    loss_fn = functools.partial(slm_loss, cfg=cfg, ratio=c.slm.ratio, scope=c.slm.scope, chunk=chunk,
                                ref_cfg=online_cfg)
    prepare = None
    if c.slm.scope == "batch" and c.slm.rank_over == "global" and c.accum_steps > 1:
        prepare = global_selection(cfg, c.slm.ratio, chunk, online_cfg)
    state = loop.run(c, cfg, sft.init_params_fn(c, cfg), loss_fn, source, mesh=mesh, aux=aux, prepare=prepare,
                     evaluate=sft.heldout_evaluator(c, cfg, tokenizer, mesh))
    sft.export(c, cfg, state.params)
    return state


def main(argv):
    from absl import flags

    from reasonax import cli

    c = cli.flag_config(argv, "configs/slm_tiny_cpu.py")
    cli.require_workdir(c)
    run(c, score_only=flags.FLAGS.score_only)


if __name__ == "__main__":  # flags only for the CLI: config files import this module's default_config
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "ml_collections config file (see configs/slm_*.py).")
    flags.DEFINE_bool("score_only", False, "offline mode: run (or finish) the reference scoring pass into "
                      "slm.scores_dir and exit without training")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)
