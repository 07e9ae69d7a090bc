"""Every parameter declared once: shape, logical axes, initializer and Hugging Face name.

Shapes, shardings, random init, parameter counts and the HF key map are all derived from
`param_specs(cfg)`. Layer parameters are stacked on a leading "layers" axis (run by lax.scan).
Projection weights are stored [out, in], as transformers stores them, so every HF tensor is a
reshape of ours (no transposes on import or export).

Layout (D hidden, N query heads, K kv heads, H head_dim, F mlp, V vocab, L layers):

    embed [V, D]                     model.embed_tokens.weight
    lm_head [V, D] (untied only)     lm_head.weight
    final_norm [D]                   model.norm.weight
    layers/q [L, N, H, D]            model.layers.{i}.self_attn.q_proj.weight  ([N*H, D] in HF)
    layers/k, v [L, K, H, D]         ...k_proj / v_proj
    layers/o [L, D, N, H]            ...o_proj ([D, N*H] in HF)
    layers/gate, up [L, F, D]; down [L, D, F]
    layers/*_norm [L, D] or [L, H]; layers/*_bias
    layers/lora/{target}/a, b        LoRA adapters, when present (declared in reasonax.model.lora)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from reasonax.model import sharding
from reasonax.model.config import ModelConfig

ADAPTERS = "lora"  # params["layers"][ADAPTERS]: the LoRA adapters a forward applies (reasonax.model.lora)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter. For stacked layer params, `hf_name` holds '{i}' for the layer index and
    hf_shape is the shape of one layer's HF tensor (a reshape of ours; default: the same)."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    hf_name: str
    init: str = "normal"  # normal | zeros | ones | fan_in_uniform (U(+-1/sqrt(fan_in)), fan_in = layer_shape[1:])
    hf_shape: tuple[int, ...] | None = None

    @property
    def stacked(self) -> bool:
        return bool(self.axes) and self.axes[0] == "layers"

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.stacked else self.shape

    @property
    def hf_layer_shape(self) -> tuple[int, ...]:
        return self.hf_shape or self.layer_shape


def is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def param_specs(cfg: ModelConfig) -> dict:
    """The declaration of every parameter of `cfg` as a nested dict of ParamSpec."""
    L, D, N, K, H, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.intermediate_size, cfg.vocab_size)
    norm_init = "zeros" if cfg.norm_plus_one else "ones"
    attn = "model.layers.{i}.self_attn."
    mlp = "model.layers.{i}.mlp."
    lyr = "model.layers.{i}."

    def layer(shape, axes, name, **kw):
        return ParamSpec((L, *shape), ("layers", *axes), name, **kw)

    def norm(dim, axis, name):
        return layer((dim,), (axis,), name, init=norm_init)

    layers = {
        "q": layer((N, H, D), ("q_heads", "head_dim", "embed"), attn + "q_proj.weight", hf_shape=(N * H, D)),
        "k": layer((K, H, D), ("kv_heads", "head_dim", "embed"), attn + "k_proj.weight", hf_shape=(K * H, D)),
        "v": layer((K, H, D), ("kv_heads", "head_dim", "embed"), attn + "v_proj.weight", hf_shape=(K * H, D)),
        "o": layer((D, N, H), ("embed", "q_heads", "head_dim"), attn + "o_proj.weight", hf_shape=(D, N * H)),
        "gate": layer((F, D), ("mlp", "embed"), mlp + "gate_proj.weight"),
        "up": layer((F, D), ("mlp", "embed"), mlp + "up_proj.weight"),
        "down": layer((D, F), ("embed", "mlp"), mlp + "down_proj.weight"),
        "pre_attn_norm": norm(D, "norm", lyr + "input_layernorm.weight"),
    }
    if cfg.sandwich_norm:  # Gemma 2/3 naming: post_attention_layernorm is the post-attention norm
        layers["post_attn_norm"] = norm(D, "norm", lyr + "post_attention_layernorm.weight")
        layers["pre_mlp_norm"] = norm(D, "norm", lyr + "pre_feedforward_layernorm.weight")
        layers["post_mlp_norm"] = norm(D, "norm", lyr + "post_feedforward_layernorm.weight")
    else:  # Llama/Qwen naming: post_attention_layernorm is the pre-MLP norm
        layers["pre_mlp_norm"] = norm(D, "norm", lyr + "post_attention_layernorm.weight")
    if cfg.qk_norm:
        layers["q_norm"] = norm(H, "head_dim", attn + "q_norm.weight")
        layers["k_norm"] = norm(H, "head_dim", attn + "k_norm.weight")
    if cfg.qkv_bias:
        layers["q_bias"] = layer((N, H), ("q_heads", "head_dim"), attn + "q_proj.bias", init="zeros", hf_shape=(N * H,))
        layers["k_bias"] = layer((K, H), ("kv_heads", "head_dim"), attn + "k_proj.bias", init="zeros", hf_shape=(K * H,))
        layers["v_bias"] = layer((K, H), ("kv_heads", "head_dim"), attn + "v_proj.bias", init="zeros", hf_shape=(K * H,))
    if cfg.o_bias:
        layers["o_bias"] = layer((D,), ("norm",), attn + "o_proj.bias", init="zeros")

    specs = {
        "embed": ParamSpec((V, D), ("vocab", "embed"), "model.embed_tokens.weight"),
        "final_norm": ParamSpec((D,), ("norm",), "model.norm.weight", init=norm_init),
        "layers": layers,
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = ParamSpec((V, D), ("vocab", "embed"), "lm_head.weight")
    return specs


def num_params(cfg: ModelConfig) -> int:
    """Parameter count (tied embeddings counted once)."""
    return sum(math.prod(s.shape) for s in jax.tree.leaves(param_specs(cfg), is_leaf=is_spec))


def spec_shardings(specs, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES):
    """NamedSharding of every ParamSpec in the tree `specs` on `mesh`, from its logical axes."""
    return jax.tree.map(lambda s: sharding.named_sharding(mesh, s.axes, s.shape, rules), specs, is_leaf=is_spec)


def abstract_specs(specs, dtype=jnp.float32, mesh=None, rules=sharding.DEFAULT_RULES):
    """jax.ShapeDtypeStruct tree of a ParamSpec tree (with shardings when a mesh is given)."""
    if mesh is None:
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), specs, is_leaf=is_spec)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh), specs,
                        spec_shardings(specs, mesh, rules), is_leaf=is_spec)


def init_specs(specs, key: jax.Array, dtype=jnp.float32, mesh=None, std: float = 0.02,
               rules=sharding.DEFAULT_RULES):
    """Random arrays for a ParamSpec tree, each created directly in its sharding when a mesh is given."""
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)

    def make(key):
        keys = jax.random.split(key, len(leaves))
        return treedef.unflatten([_init_one(s, k, dtype, std) for s, k in zip(leaves, keys)])

    out_shardings = None if mesh is None else spec_shardings(specs, mesh, rules)
    return jax.jit(make, out_shardings=out_shardings)(key)


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES):
    """NamedSharding of every parameter on `mesh`, from the logical axes of its declaration."""
    return spec_shardings(param_specs(cfg), mesh, rules)


def abstract_params(cfg: ModelConfig, dtype=jnp.float32, mesh=None, rules=sharding.DEFAULT_RULES):
    """jax.ShapeDtypeStruct pytree of the params (with shardings when a mesh is given)."""
    return abstract_specs(param_specs(cfg), dtype, mesh, rules)


def _init_one(spec: ParamSpec, key, dtype, std: float):
    if spec.init == "zeros":
        return jnp.zeros(spec.shape, dtype)
    if spec.init == "ones":
        return jnp.ones(spec.shape, dtype)
    if spec.init == "fan_in_uniform":
        bound = 1.0 / math.sqrt(math.prod(spec.layer_shape[1:]))
        return jax.random.uniform(key, spec.shape, jnp.float32, -bound, bound).astype(dtype)
    if spec.init != "normal":
        raise ValueError(f"param {spec.hf_name}: unknown init {spec.init!r}")
    return (std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)


def init_params(cfg: ModelConfig, key: jax.Array, dtype=jnp.float32, mesh=None, std: float = 0.02,
                rules=sharding.DEFAULT_RULES) -> dict:
    """Random params (normal(0, std) matrices, identity norms, zero biases).

    With a mesh, every array is created directly in its sharding (no host copy of the model).
    """
    return init_specs(param_specs(cfg), key, dtype, mesh, std, rules)
