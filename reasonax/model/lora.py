"""LoRA adapters as data: declared, initialised and sharded like the base params; applied by the
forward without a merged weight; merged for a plain HF checkpoint; PEFT adapter directories in
and out.

Settings. `LoraConfig(r, alpha, rslora, targets)` (reasonax.model.config; validated on
construction) lives in the model config, `cfg.lora`, so the scale alpha / r (rsLoRA:
alpha / sqrt(r)) is static wherever cfg is (jax.jit static argument) and every forward, the
sampler's and the train step's, reads it from the one place. targets: any of q, k, v, o, gate,
up, down.

Where the adapters live. Adapters are a dict {target: {"a": A, "b": B}} stacked on the
"layers" axis like the base layer params, and a forward applies them when they sit at
params["layers"]["lora"] (params.ADAPTERS):

    base = model.init_params(cfg, key)                  # or model.load_hf(...)
    cfg = cfg.replace(lora=LoraConfig(r=16, alpha=32))  # same base shapes, plus the settings
    adapters = lora.init_adapters(cfg, key)             # A small random, B zero
    logits = model.forward(lora.with_adapters(base, adapters), tokens, cfg)  # x W + s (x A) B
    ref = model.forward(base, tokens, cfg)              # adapters off: the base, same cfg

with_adapters builds a new dict around the same arrays (no copy of the base), so a reference
and a learner share one base; scan, transformer.unstack_layers (the per-layer decode path) and
the KV-cache decode slice the adapters with the layer like any layer param.

For training (the recipes build on this):

    def loss_fn(adapters, base, batch):                 # differentiate w.r.t. adapters only:
        return loss(model.forward(lora.with_adapters(base, adapters), batch.tokens, cfg), batch)
    grads = jax.grad(loss_fn)(adapters, base, batch)    # the base is a constant of the step
    opt_state = optimizer.init(adapters)                # AdamW state of the adapters alone
    sampler / engine: sample.generate(lora.with_adapters(base, adapters), cfg, ...)
    reference (GRPO beta > 0, SLM): model.forward(base, tokens, cfg)  # adapters off, same arrays
    checkpoints: the adapters are a plain dict of arrays (Orbax saves them as they are)
    dry run / shapes: lora.abstract_adapters(cfg, dtype, mesh), lora.num_adapter_params(cfg)
    import: settings, adapters = lora.load_peft(dir, cfg, mesh=mesh); cfg.replace(lora=settings)

Layout (r rank; PEFT's tensor of layer i is a reshape of ours, no transposes):

    q/k/v   a [L, r, D]      b [L, N|K, H, r]   ...self_attn.{q,k,v}_proj.lora_A [r, D], lora_B [N*H, r]
    o       a [L, r, N, H]   b [L, D, r]        ...self_attn.o_proj.lora_A [r, N*H], lora_B [D, r]
    gate/up a [L, r, D]      b [L, F, r]        ...mlp.{gate,up}_proj
    down    a [L, r, F]      b [L, D, r]        ...mlp.down_proj

A and B keep the base weight's logical axes on their input / output dims, plus a "lora_rank"
axis that the sharding rules split over fsdp (so B, which has no hidden axis, and the adapters'
AdamW state are FSDP-sharded too; A's hidden axis then stays whole). A is drawn from
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PEFT's default (kaiming_uniform with a = sqrt(5), the
nn.Linear init), B is zero, so a fresh adapter leaves the model unchanged. Adapters may be
float32 on a bfloat16 base: x A and its product with B run in the promoted dtype and the term
is added in the base output's dtype.

Out: merge(base, adapters, cfg) gives plain params for model.save_hf; save_peft writes
adapter_config.json + adapter_model.safetensors that peft.PeftModel.from_pretrained loads onto
the HF base. In: load_peft reads such a directory into (LoraConfig, adapters). Plain LoRA only:
load_peft rejects DoRA, biases, rank / alpha patterns, modules_to_save, layer subsets, modules
other than the seven projections and initialisations that rewrite the base (PiSSA, OLoRA, LoftQ,
...); lora_dropout is read and ignored (this module has no dropout).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from reasonax.model import hf, sharding
from reasonax.model.config import LORA_TARGETS, LoraConfig, ModelConfig
from reasonax.model.params import ADAPTERS, ParamSpec, abstract_specs, init_specs, is_spec, param_specs, spec_shardings

__all__ = ["ADAPTERS", "LORA_TARGETS", "LoraConfig", "abstract_adapters", "adapter_shardings", "adapter_specs",
           "init_adapters", "load_peft", "merge", "num_adapter_params", "read_peft_config", "save_peft",
           "split_adapters", "with_adapters"]

RANK_AXIS = "lora_rank"  # sharded over fsdp (model.sharding.DEFAULT_RULES)
PEFT_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
                "down": "down_proj"}
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the HF model (base_model) whose .model is the causal LM
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_OUT_DIMS = {"q": 2, "k": 2, "v": 2, "o": 1, "gate": 1, "up": 1, "down": 1}  # output dims of the base layer weight


def _settings(cfg: ModelConfig) -> LoraConfig:
    if cfg.lora is None:
        raise ValueError("cfg.lora is None: give the config the adapter settings, cfg.replace(lora=LoraConfig(...))")
    return cfg.lora


def adapter_specs(cfg: ModelConfig) -> dict:
    """{target: {"a": ParamSpec, "b": ParamSpec}} for cfg.lora.targets, derived from the base
    weight's declaration (shape, logical axes, PEFT tensor name and layout)."""
    s = _settings(cfg)
    base = param_specs(cfg)["layers"]
    out = {}
    for t in s.targets:
        w = base[t]
        n_out = _OUT_DIMS[t]
        out_shape, in_shape = w.layer_shape[:n_out], w.layer_shape[n_out:]
        out_axes, in_axes = w.axes[1:1 + n_out], w.axes[1 + n_out:]
        stem = PEFT_PREFIX + w.hf_name.removesuffix("weight")
        L = w.shape[0]
        out[t] = {
            "a": ParamSpec((L, s.r, *in_shape), ("layers", RANK_AXIS, *in_axes), stem + "lora_A.weight",
                           init="fan_in_uniform", hf_shape=(s.r, int(np.prod(in_shape)))),
            "b": ParamSpec((L, *out_shape, s.r), ("layers", *out_axes, RANK_AXIS), stem + "lora_B.weight",
                           init="zeros", hf_shape=(int(np.prod(out_shape)), s.r)),
        }
    return out


