"""Process reward model (PRM): the decoder with a one-logit head, read at each step's separator.

Shared by the PRM recipe (reasonax.train.prm) and verifier-guided search (reasonax.sample.search).
A PRM scores step i of a solution as the probability that steps 1..i are correct: sigmoid of the
head's logit at the last token of step i's separator. The LM head is dropped (params["lm_head"]
of untied models); the head is params["prm_head"] = {"kernel": [D, 1], "bias": [1]}, exported as
*ForTokenClassification's `score` (num_labels = 1; docs/ALGORITHMS.md says why).

    ids, ends = join_steps(prompt_ids, step_ids, separator_ids)
    params = init_prm(decoder_params, cfg, key)
    logits = prm_logits(params, tokens, cfg)                 # float32 [B, T]
    scores = score_steps(params, cfg, [ids], [ends])         # [[P(step 1 ok), P(steps 1..2 ok), ...]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from reasonax.model import params as params_lib
from reasonax.model.config import ModelConfig, family
from reasonax.model.params import ParamSpec
from reasonax.model.transformer import hidden_states


def join_steps(prompt: Sequence[int], steps: Sequence[Sequence[int]], separator: Sequence[int]
               ) -> tuple[list[int], list[int]]:
    """The PRM's input: prompt ids, then each step's ids followed by the separator's ids, each
    tokenized apart (so BPE never merges the separator into a step). Returns (ids, ends): ends[i]
    is the index in ids of the last token of step i's separator, where step i's score is read.

    >>> join_steps([5, 6], [[7], [8, 9]], [0])
    ([5, 6, 7, 0, 8, 9, 0], [3, 6])
    """
    if not separator:
        raise ValueError("the step separator tokenizes to no ids")
    ids, ends = list(prompt), []
    for i, step in enumerate(steps):
        if not step:
            raise ValueError(f"step {i} is empty")
        ids.extend(step)
        ids.extend(separator)
        ends.append(len(ids) - 1)
    return ids, ends


# ----------------------------------------------------------------------------------------------
# The head: declared once, initialised, applied (einsum letters: B batch, T positions, D hidden,
# O the one output logit)

HEAD = "prm_head"  # params[HEAD] = {"kernel": [D, 1], "bias": [1]}
HF_HEAD = "score"  # its HF module: score.weight [1, D], score.bias [1] (*ForTokenClassification's names)
NUM_LABELS = 1     # one logit per position; sigmoid(logit) = P(steps 1..i correct)
LABEL = "correct"  # its name in the export's config.json (id2label)
MIN_BUCKET = 32    # score_steps pads row lengths to powers of two from here


def head_specs(cfg: ModelConfig) -> dict:
    """The head's ParamSpecs, params["prm_head"]: kernel [D, 1] (HF score.weight [1, D], the same
    values: a reshape) and bias [1] (HF score.bias)."""
    D = cfg.hidden_size
    return {"kernel": ParamSpec((D, NUM_LABELS), ("embed", None), f"{HF_HEAD}.weight", hf_shape=(NUM_LABELS, D)),
            "bias": ParamSpec((NUM_LABELS,), (None,), f"{HF_HEAD}.bias", init="zeros")}


def param_specs(cfg: ModelConfig) -> dict:
    """Every parameter of the PRM: the decoder's without the LM head ("lm_head", when untied) and
    with params["prm_head"]. What the PRM recipe trains, checkpoints and exports."""
    specs = {k: v for k, v in params_lib.param_specs(cfg).items() if k != "lm_head"}
    return {**specs, HEAD: head_specs(cfg)}


def init_prm(params: dict, cfg: ModelConfig, key: jax.Array, *, std: float = 0.02,
             mesh: jax.sharding.Mesh | None = None) -> dict:
    """A decoder's params as a PRM's: "lm_head" dropped (when untied), "prm_head" added (kernel
    normal(0, std), bias 0; in the dtype of the embeddings, placed on `mesh` when given)."""
    head = params_lib.init_specs(head_specs(cfg), key, params["embed"].dtype, mesh, std)
    return {**{k: v for k, v in params.items() if k != "lm_head"}, HEAD: head}


def head_logits(params: dict, h: jax.Array) -> jax.Array:
    """The head on final hidden states h [B, T, D]: float32 logits [B, T]."""
    head = params[HEAD]
    out = jnp.einsum("BTD,DO->BTO", h, head["kernel"].astype(h.dtype), preferred_element_type=jnp.float32)
    return out[..., 0] + head["bias"][0].astype(jnp.float32)


def _prm_logits(params: dict, tokens: jax.Array, cfg: ModelConfig, positions=None, segment_ids=None) -> jax.Array:
    h, _ = hidden_states(params, tokens, cfg, positions=positions, segment_ids=segment_ids)
    return head_logits(params, h)


prm_logits = jax.jit(_prm_logits, static_argnames=("cfg",))
prm_logits.__doc__ = """One logit per position, float32 [B, T], for int32 tokens [B, T]: the final-norm
hidden states (transformer.hidden_states; segment_ids 0 = padding) then the head. No LM head.
Jitted, cfg static; inside another jit (the train step) it is inlined."""


def bucket_len(n: int, minimum: int = MIN_BUCKET) -> int:
    """The padded length of a row of n tokens: the next power of two, at least `minimum`."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def score_steps(params: dict, cfg: ModelConfig, rows: Sequence[Sequence[int]], ends: Sequence[Sequence[int]], *,
                batch_size: int = 8) -> list[list[float]]:
    """sigmoid(logit) read at ends[r] of each row r (prompt + steps joined by join_steps): the
    PRM's step scores, P(steps 1..i correct), one list per row in order.

    Rows are grouped by length bucket (bucket_len) and run batch_size at a time, each batch
    [batch_size, bucket] with padding rows and columns of segment id 0, so one program compiles
    per bucket. A row's scores do not depend on the other rows of its batch.
    """
    if len(rows) != len(ends):
        raise ValueError(f"score_steps: {len(rows)} rows but {len(ends)} lists of ends")
    out: list[list[float]] = [[] for _ in rows]
    by_bucket: dict[int, list[int]] = {}
    for r, (row, end) in enumerate(zip(rows, ends)):
        if any(not 0 <= e < len(row) for e in end):
            raise ValueError(f"score_steps: row {r} has {len(row)} tokens but ends {list(end)}")
        if end:
            by_bucket.setdefault(bucket_len(len(row)), []).append(r)
    cfg = cfg.replace(remat="none")
    for T, members in sorted(by_bucket.items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            tokens = np.zeros((batch_size, T), np.int32)
            segs = np.zeros((batch_size, T), np.int32)
            for i, r in enumerate(chunk):
                tokens[i, :len(rows[r])] = rows[r]
                segs[i, :len(rows[r])] = 1
            probs = np.asarray(jax.nn.sigmoid(prm_logits(params, jnp.asarray(tokens), cfg,
                                                         segment_ids=jnp.asarray(segs))))
            for i, r in enumerate(chunk):
                out[r] = [float(probs[i, e]) for e in ends[r]]
    return out


# ----------------------------------------------------------------------------------------------
# HF export and import

# transformers 5.x classes with a token-classification head `score` = nn.Linear(D, num_labels,
# bias=True), per family (checked against transformers by tests/test_prm.py); Gemma 3 has none
TOKEN_CLASSIFICATION = {"llama": "LlamaForTokenClassification", "qwen2": "Qwen2ForTokenClassification",
                        "qwen3": "Qwen3ForTokenClassification", "gemma": "GemmaForTokenClassification",
                        "gemma2": "Gemma2ForTokenClassification"}


def hf_fields(cfg: ModelConfig) -> dict:
    """What the PRM export sets on the transformers config: num_labels = 1 (id2label {0: 'correct'}),
    and architectures the
    family's *ForTokenClassification (families without one: the causal LM's class, so the
    directory loads as the base model and score.* is read by load_prm)."""
    arch = TOKEN_CLASSIFICATION.get(cfg.model_type) or family(cfg.model_type).hf_architecture
    return {"architectures": [arch], "num_labels": NUM_LABELS, "id2label": {0: LABEL}, "label2id": {LABEL: 0}}


def save_prm(params: dict, cfg: ModelConfig, out_dir: str | os.PathLike, dtype=None,
             tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Write the PRM as an HF directory (model.hf.save_hf, the one writer): the decoder without
    lm_head plus score.weight [1, D] and score.bias [1]. transformers loads it with
    AutoModelForTokenClassification where the family has that class (TOKEN_CLASSIFICATION); for
    the others (Gemma 3) AutoModel loads the decoder and ignores score.*, which load_prm reads."""
    from reasonax.model import hf

    return hf.save_hf(params, cfg, out_dir, dtype, tokenizer_dir=tokenizer_dir, specs=param_specs(cfg),
                      hf_fields=hf_fields(cfg))


def load_prm(path: str | os.PathLike, dtype="float32", mesh: jax.sharding.Mesh | None = None
             ) -> tuple[ModelConfig, dict]:
    """(ModelConfig, PRM params) from a directory save_prm wrote (CheckpointError naming a missing
    score.weight when it is not a PRM)."""
    from reasonax.model import hf

    return hf.load_hf(path, dtype, mesh, specs=param_specs)


def tokenize_steps(tokenizer, prompt: str, steps: Sequence[str], separator: str = "\n", bos: bool = True
                   ) -> tuple[list[int], list[int]]:
    """join_steps on text: the tokenizer's BOS (when bos and it has one) and the prompt, then each
    step and the separator, each tokenized apart (add_special_tokens=False). What the PRM recipe
    trains on; search must score rows built the same way."""
    sep = tokenizer.encode(separator, add_special_tokens=False)
    return join_steps(prompt_ids(tokenizer, prompt, bos),
                      [tokenizer.encode(s, add_special_tokens=False) for s in steps], sep)


def prompt_ids(tokenizer, prompt: str, bos: bool = True) -> list[int]:
    """The PRM's prompt ids: the tokenizer's BOS (when bos and it has one), then the prompt without
    special tokens (what tokenize_steps puts before the steps)."""
    head = list(tokenizer.encode(prompt, add_special_tokens=False)) if prompt else []
    if bos and getattr(tokenizer, "bos_token_id", None) is not None:
        head = [tokenizer.bos_token_id, *head]
    return head


def is_prm_checkpoint(path: str | os.PathLike) -> bool:
    """Whether path is an HF directory holding a PRM head (score.weight), as save_prm writes."""
    from reasonax.model import hf

    p = Path(path)
    return (p / "config.json").is_file() and f"{HF_HEAD}.weight" in hf._index(p)
