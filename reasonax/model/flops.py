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


def attended_pairs(cfg: ModelConfig, seq: int, context: int = 0, causal: bool = True) -> int:
    """Sum over layers of (query, key) pairs for `seq` new tokens after `context` cached ones."""
    total = 0
    for t in cfg.layer_types:
        window = cfg.sliding_window if t == SLIDING else None
        for q in range(context, context + seq):
            keys = q + 1 if causal else context + seq
            total += min(keys, window) if window else keys
    return total


def forward_flops(cfg: ModelConfig, batch: int, seq: int, context: int = 0, causal: bool = True) -> dict:
    """FLOPs of one forward over `batch` rows of `seq` tokens: {'dense', 'attention', 'total'}."""
    dense = 2 * matmul_params(cfg) * batch * seq
    attn = 4 * cfg.num_heads * cfg.head_dim * batch * attended_pairs(cfg, seq, context, causal)
    return {"dense": dense, "attention": attn, "total": dense + attn}
