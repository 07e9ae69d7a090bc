"""Hugging Face checkpoints <-> (ModelConfig, params).

config.json is parsed by transformers' config classes (which fill the defaults of sparse
configs and read both the legacy rope_theta/rope_scaling form and the rope_parameters form),
then mapped to a ModelConfig. Tensors are read with safetensors one at a time and placed
straight into their sharding; stacked layer params are filled layer by layer in place, so host
memory holds about one HF tensor beyond the placed model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from reasonax.model import sharding
from reasonax.model.config import FAMILIES, FULL, SLIDING, ModelConfig, RopeConfig
from reasonax.model.params import ADAPTERS, ParamSpec, is_spec, param_specs

SUPPORTED_MODEL_TYPES = (*FAMILIES, "gemma3")  # gemma3: the multimodal checkpoint's text model
# tensors of multimodal checkpoints (and buffers) that a text model does not use
IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt",
                   "added_tokens.json")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as it is; the message names the problem."""


# ----------------------------------------------------------------------------------------------
# config.json <-> ModelConfig

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh"}


def _rope_from_hf(params: dict, where: str) -> RopeConfig:
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"{where}: rope_type {rope_type!r} is not supported (default, linear, llama3)")
    return RopeConfig(
        theta=float(params["rope_theta"]), type=rope_type, factor=float(params.get("factor") or 1.0),
        low_freq_factor=float(params.get("low_freq_factor") or 1.0),
        high_freq_factor=float(params.get("high_freq_factor") or 4.0),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings") or 8192))


def _rope_to_hf(rope: RopeConfig) -> dict:
    out = {"rope_type": rope.type, "rope_theta": rope.theta}
    if rope.type != "default":
        out["factor"] = rope.factor
    if rope.type == "llama3":
        out.update(low_freq_factor=rope.low_freq_factor, high_freq_factor=rope.high_freq_factor,
                   original_max_position_embeddings=rope.original_max_position_embeddings)
    return out


def config_from_hf(hf_cfg, where: str = "config.json") -> ModelConfig:
    """ModelConfig from a transformers config object (Gemma 3 multimodal: its text_config)."""
    if hf_cfg.model_type == "gemma3":
        hf_cfg = hf_cfg.text_config
    mt = hf_cfg.model_type
    if mt not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{where}: unknown model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    mt = "gemma3_text" if mt == "gemma3" else mt
    get = functools.partial(getattr, hf_cfg)
    act_name = get("hidden_activation", None) or get("hidden_act", None) or "silu"
    if act_name not in _ACTIVATIONS:
        raise CheckpointError(f"{where}: activation {act_name!r} is not supported")
    for flag in ("mlp_bias", "use_bidirectional_attention"):
        if get(flag, None):
            raise CheckpointError(f"{where}: {flag}=True is not supported")
    if (get("partial_rotary_factor", None) or 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor != 1 is not supported")
    heads = get("num_attention_heads")
    layer_types = tuple(get("layer_types", None) or (FULL,) * get("num_hidden_layers"))
    rope_params = get("rope_parameters")
    if mt == "gemma3_text":
        rope, rope_local = (_rope_from_hf(rope_params[t], where) for t in (FULL, SLIDING))
    else:
        rope, rope_local = _rope_from_hf(rope_params, where), None
    eos = get("eos_token_id", None)
    traits = dict(FAMILIES[mt].traits)
    attention_bias = bool(get("attention_bias", False))
    return ModelConfig(
        model_type=mt,
        vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
        intermediate_size=get("intermediate_size"), num_layers=get("num_hidden_layers"),
        num_heads=heads, num_kv_heads=get("num_key_value_heads", None) or heads,
        head_dim=get("head_dim", None) or get("hidden_size") // heads,
        max_position_embeddings=get("max_position_embeddings"), rms_norm_eps=float(get("rms_norm_eps")),
        activation=_ACTIVATIONS[act_name], norm_plus_one=traits.get("norm_plus_one", False),
        embed_scale=traits.get("embed_scale", False),
        qkv_bias=attention_bias or traits.get("qkv_bias", False), o_bias=attention_bias,
        qk_norm=traits.get("qk_norm", False), sandwich_norm=traits.get("sandwich_norm", False),
        query_pre_attn_scalar=get("query_pre_attn_scalar", None),
        # transformers' Gemma 3 stores attn_logit_softcapping but never applies it; only Gemma 2 does
        attn_softcap=get("attn_logit_softcapping", None) if mt == "gemma2" else None,
        final_softcap=get("final_logit_softcapping", None),
        tie_embeddings=bool(get("tie_word_embeddings", False)), layer_types=layer_types,
        sliding_window=get("sliding_window", None) if SLIDING in layer_types else None,
        rope=rope, rope_local=rope_local, bos_token_id=get("bos_token_id", None),
        eos_token_ids=tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,)),
        pad_token_id=get("pad_token_id", None))