def num_adapter_params(cfg: ModelConfig) -> int:
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(adapter_specs(cfg), is_leaf=is_spec))


def adapter_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES) -> dict:
    """NamedSharding of every adapter array on `mesh` (the base weight's rules; rank over fsdp)."""
    return spec_shardings(adapter_specs(cfg), mesh, rules)


def abstract_adapters(cfg: ModelConfig, dtype=jnp.float32, mesh=None, rules=sharding.DEFAULT_RULES) -> dict:
    """jax.ShapeDtypeStruct tree of the adapters (with shardings when a mesh is given)."""
    return abstract_specs(adapter_specs(cfg), dtype, mesh, rules)


def init_adapters(cfg: ModelConfig, key: jax.Array, dtype=jnp.float32, mesh=None,
                  rules=sharding.DEFAULT_RULES) -> dict:
    """Fresh adapters: A ~ U(+-1/sqrt(fan_in)), B = 0 (created in their shardings with a mesh)."""
    return init_specs(adapter_specs(cfg), key, dtype, mesh, rules=rules)


def _check_layout(adapters, where: str):
    if not isinstance(adapters, dict) or not adapters:
        raise ValueError(f"{where}: adapters must be a non-empty dict {{target: {{'a', 'b'}}}}, got "
                         f"{type(adapters).__name__}")
    for t, ab in adapters.items():
        if t not in LORA_TARGETS:
            raise ValueError(f"{where}: unknown adapter target {t!r}; targets are {LORA_TARGETS}")
        if not isinstance(ab, dict) or set(ab) != {"a", "b"}:
            raise ValueError(f"{where}: adapter {t!r} must be a dict with keys 'a' and 'b', got "
                             f"{sorted(ab) if isinstance(ab, dict) else type(ab).__name__}")


