"""LoRA (reasonax.model.lora) against transformers + peft on tiny random models of every family:
our adapters exported and loaded by peft.PeftModel.from_pretrained, peft's adapters imported by
us, the merged checkpoint against merge_and_unload, zero B against the base, cached and
per-layer decode against the full forward, sharded against one device, and the errors."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import peft  # a test extra (pyproject [test]); reasonax itself never imports it
import pytest
import torch
from jax.sharding import PartitionSpec as P

from reasonax import model
from reasonax.model import config, hf, layers, lora, transformer
from tests import hf_reference as R

TOL = 1e-4
ALL = lora.LORA_TARGETS
PEFT_NAMES = [lora.PEFT_MODULES[t] for t in ALL]


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lora"))


@functools.cache
def _base(family: str, tmp_root: str):
    """An HF checkpoint of the family on disk and our (cfg, params) of it."""
    path = Path(tmp_root) / family / "base"
    R.save_hf_model(family, path, seed=hash(family) % 1000)
    cfg, params = model.load_hf(path)
    return path, cfg, params


def _tokens(seed=0, shape=(4, 3 * R.WINDOW)):
    """One shape throughout (longer than the sliding window, rows divisible over the test mesh),
    so tests of one family share compiled forwards."""
    return np.random.default_rng(seed).integers(3, R.VOCAB, size=shape).astype(np.int32)


def _settings(family: str) -> lora.LoraConfig:
    """All seven targets; rsLoRA on the Gemmas, plain alpha / r on the others."""
    return lora.LoraConfig(r=3, alpha=5, rslora=family.startswith("gemma"), targets=ALL)


def _random_adapters(cfg, seed: int, b_std: float = 0.1) -> dict:
    """A like the default init, B random too (a fresh B is zero and would test nothing); drawn in
    numpy (no init program compiled per family) and placed as load_hf / load_peft place arrays
    (a 1-device mesh), so forwards share their compiled program with imported adapters."""
    rng = np.random.default_rng(seed)
    host = {}
    for t, ab in lora.adapter_specs(cfg).items():
        bound = 1 / np.sqrt(np.prod(ab["a"].layer_shape[1:]))
        host[t] = {"a": rng.uniform(-bound, bound, ab["a"].shape).astype(np.float32),
                   "b": (b_std * rng.standard_normal(ab["b"].shape)).astype(np.float32)}
    return jax.device_put(host, lora.adapter_shardings(cfg, model.make_mesh(devices=jax.devices()[:1])))


@functools.cache
def _hf_base_logits(family: str, tmp_root: str) -> np.ndarray:
    """transformers' logits of the base (no adapters) on _tokens()."""
    return R.hf_logits(R.load_reference(_base(family, tmp_root)[0]), _tokens())


def _peft_logits(peft_model, tokens) -> np.ndarray:
    with torch.no_grad():
        return peft_model(torch.tensor(tokens)).logits.float().numpy()


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# ----------------------------------------------------------------------------------------------
# against transformers + peft, every family, all seven targets


@pytest.mark.parametrize("family", R.FAMILIES)
def test_export_loads_in_peft_and_merges_like_merge_and_unload(family, tmp_root):
    path, cfg, base = _base(family, tmp_root)
    cfg = cfg.replace(lora=_settings(family))
    adapters = _random_adapters(cfg, seed=1)
    tokens = _tokens()
    ours = np.asarray(model.forward(lora.with_adapters(base, adapters), tokens, cfg))

    out = lora.save_peft(adapters, cfg, Path(tmp_root) / family / "ours")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["use_rslora"]) == (3, 5, cfg.lora.rslora)
    peft_model = peft.PeftModel.from_pretrained(R.load_reference(path), str(out)).eval()
    want = _peft_logits(peft_model, tokens)
    assert _max_diff(ours, want) <= TOL, _max_diff(ours, want)
    assert _max_diff(want, _hf_base_logits(family, tmp_root)) > 0.05  # the adapters matter

    # merged: our save_hf of merge() against PEFT's merge_and_unload, both through transformers
    merged_dir = hf.save_hf(lora.merge(base, adapters, cfg), cfg, Path(tmp_root) / family / "merged")
    got = R.hf_logits(R.load_reference(merged_dir), tokens)
    want_merged = R.hf_logits(peft_model.merge_and_unload(), tokens)
    assert _max_diff(got, want_merged) <= TOL, _max_diff(got, want_merged)
    assert _max_diff(got, ours) <= TOL


