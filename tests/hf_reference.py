"""Tiny randomised Hugging Face models, one per family, used as the reference in tests.

Shapes are chosen to catch the usual bugs: head_dim != hidden / heads, GQA and MQA,
query_pre_attn_scalar != head_dim, softcaps small enough that tanh is not the identity,
sliding windows shorter than the test sequences, Gemma 3 with explicit layer types and
different local/global RoPE, and every weight (norms included) drawn at random.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers

VOCAB = 101
WINDOW = 5


def tiny_hf_config(family: str):
    common = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_attention_heads=4,
                  max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1,
                  pad_token_id=0)
    if family == "llama":
        return transformers.LlamaConfig(**common, num_hidden_layers=3, num_key_value_heads=2, head_dim=16,
                                        attention_bias=True, tie_word_embeddings=False,
                                        rope_parameters={"rope_type": "llama3", "rope_theta": 500.0,
                                                         "factor": 4.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 64})
    if family == "qwen2":
        return transformers.Qwen2Config(**common, num_hidden_layers=3, num_key_value_heads=2,
                                        tie_word_embeddings=False,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    if family == "qwen2_sliding":  # Qwen2 with sliding-window layers above max_window_layers
        return transformers.Qwen2Config(**common, num_hidden_layers=3, num_key_value_heads=2,
                                        tie_word_embeddings=True, use_sliding_window=True,
                                        sliding_window=WINDOW, max_window_layers=1)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, num_hidden_layers=3, num_key_value_heads=2, head_dim=24,
                                        tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    if family == "gemma":
        return transformers.GemmaConfig(**common, num_hidden_layers=3, num_key_value_heads=1, head_dim=32,
                                        hidden_act="gelu_pytorch_tanh")
    if family == "gemma2":
        return transformers.Gemma2Config(**common, num_hidden_layers=4, num_key_value_heads=2, head_dim=16,
                                         query_pre_attn_scalar=20, attn_logit_softcapping=3.0,
                                         final_logit_softcapping=2.0, sliding_window=WINDOW)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(
            **common, num_hidden_layers=5, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
            sliding_window=WINDOW, attn_logit_softcapping=3.0, final_logit_softcapping=2.0,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                         "full_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "qwen2_sliding", "qwen3", "gemma", "gemma2", "gemma3")


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Draw every parameter at random; norm weights around 0 (Gemma's 1+w) or 1 with large spread."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (0.0 if "gemma" in model.config.model_type else 1.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model


def make_hf_model(family: str, seed: int = 0) -> torch.nn.Module:
    cfg = tiny_hf_config(family)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager",
                                                          dtype=torch.float32)
    return randomise_(model, seed).eval()


def save_hf_model(family: str, path: Path, seed: int = 0) -> torch.nn.Module:
    model = make_hf_model(family, seed)
    model.save_pretrained(str(path))
    return model


def load_reference(path: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager",
                                                             dtype=torch.float32).eval()


def hf_logits(model: torch.nn.Module, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
              position_ids: np.ndarray | None = None) -> np.ndarray:
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.tensor(attention_mask)
    if position_ids is not None:
        kw["position_ids"] = torch.tensor(position_ids)
    with torch.no_grad():
        return model(torch.tensor(tokens), **kw).logits.float().numpy()


def random_jax_params(cfg, seed: int = 0, dtype=np.float32) -> dict:
    """reasonax params with every leaf random (norms around 0 for Gemma's 1+w, around 1 otherwise)."""
    import jax
    import jax.numpy as jnp

    from reasonax.model.params import is_spec, param_specs

    specs, treedef = jax.tree.flatten(param_specs(cfg), is_leaf=is_spec)
    rng = np.random.default_rng(seed)
    leaves = []
    for s in specs:
        if s.hf_name.endswith("norm.weight"):
            x = rng.normal(size=s.shape) * 0.5 + (0.0 if cfg.norm_plus_one else 1.0)
        else:
            x = rng.normal(size=s.shape) * 0.15
        leaves.append(jnp.asarray(x.astype(dtype)))
    return treedef.unflatten(leaves)


def hf_greedy(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy generate on a left-padded batch (EOS off): the new tokens of each row."""
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[:, T:].tolist()