def with_adapters(params: dict, adapters: dict) -> dict:
    """`params` with `adapters` at params["layers"]["lora"] (replacing any it carries). A new dict
    around the same arrays: nothing is copied, the base is not changed. Works on abstract trees
    (ShapeDtypeStructs) too. Call it on stacked params, before transformer.unstack_layers."""
    layers = params["layers"]
    if not isinstance(layers, dict):
        raise ValueError("with_adapters needs stacked params (params['layers'] a dict): add the adapters before "
                         "transformer.unstack_layers, which then slices them with the layers")
    _check_layout(adapters, "with_adapters")
    return {**params, "layers": {**layers, ADAPTERS: adapters}}


def split_adapters(params: dict) -> tuple[dict, dict | None]:
    """(base params, adapters or None): the inverse of with_adapters, again without copies."""
    layers = params["layers"]
    if not isinstance(layers, dict) or ADAPTERS not in layers:
        return params, None
    base_layers = {k: v for k, v in layers.items() if k != ADAPTERS}
    return {**params, "layers": base_layers}, layers[ADAPTERS]


def _check_adapters(adapters, cfg: ModelConfig, where: str) -> dict:
    """The adapter specs of cfg, after checking the adapters' targets and shapes against them."""
    specs = adapter_specs(cfg)
    _check_layout(adapters, where)
    if set(adapters) != set(specs):
        raise ValueError(f"{where}: adapters for {sorted(adapters)}, but cfg.lora.targets is {cfg.lora.targets}")
    for t, ab in specs.items():
        for k, spec in ab.items():
            got = tuple(adapters[t][k].shape)
            if got != spec.shape:
                raise ValueError(f"{where}: adapter {t}/{k} has shape {got}, expected {spec.shape} "
                                 f"(rank {cfg.lora.r}, {spec.hf_name})")
    return specs


@functools.partial(jax.jit, static_argnames=("cfg",))
def _merge(base: dict, adapters: dict, cfg: ModelConfig) -> dict:
    scale = cfg.lora.scale
    layers = dict(base["layers"])
    for t, ab in adapters.items():
        w = layers[t]
        L = w.shape[0]
        a = ab["a"].reshape(L, cfg.lora.r, -1).astype(jnp.float32)
        b = ab["b"].reshape(L, -1, cfg.lora.r).astype(jnp.float32)
        delta = jnp.einsum("LOR,LRI->LOI", b, a, precision=jax.lax.Precision.HIGHEST).reshape(w.shape)
        layers[t] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
    return {**base, "layers": layers}


def merge(base: dict, adapters: dict, cfg: ModelConfig) -> dict:
    """Plain params with W + scale * B A (in float32, cast back to W's dtype) for each target:
    what model.save_hf writes as a merged checkpoint. `base` is not changed."""
    if split_adapters(base)[1] is not None:
        raise ValueError("merge: base already carries adapters (params['layers']['lora']); pass the base params "
                         "(lora.split_adapters(params)[0])")
    _check_adapters(adapters, cfg, "merge")
    return _merge(base, adapters, cfg)


# ----------------------------------------------------------------------------------------------
# PEFT adapter directories