@pytest.mark.parametrize("family", R.FAMILIES)
def test_import_of_a_peft_adapter(family, tmp_root):
    path, cfg, base = _base(family, tmp_root)
    s = _settings(family)
    peft_model = peft.get_peft_model(R.load_reference(path), peft.LoraConfig(
        r=s.r, lora_alpha=s.alpha, use_rslora=s.rslora, target_modules=PEFT_NAMES, lora_dropout=0.1)).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    out = Path(tmp_root) / family / "peft"
    peft_model.save_pretrained(str(out))

    settings, adapters = lora.load_peft(out, cfg)
    assert settings == s
    tokens = _tokens()
    got = np.asarray(model.forward(lora.with_adapters(base, adapters), tokens, cfg.replace(lora=settings)))
    want = _peft_logits(peft_model, tokens)
    assert _max_diff(got, want) <= TOL, _max_diff(got, want)
    assert _max_diff(want, _hf_base_logits(family, tmp_root)) > 0.05


# ----------------------------------------------------------------------------------------------
# our own paths


def test_zero_b_gives_the_base_logits(tmp_root):
    """B = 0: the LoRA term of a projection is exactly zero (the base output comes back bit for
    bit), and the forward gives the base logits (to float32 rounding: XLA compiles the two
    programs separately and may fuse the base ops differently)."""
    _, cfg, base = _base("qwen3", tmp_root)
    cfg = cfg.replace(lora=_settings("qwen3"))
    adapters = {t: {"a": ab["a"], "b": jnp.zeros_like(ab["b"])} for t, ab in _random_adapters(cfg, seed=3).items()}
    p = {"q": base["layers"]["q"][0], lora.ADAPTERS: jax.tree.map(lambda a: a[0], adapters)}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5, cfg.hidden_size)).astype(np.float32))
    y = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5, cfg.num_heads * cfg.head_dim)).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda y, x, p: layers.lora(cfg, y, x, p, "q"))(y, x, p)),
                                  np.asarray(y))
    tokens = _tokens()
    want = np.asarray(model.forward(base, tokens, cfg))
    got = np.asarray(model.forward(lora.with_adapters(base, adapters), tokens, cfg))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_init_sharded_follows_peft_default():
    """init_adapters on a mesh: each array in its sharding; A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (fan_in: D, N*H for o, F for down), B = 0."""
    mesh = model.make_mesh(data=2, fsdp=2, tensor=2)
    cfg = model.get_preset("qwen2.5-0.5b").replace(num_layers=2, vocab_size=256, hidden_size=64,
                                                   intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                                                   lora=lora.LoraConfig(r=32, alpha=8))
    adapters = lora.init_adapters(cfg, jax.random.key(3), mesh=mesh)
    jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(f"{a.sharding} vs {s}"),
                 adapters, lora.adapter_shardings(cfg, mesh))
    # the base weight's rules (heads and mlp over tensor), the rank over fsdp (then A's hidden stays whole)
    assert adapters["q"]["a"].sharding.spec == P(None, "fsdp", None)
    assert adapters["q"]["b"].sharding.spec == P(None, "tensor", None, "fsdp")
    assert adapters["down"]["a"].sharding.spec == P(None, "fsdp", "tensor")
    fan_in = {"q": 64, "k": 64, "v": 64, "o": 4 * 16, "gate": 64, "up": 64, "down": 128}
    for t, ab in adapters.items():
        a = np.asarray(ab["a"])
        bound = 1 / np.sqrt(fan_in[t])
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound, t
        assert abs(a.std() - bound / np.sqrt(3)) < 0.1 * bound, t  # uniform, not normal(0, bound)
        assert not np.any(np.asarray(ab["b"])), t
    assert len({float(ab["a"].ravel()[0]) for ab in adapters.values()}) == len(adapters)  # own keys