def config_to_hf(cfg: ModelConfig):
    """A transformers config object for `cfg`; raises if the family cannot express some field."""
    import transformers

    mt = cfg.model_type
    if mt not in FAMILIES:
        raise CheckpointError(f"cannot export model_type {mt!r}; supported: {', '.join(FAMILIES)}")
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
              max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
              tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_token_id,
              eos_token_id=list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else
              (cfg.eos_token_ids[0] if cfg.eos_token_ids else None),
              pad_token_id=cfg.pad_token_id, architectures=[FAMILIES[mt].hf_architecture])
    act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.activation]
    # the fields each transformers config class takes (its schema, not a family trait)
    if mt in ("llama", "qwen3", "gemma", "gemma2", "gemma3_text"):
        kw["attention_bias"] = cfg.o_bias
    if mt in ("gemma2", "gemma3_text"):
        kw.update(hidden_activation=act, query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                  final_logit_softcapping=cfg.final_softcap)
        if mt == "gemma2":
            kw["attn_logit_softcapping"] = cfg.attn_softcap
    else:
        kw["hidden_act"] = act
    if mt in ("qwen2", "qwen3", "gemma2", "gemma3_text"):
        kw["layer_types"] = list(cfg.layer_types)
        kw["sliding_window"] = cfg.sliding_window
        if mt in ("qwen2", "qwen3"):
            kw["use_sliding_window"] = cfg.has_sliding
    if mt == "gemma3_text":
        kw["rope_parameters"] = {FULL: _rope_to_hf(cfg.rope), SLIDING: _rope_to_hf(cfg.rope_local or cfg.rope)}
    else:
        kw["rope_parameters"] = _rope_to_hf(cfg.rope)
    hf_cfg = getattr(transformers, FAMILIES[mt].hf_config)(**kw)
    back = config_from_hf(hf_cfg, where="export")
    runtime = dict(attention_impl=cfg.attention_impl, attention_block=cfg.attention_block, remat=cfg.remat,
                   lora=cfg.lora)
    if cfg.rope_local is None and back.rope_local == cfg.rope:
        runtime["rope_local"] = None
    if back.replace(**runtime) != cfg:
        diff = {f.name: (getattr(cfg, f.name), getattr(back, f.name)) for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(back.replace(**runtime), f.name)}
        raise CheckpointError(f"model_type {mt!r} cannot express this config; (ours, exported) differ: {diff}")
    return hf_cfg