def _peft_config_dict(s: LoraConfig, base_model_name_or_path: str | None, task_type: str = "CAUSAL_LM",
                      modules_to_save: list[str] | None = None) -> dict:
    alpha = int(s.alpha) if float(s.alpha).is_integer() else s.alpha
    return {"peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
            "revision": None, "r": s.r, "lora_alpha": alpha, "use_rslora": s.rslora,
            "target_modules": [PEFT_MODULES[t] for t in s.targets], "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True, "use_dora": False,
            "modules_to_save": modules_to_save, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
            "alpha_pattern": {}}


def save_peft(adapters: dict, cfg: ModelConfig, out_dir: str | os.PathLike, dtype=None,
              base_model_name_or_path: str | None = None, modules_to_save: tuple[dict, dict] | None = None,
              task_type: str = "CAUSAL_LM") -> Path:
    """Write a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors, PEFT's tensor
    names) that peft.PeftModel.from_pretrained loads onto the HF base (model.save_hf of the base).

    dtype: None keeps the adapters' dtype. On multi-host runs every process must call this;
    process 0 writes. modules_to_save: (params, their ParamSpec tree) of modules trained in full
    beside the adapters (the PRM's head, HF `score.*`), written as PEFT writes modules_to_save
    (PEFT_PREFIX + HF name, e.g. base_model.model.score.weight) and listed by module name in the
    config. task_type: PEFT's (CAUSAL_LM; TOKEN_CLS for a PRM loaded as *ForTokenClassification).
    """
    specs = _check_adapters(adapters, cfg, "save_peft")
    out_dir, write = hf.new_out_dir(out_dir)
    np_dtype = np.dtype(jnp.dtype(dtype or jax.tree.leaves(adapters)[0].dtype))
    tensors = dict(hf.host_tensors(adapters, specs, np_dtype))
    modules = None
    if modules_to_save is not None:
        full = dict(hf.host_tensors(*modules_to_save, np_dtype))
        tensors.update({PEFT_PREFIX + name: t for name, t in full.items()})
        modules = sorted({name.rsplit(".", 1)[0] for name in full})
    if write:
        save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        (out_dir / CONFIG_FILE).write_text(json.dumps(
            _peft_config_dict(cfg.lora, base_model_name_or_path, task_type, modules), indent=2))
    return out_dir


# adapter_config.json fields read (validated below) or ignored; every other field must be unset
# (null, false, empty): each one that is set turns on a PEFT feature this module does not implement
_IGNORED_FIELDS = {"base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
                   "lora_dropout", "megatron_core", "qalora_group_size", "ensure_weight_tying"}
_READ_FIELDS = {"peft_type", "task_type", "r", "lora_alpha", "use_rslora", "target_modules", "bias",
                "init_lora_weights"}