def test_cached_and_per_layer_decode_equal_the_full_forward(tmp_root):
    """Prefill through the scanned layers into the KV cache, then decode one token at a time over
    the per-layer weights (transformer.unstack_layers, the engine's CPU path), with adapters."""
    _, cfg, base = _base("gemma3", tmp_root)  # sliding + global layers, qk norms, sandwich norms
    cfg = cfg.replace(lora=_settings("gemma3"))
    params = lora.with_adapters(base, _random_adapters(cfg, seed=5))
    tokens = _tokens(seed=3)
    want = np.asarray(model.forward(params, tokens, cfg))
    prefill = 2 * R.WINDOW - 1
    cache = model.init_cache(cfg, batch=tokens.shape[0], max_len=16)
    logits, cache = model.decode(params, tokens[:, :prefill], cfg, cache)
    got = [np.asarray(logits)]
    per_layer = transformer.unstack_layers(params)
    for t in range(prefill, tokens.shape[1]):
        logits, cache = model.decode(per_layer, tokens[:, t:t + 1], cfg, cache)
        got.append(np.asarray(logits))
    assert _max_diff(np.concatenate(got, axis=1), want) <= TOL


def test_sharded_forward_equals_one_device(tmp_root):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = model.make_mesh(data=2, fsdp=2, tensor=2)
    _, cfg, base = _base("qwen2", tmp_root)
    cfg = cfg.replace(lora=_settings("qwen2"))
    adapters = _random_adapters(cfg, seed=9)
    out = lora.save_peft(adapters, cfg, Path(tmp_root) / "qwen2" / "sharded")
    settings, sharded = lora.load_peft(out, cfg, mesh=mesh)
    assert settings == cfg.lora
    jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(f"{a.sharding} vs {s}"),
                 sharded, lora.adapter_shardings(cfg, mesh))
    assert sharded["o"]["a"].sharding.spec == P(None, None, "tensor", None)
    sharded_base = jax.device_put(base, model.param_shardings(cfg, mesh))

    tokens = _tokens(seed=4)
    want = np.asarray(model.forward(lora.with_adapters(base, adapters), tokens, cfg))
    tok_sharded = jax.device_put(tokens, jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))))
    with jax.set_mesh(mesh):
        got = model.forward(lora.with_adapters(sharded_base, sharded), tok_sharded, cfg)
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * scale)


def test_with_and_split_adapters_copy_nothing(tmp_root):
    _, cfg, base = _base("qwen2", tmp_root)
    cfg = cfg.replace(lora=lora.LoraConfig(r=2, alpha=2, targets=("k",)))
    adapters = _random_adapters(cfg, seed=0)
    params = lora.with_adapters(base, adapters)
    assert params["layers"]["q"] is base["layers"]["q"] and params["embed"] is base["embed"]
    assert lora.ADAPTERS not in base["layers"]  # the base is not changed
    back, got = lora.split_adapters(params)
    assert got is adapters and back["layers"].keys() == base["layers"].keys()
    assert lora.split_adapters(base) == (base, None)
    abstract = lora.with_adapters(model.abstract_params(cfg), lora.abstract_adapters(cfg))
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)
    assert lora.num_adapter_params(cfg) == 3 * 2 * (48 + 2 * 12)  # 3 layers of k: a [r, D] + b [K*H, r]


# ----------------------------------------------------------------------------------------------
# errors name the bad input


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"r must be an int >= 1, got 0"):
        lora.LoraConfig(r=0)
    with pytest.raises(ValueError, match=r"unknown targets \['qkv'\]"):
        lora.LoraConfig(targets=("q", "qkv"))
    with pytest.raises(ValueError, match=r"alpha must be a number > 0"):
        lora.LoraConfig(alpha=-1)
    assert lora.LoraConfig(targets=("up", "q")) == lora.LoraConfig(targets=["q", "up"])  # canonical order
    assert lora.LoraConfig(r=16, alpha=32).scale == 2.0
    assert lora.LoraConfig(r=16, alpha=32, rslora=True).scale == 8.0
    cfg = model.get_preset("qwen3-0.6b").replace(lora=lora.LoraConfig(r=4, alpha=8, targets=("v", "q")))
    assert config.config_from_dict(json.loads(json.dumps(config.config_to_dict(cfg)))) == cfg  # Orbax checkpoints
    assert hf.config_to_hf(cfg).model_type == "qwen3"  # the settings are not part of the HF config