def read_config(path: str | os.PathLike) -> ModelConfig:
    """ModelConfig of an HF directory (config.json)."""
    import transformers

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: not found (expected a Hugging Face model directory)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    mt = raw.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(f"{cfg_file}: unknown model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return config_from_hf(transformers.AutoConfig.from_pretrained(str(path)), where=str(cfg_file))


# ----------------------------------------------------------------------------------------------
# safetensors index


@dataclasses.dataclass(frozen=True)
class _Stored:
    file: Path
    shape: tuple[int, ...]
    dtype: str


def _index(path: Path) -> dict[str, _Stored]:
    """Name -> (file, shape, dtype) of every tensor, from the safetensors headers only."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        files = sorted({path / f for f in json.loads(index_file.read_text())["weight_map"].values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files")
    out = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{index_file}: names missing file {f.name}")
        size = f.stat().st_size
        try:
            with safe_open(str(f), framework="numpy") as st:
                for name in st.keys():
                    sl = st.get_slice(name)
                    out[name] = _Stored(f, tuple(sl.get_shape()), sl.get_dtype())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: cannot read safetensors header ({e}); file truncated or corrupt? "
                                  f"({size} bytes)") from None
    return out


def _name_resolver(stored: dict[str, _Stored], path: Path) -> Callable[[str], str]:
    """Maps our HF names ('model.X', 'lm_head.weight') to the stored names (multimodal prefixes)."""
    layouts = [("model.", "lm_head."), ("language_model.model.", "language_model.lm_head."),
               ("model.language_model.", "lm_head.")]
    for body, head in layouts:
        if body + "embed_tokens.weight" in stored:
            return lambda n: (body + n[len("model."):]) if n.startswith("model.") else (
                head + n[len("lm_head."):] if n.startswith("lm_head.") else n)  # others (a PRM's score.*) as they are
    raise CheckpointError(f"{path}: missing tensor model.embed_tokens.weight (also looked for "
                          f"language_model.model.embed_tokens.weight and model.language_model.embed_tokens.weight)")


def _from_hf(spec: ParamSpec, t: np.ndarray) -> np.ndarray:
    return t.reshape(spec.layer_shape)


def _to_hf(spec: ParamSpec, t: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(t.reshape(spec.hf_layer_shape))


def _hf_names(spec: ParamSpec) -> list[str]:
    return [spec.hf_name.format(i=i) for i in range(spec.shape[0])] if spec.stacked else [spec.hf_name]


def _check_tensors(cfg: ModelConfig, stored: dict[str, _Stored], resolve, path: Path, specs: dict | None = None):
    specs = jax.tree.leaves(param_specs(cfg) if specs is None else specs, is_leaf=is_spec)
    expected = {}
    for spec in specs:
        for name in _hf_names(spec):
            expected[resolve(name)] = spec.hf_layer_shape
    missing = [n for n in expected if n not in stored]
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                              f"({len(missing)} of {len(expected)})")
    for name, shape in expected.items():
        if stored[name].shape != shape:
            raise CheckpointError(f"{stored[name].file}: tensor {name} has shape {stored[name].shape}, "
                                  f"expected {shape}")
    ignorable = set()
    if cfg.tie_embeddings:  # some tied checkpoints also store the (identical) lm_head
        ignorable.add(resolve("lm_head.weight"))
    unexpected = [n for n in stored if n not in expected and n not in ignorable
                  and not n.startswith(IGNORED_PREFIXES) and not n.endswith(IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor(s) {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''} for {cfg.model_type} "
                              f"({len(unexpected)} unexpected)")


SLAB_BYTES = 64 << 20  # unstacked matrices (embeddings) are read in row chunks of this size


def _read(stored: _Stored, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    try:
        with safe_open(str(stored.file), framework="numpy") as st:
            return st.get_tensor(name) if rows is None else st.get_slice(name)[rows[0]:rows[1]]
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{stored.file}: cannot read tensor {name} ({e}); file truncated?") from None


def _slabs(spec: ParamSpec, stored: dict[str, _Stored], resolve, dtype) -> Iterator[tuple[int, np.ndarray]]:
    """(start, host slab) along axis 0 covering the param: one layer at a time for stacked params,
    row chunks of <= SLAB_BYTES for the others (embeddings), vectors whole."""
    if spec.stacked:
        for i, hf_name in enumerate(_hf_names(spec)):
            name = resolve(hf_name)
            yield i, _from_hf(spec, _read(stored[name], name)).astype(dtype, copy=False)[None]
        return
    name = resolve(spec.hf_name)
    if len(spec.shape) < 2 or spec.hf_layer_shape != spec.layer_shape:  # vectors; a PRM head [D, 1] (HF [1, D])
        yield 0, _from_hf(spec, _read(stored[name], name)).astype(dtype, copy=False)
        return
    n = spec.shape[0]
    step = max(1, SLAB_BYTES // (math.prod(spec.shape[1:]) * max(dtype.itemsize, 4)))
    for start in range(0, n, step):
        yield start, _read(stored[name], name, (start, min(n, start + step))).astype(dtype, copy=False)


@functools.partial(jax.jit, donate_argnums=0)
def _write_slab(out: jax.Array, slab: jax.Array, start: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice_in_dim(out, slab, start, axis=0)


def _place(host: np.ndarray, sharding_: jax.sharding.Sharding) -> jax.Array:
    return jax.make_array_from_callback(host.shape, sharding_, lambda idx: host[idx])


def load_hf(path: str | os.PathLike, dtype="float32", mesh: jax.sharding.Mesh | None = None,
            rules=sharding.DEFAULT_RULES, specs: Callable[[ModelConfig], dict] | None = None
            ) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from an HF directory: config.json + safetensors (single or sharded).
    specs: cfg -> the ParamSpec tree to read (default param_specs; the PRM's: model.prm.param_specs).

    Each param is allocated in its NamedSharding on `mesh` (default: a 1-device mesh) and filled
    slab by slab (a layer, or a chunk of embedding rows), so host memory holds one slab at a time.
    """
    path = Path(path)
    cfg = read_config(path)
    dtype = jnp.dtype(dtype)
    stored = _index(path)
    resolve = _name_resolver(stored, path)
    tree = param_specs(cfg) if specs is None else specs(cfg)
    _check_tensors(cfg, stored, resolve, path, tree)
    mesh = mesh if mesh is not None else sharding.make_mesh(devices=jax.devices()[:1])

    def load_param(spec: ParamSpec) -> jax.Array:
        full = sharding.named_sharding(mesh, spec.axes, spec.shape, rules)
        out = None
        for start, slab in _slabs(spec, stored, resolve, dtype):
            placed = _place(slab, sharding.named_sharding(mesh, spec.axes, slab.shape, rules))
            if slab.shape == spec.shape:
                return placed
            if out is None:
                out = jax.jit(lambda: jnp.zeros(spec.shape, dtype), out_shardings=full)()
            out = _write_slab(out, placed, jnp.int32(start))
            del placed, slab
        return out

    params = jax.tree.map(load_param, tree, is_leaf=is_spec)
    return cfg, params


# ----------------------------------------------------------------------------------------------
# save


def host_tensors(params, specs, dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array in HF layout) of each array of `params`, declared by the ParamSpec
    tree `specs`, one at a time (gathered from every process on multi-host runs)."""
    from jax.experimental import multihost_utils

    specs, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    arrays = treedef.flatten_up_to(params)
    for spec, arr in zip(specs, arrays):
        if tuple(arr.shape) != spec.shape:
            raise ValueError(f"param {spec.hf_name} has shape {tuple(arr.shape)}, expected {spec.shape}")
        for i, name in enumerate(_hf_names(spec)):
            part = arr[i] if spec.stacked else arr
            if jax.process_count() > 1:
                host = np.asarray(multihost_utils.process_allgather(part, tiled=True))
            else:
                host = np.asarray(jax.device_get(part))
            yield name, _to_hf(spec, host.astype(dtype))


def new_out_dir(out_dir) -> tuple[Path, bool]:
    """(out_dir as a Path, whether this process writes: process 0); process 0 creates it and
    refuses one that exists and is not empty."""
    out_dir = Path(out_dir)
    write = jax.process_index() == 0
    if write:
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir}: exists and is not empty")
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir, write


def save_hf(params: dict, cfg: ModelConfig, out_dir: str | os.PathLike, dtype=None,
            max_shard_bytes: int = 4 << 30, tokenizer_dir: str | os.PathLike | None = None,
            specs: dict | None = None, hf_fields: dict | None = None) -> Path:
    """Write config.json + safetensors (sharded above max_shard_bytes) that transformers loads.

    dtype: None keeps the params' dtype. tokenizer_dir: copy tokenizer files from there.
    specs: the ParamSpec tree of what params holds (default param_specs(cfg); the PRM's:
    model.prm.param_specs). hf_fields: set on the transformers config (e.g. architectures, num_labels).
    On multi-host runs every process must call this; process 0 writes.
    """
    if isinstance(params.get("layers"), dict) and ADAPTERS in params["layers"]:
        raise ValueError(f"params carry LoRA adapters (params['layers'][{ADAPTERS!r}]): save the merged model, "
                         "save_hf(lora.merge(base, adapters, cfg), cfg, ...), or the adapters, lora.save_peft(...)")
    out_dir, write = new_out_dir(out_dir)
    hf_cfg = config_to_hf(cfg)
    for k, v in (hf_fields or {}).items():
        setattr(hf_cfg, k, v)
    np_dtype = np.dtype(jnp.dtype(dtype or params["embed"].dtype))
    hf_cfg.dtype = np_dtype.name
    files: list[str] = []
    weight_map: dict[str, int] = {}
    shard: dict[str, np.ndarray] = {}

    def flush():
        if write and shard:
            files.append(f"part-{len(files):05d}.safetensors")
            save_file(shard, str(out_dir / files[-1]), metadata={"format": "pt"})
        shard.clear()

    for name, t in host_tensors(params, param_specs(cfg) if specs is None else specs, np_dtype):
        if shard and sum(a.nbytes for a in shard.values()) + t.nbytes > max_shard_bytes:
            flush()
        shard[name] = t
        weight_map[name] = len(files)
    flush()
    if not write:
        return out_dir
    if len(files) == 1:
        os.replace(out_dir / files[0], out_dir / "model.safetensors")
    else:
        n = len(files)
        final = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for src, dst in zip(files, final):
            os.replace(out_dir / src, out_dir / dst)
        total = sum((out_dir / f).stat().st_size for f in final)
        index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf_cfg.save_pretrained(str(out_dir))
    if tokenizer_dir is not None:
        for f in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / f).is_file() and not (out_dir / f).exists():
                shutil.copy2(Path(tokenizer_dir) / f, out_dir / f)
    return out_dir
