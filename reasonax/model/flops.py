"""Model FLOPs, shared by benchmarks, compute-matched budgets and MFU.

Dense convention: a multiply-add is 2 FLOPs. Per token, every matmul weight costs 2 FLOPs
(the embedding lookup is free, the unembedding is a matmul); attention adds QK^T and PV,
2 * 2 * head_dim * num_heads per (query, key) pair actually attended.
"""

from __future__ import annotations

from reasonax.model.config import SLIDING, ModelConfig
from reasonax.model.params import num_params


def matmul_params(cfg: ModelConfig) -> int:
    """Weights used in matmuls per token: all params minus the lookup table, plus the unembedding."""
    lookup_only = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size  # tied: table is the head
    return num_params(cfg) - lookup_only  # norms and biases (O(D) per layer) are counted too


def _sum_min(a: int, b: int, w: int | None) -> int:
    """sum_{k=a}^{b} min(k, w) in closed form (w None: no cap)."""
    if b < a:
        return 0
    if w is None or b <= w:
        return (a + b) * (b - a + 1) // 2
    if a > w:
        return (b - a + 1) * w
    return (a + w) * (w - a + 1) // 2 + (b - w) * w


def attended_pairs(cfg: ModelConfig, seq: int, context: int = 0, causal: bool = True) -> int:
    """Sum over layers of (query, key) pairs for `seq` new tokens after `context` cached ones."""
    total = 0
    for t in set(cfg.layer_types):
        window = cfg.sliding_window if t == SLIDING else None
        if causal:  # query q (0-based) sees q + 1 keys, capped by the window
            pairs = _sum_min(context + 1, context + seq, window)
        else:
            pairs = seq * (min(context + seq, window) if window else context + seq)
        total += cfg.layer_types.count(t) * pairs
    return total


def forward_flops(cfg: ModelConfig, batch: int, seq: int, context: int = 0, causal: bool = True) -> dict:
    """FLOPs of one forward over `batch` rows of `seq` tokens: {'dense', 'attention', 'total'}."""
    dense = 2 * matmul_params(cfg) * batch * seq
    attn = 4 * cfg.num_heads * cfg.head_dim * batch * attended_pairs(cfg, seq, context, causal)
    return {"dense": dense, "attention": attn, "total": dense + attn}


def score_flops(cfg: ModelConfig, batch: int, seq: int) -> dict:
    """FLOPs of a process reward model (reasonax.model.prm) scoring `batch` rows of `seq` tokens:
    the forward without the unembedding (the PRM has no LM head), plus its one-logit head,
    2·D per token. Returns {'dense', 'attention', 'total'}."""
    fwd = forward_flops(cfg, batch, seq)
    dense = fwd["dense"] - 2 * cfg.vocab_size * cfg.hidden_size * batch * seq + 2 * cfg.hidden_size * batch * seq
    return {"dense": dense, "attention": fwd["attention"], "total": dense + fwd["attention"]}


def train_flops(cfg: ModelConfig, batch: int, seq: int, causal: bool = True) -> dict:
    """FLOPs of one training step (forward + backward) over `batch` rows of `seq` tokens.

    The backward costs twice the forward (gradients w.r.t. activations and weights), so this is
    3x forward_flops: 6·P·tokens (P = matmul params incl. the unembedding) plus 3x the causal
    attention term over full rows of `seq`. Packed rows are counted as one causal sequence, an
    upper bound of the attended pairs (the segment mask attends fewer). Returns
    {'dense', 'attention', 'total'}.
    """
    fwd = forward_flops(cfg, batch, seq, causal=causal)
    return {k: 3 * v for k, v in fwd.items()}


def step_flops(cfg: ModelConfig, tokens: int, rows: int, *, updates: int = 1, forwards: int = 0,
               adapter_params: int | None = None, unembed: bool = True) -> dict:
    """Model FLOPs of a train step over `tokens` real (non-padding) tokens in `rows` rows, counting
    every pass it runs: `forwards` extra forwards (GRPO's prepare: old and reference log-probs),
    2·P per token each, and `updates` forward + backward passes over the batch (GRPO's mu), 6·P
    per token, or with LoRA (adapter_params set) 4·P for the frozen base (forward and activation
    gradients, no weight gradients) + 6·P_adapters. Attention: causal over rows of the mean real
    length (packed rows are counted as one sequence, an upper bound), 1x per forward, 3x per update.
    unembed=False: the model runs a one-logit head instead of the unembedding (the PRM: P counts
    D weights for it, not V * D). Returns {'prepare', 'update', 'total'}."""
    seq = max(1, round(tokens / max(rows, 1)))
    attn = 4 * cfg.num_heads * cfg.head_dim * rows * attended_pairs(cfg, seq)
    head = 0 if unembed else cfg.vocab_size * cfg.hidden_size - cfg.hidden_size
    dense = 2 * (matmul_params(cfg) - head) * tokens
    if adapter_params is None:
        update = 3 * dense + 3 * attn
    else:
        update = 2 * dense + 6 * adapter_params * tokens + 3 * attn
    out = {"prepare": forwards * (dense + attn), "update": updates * update}
    out["total"] = out["prepare"] + out["update"]
    return out