def test_forward_and_exports_reject_mismatched_adapters(tmp_root, tmp_path):
    _, cfg, base = _base("qwen2", tmp_root)
    lcfg = cfg.replace(lora=lora.LoraConfig(r=2, alpha=2, targets=("q", "v")))
    params = lora.with_adapters(base, _random_adapters(lcfg, seed=0))
    tokens = _tokens(shape=(1, 4))
    with pytest.raises(ValueError, match=r"cfg.lora is None"):
        model.forward(params, tokens, cfg)
    with pytest.raises(ValueError, match=r"adapters for \['q', 'v'\] but cfg.lora is"):
        model.forward(params, tokens, cfg.replace(lora=lora.LoraConfig(r=2, targets=("q",))))
    with pytest.raises(ValueError, match=r"adapter q: a \(2, 48\) .* expected a \(4, 48\)"):
        model.forward(params, tokens, cfg.replace(lora=lora.LoraConfig(r=4, targets=("q", "v"))))
    with pytest.raises(ValueError, match=r"params carry LoRA adapters"):
        hf.save_hf(params, lcfg, tmp_path / "x")
    wrong = lcfg.replace(lora=lora.LoraConfig(r=3, alpha=2, targets=("q", "v")))
    with pytest.raises(ValueError, match=r"save_peft: adapter q/a has shape \(3, 2, 48\), expected \(3, 3, 48\)"):
        lora.save_peft(params["layers"]["lora"], wrong, tmp_path / "y")


@pytest.fixture
def peft_dir(tmp_root, tmp_path):
    _, cfg, base = _base("qwen2", tmp_root)
    cfg = cfg.replace(lora=lora.LoraConfig(r=2, alpha=2, targets=("q", "down")))
    return lora.save_peft(_random_adapters(cfg, seed=0), cfg, tmp_path / "adapter"), cfg


@pytest.mark.parametrize("field, value, match", [
    ("use_dora", True, r"use_dora=True: not supported"),
    ("rank_pattern", {"q_proj": 8}, r"rank_pattern=\{'q_proj': 8\}: not supported"),
    ("modules_to_save", ["lm_head"], r"modules_to_save=\['lm_head'\]: not supported"),
    ("layers_to_transform", [0], r"layers_to_transform=\[0\]: not supported"),
    ("bias", "lora_only", r"bias='lora_only' is not supported"),
    ("init_lora_weights", "pissa", r"init_lora_weights='pissa' is not supported"),
    ("target_modules", ["q_proj", "embed_tokens"], r"target_modules \['embed_tokens'\] are not supported"),
    ("target_modules", ".*proj", r"target_modules '.\*proj' is not supported"),
    ("peft_type", "IA3", r"peft_type 'IA3' is not supported"),
])
def test_import_rejects_unsupported_configs(peft_dir, field, value, match):
    path, cfg = peft_dir
    raw = json.loads((path / "adapter_config.json").read_text())
    raw[field] = value
    (path / "adapter_config.json").write_text(json.dumps(raw))
    with pytest.raises(hf.CheckpointError, match=r"adapter_config\.json: " + match):
        lora.load_peft(path, cfg)


def test_import_names_bad_tensors(peft_dir):
    from safetensors.numpy import load_file, save_file

    path, cfg = peft_dir
    f = path / "adapter_model.safetensors"
    tensors = load_file(str(f))
    name = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"
    tensors[name] = np.zeros((2, 81), np.float32)
    save_file(tensors, str(f))
    with pytest.raises(hf.CheckpointError, match=rf"tensor {name} has shape \(2, 81\), expected \(2, 80\)"):
        lora.load_peft(path, cfg)
    del tensors[name]
    save_file(tensors, str(f))
    with pytest.raises(hf.CheckpointError, match=rf"missing tensor\(s\) \['{name}'\]"):
        lora.load_peft(path, cfg)
    tensors[name] = np.zeros((2, 80), np.float32)
    tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((2, 48), np.float32)
    save_file(tensors, str(f))
    with pytest.raises(hf.CheckpointError, match=r"unexpected tensor\(s\) \['base_model.model.lm_head.lora_A"):
        lora.load_peft(path, cfg)