def read_peft_config(path: str | os.PathLike) -> LoraConfig:
    """LoraConfig of a PEFT adapter directory (its adapter_config.json); CheckpointError naming the
    field on configurations this module cannot reproduce exactly."""
    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        raise hf.CheckpointError(f"{f}: not found (expected a PEFT adapter directory)")
    try:
        raw = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise hf.CheckpointError(f"{f}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if raw.get("peft_type") != "LORA":
        raise hf.CheckpointError(f"{f}: peft_type {raw.get('peft_type')!r} is not supported (LORA only)")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        raise hf.CheckpointError(f"{f}: task_type {raw['task_type']!r} is not supported (CAUSAL_LM)")
    if raw.get("bias", "none") != "none":
        raise hf.CheckpointError(f"{f}: bias={raw['bias']!r} is not supported (trained biases); only 'none'")
    init = raw.get("init_lora_weights", True)
    if init not in (True, False, "gaussian"):
        raise hf.CheckpointError(f"{f}: init_lora_weights={init!r} is not supported: that initialisation changes "
                                 "the base weights too (convert the adapter to plain LoRA when saving it)")
    if set_fields := sorted(k for k, v in raw.items() if k not in _IGNORED_FIELDS | _READ_FIELDS and v):
        raise hf.CheckpointError(f"{f}: {', '.join(f'{k}={raw[k]!r}' for k in set_fields)}: not supported (plain "
                                 "LoRA only: no DoRA, LoRA biases, rank/alpha patterns, modules_to_save, layer "
                                 "subsets, ...)")
    modules = raw.get("target_modules")
    by_module = {m: t for t, m in PEFT_MODULES.items()}
    if modules == "all-linear":
        modules = list(by_module)
    if isinstance(modules, str) or not modules:
        raise hf.CheckpointError(f"{f}: target_modules {modules!r} is not supported: give a list of module names "
                                 f"from {sorted(by_module)}")
    if bad := [m for m in modules if m not in by_module]:
        raise hf.CheckpointError(f"{f}: target_modules {bad} are not supported; supported: {sorted(by_module)}")
    try:
        return LoraConfig(r=raw.get("r"), alpha=raw.get("lora_alpha"), rslora=raw.get("use_rslora", False),
                          targets=tuple(by_module[m] for m in modules))
    except ValueError as e:
        raise hf.CheckpointError(f"{f}: {e}") from None


def _read_tensors(weights: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(weights), framework="numpy") as st:
            return {name: st.get_tensor(name) for name in st.keys()}
    except (SafetensorError, OSError) as e:
        raise hf.CheckpointError(f"{weights}: cannot read safetensors ({e}); file truncated or corrupt?") from None


def load_peft(path: str | os.PathLike, cfg: ModelConfig, dtype="float32", mesh=None,
              rules=sharding.DEFAULT_RULES) -> tuple[LoraConfig, dict]:
    """(LoraConfig, adapters) of a PEFT LoRA directory for the base model `cfg` (its cfg.lora is
    not read). Use them as cfg.replace(lora=settings) and with_adapters(base, adapters). Each
    adapter array is placed in its sharding on `mesh` (default: one device); the host holds the
    adapters (small) once while they are placed."""
    path = Path(path)
    settings = read_peft_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        other = " (adapter_model.bin is a pickle, not read: re-save with safe_serialization=True)" if (
            path / "adapter_model.bin").is_file() else ""
        raise hf.CheckpointError(f"{weights}: not found{other}")
    stored = _read_tensors(weights)
    specs = adapter_specs(cfg.replace(lora=settings))
    expected = {}
    for spec in jax.tree.leaves(specs, is_leaf=is_spec):
        for i in range(spec.shape[0]):
            expected[spec.hf_name.format(i=i)] = spec.hf_layer_shape
    if missing := [n for n in expected if n not in stored]:
        raise hf.CheckpointError(f"{weights}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                                 f"({len(missing)} of {len(expected)}) for {settings.targets} over "
                                 f"{cfg.num_layers} layers")
    for name, shape in expected.items():
        if stored[name].shape != shape:
            raise hf.CheckpointError(f"{weights}: tensor {name} has shape {stored[name].shape}, expected {shape} "
                                     f"(rank {settings.r}, {cfg.model_type} with hidden {cfg.hidden_size})")
    if unexpected := [n for n in stored if n not in expected]:
        raise hf.CheckpointError(f"{weights}: unexpected tensor(s) {unexpected[:5]}"
                                 f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)}); expected only "
                                 f"{PEFT_PREFIX}model.layers.{{i}}.*.lora_A/lora_B.weight of {settings.targets}")
    mesh = mesh if mesh is not None else sharding.make_mesh(devices=jax.devices()[:1])
    np_dtype = np.dtype(jnp.dtype(dtype))

    def place(spec: ParamSpec) -> jax.Array:
        host = np.stack([stored[spec.hf_name.format(i=i)].reshape(spec.layer_shape) for i in range(spec.shape[0])])
        host = host.astype(np_dtype, copy=False)
        where = sharding.named_sharding(mesh, spec.axes, spec.shape, rules)
        return jax.make_array_from_callback(host.shape, where, lambda idx: host[idx])

    return settings, jax.tree.map(place, specs, is_leaf=is_spec)
