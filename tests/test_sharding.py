"""Sharded (2x2x2 mesh of 8 fake CPU devices) against a single device."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from reasonax import model
from reasonax.model import sharding
from tests import hf_reference as R


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    return model.make_mesh(data=2, fsdp=2, tensor=2)


@pytest.mark.parametrize("family", ["gemma3", "qwen2", "gemma"])
def test_sharded_forward_matches_single_device(family, mesh, tmp_path):
    R.save_hf_model(family, tmp_path)
    cfg, single = model.load_hf(tmp_path)
    _, sharded = model.load_hf(tmp_path, mesh=mesh)
    # params really are distributed: q heads over tensor, embed over fsdp
    assert sharded["layers"]["q"].sharding.spec == P(None, "tensor", None, "fsdp")
    assert sharded["embed"].sharding.spec == P("tensor", "fsdp") if R.VOCAB % 2 == 0 else P(None, "fsdp")
    tokens = np.random.default_rng(0).integers(3, R.VOCAB, size=(4, 12)).astype(np.int32)
    want = np.asarray(model.forward(single, tokens, cfg))
    tok_sharded = jax.device_put(tokens, jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))))
    with jax.set_mesh(mesh):
        got = model.forward(sharded, tok_sharded, cfg)
    # rtol 1e-5 on the logit scale: the fsdp-split contraction sums in another order
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * scale)
    # cached decode on the mesh too
    cache = model.init_cache(cfg, batch=4, max_len=16, mesh=mesh)
    with jax.set_mesh(mesh):
        logits, cache = model.decode(sharded, tok_sharded[:, :8], cfg, cache)
        step, cache = model.decode(sharded, tok_sharded[:, 8:9], cfg, cache)
    np.testing.assert_allclose(np.asarray(step[:, 0]), want[:, 8], rtol=1e-5, atol=1e-5 * scale)


def test_init_params_directly_sharded(mesh):
    cfg = model.get_preset("qwen2.5-0.5b").replace(num_layers=2, vocab_size=256, hidden_size=64,
                                                   intermediate_size=128, num_heads=4, num_kv_heads=2,
                                                   head_dim=16)
    params = model.init_params(cfg, jax.random.key(0), mesh=mesh)
    want = model.param_shardings(cfg, mesh)
    jax.tree.map(lambda a, s: (a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(f"{a.sharding} vs {s}")),
                 params, want)
    assert params["layers"]["gate"].sharding.spec == P(None, "tensor", "fsdp")
    # each device holds only its shard of a sharded matrix
    shard = params["layers"]["gate"].addressable_shards[0].data
    assert shard.shape == (2, 64, 32)
    single = model.init_params(cfg, jax.random.key(0))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, single)


def test_logical_rules_fall_back_to_replicated_when_not_divisible():
    shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (3, 64, 1, 16), shape) == \
        P(None, "fsdp", None, None)  # MQA: 1 kv head cannot be split over tensor
    assert sharding.logical_to_spec(("batch", None), (8, 5), shape) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec(("batch", None), (2, 5), shape) == P("data", None)
    assert sharding.logical_to_spec(("vocab", "embed"), (101, 64), shape) == P(None, "fsdp")
