"""The optional paths give the reference path's numbers: remat, bf16 (attention kernels: test_attention.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax import model
from reasonax.model import flops, hf
from tests import hf_reference as R


def _setup(family, seed=0):
    cfg = hf.config_from_hf(R.tiny_hf_config(family))
    params = R.random_jax_params(cfg, seed=seed)
    tokens = np.random.default_rng(seed).integers(3, R.VOCAB, size=(2, 12)).astype(np.int32)
    return cfg, params, tokens


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradient(remat):
    cfg, params, tokens = _setup("gemma2")

    def loss(p, c):
        logits = model.forward(p, tokens[:, :-1], c)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()

    l0, g0 = jax.value_and_grad(loss)(params, cfg)
    l1, g1 = jax.value_and_grad(loss)(params, cfg.replace(remat=remat))
    assert abs(float(l0) - float(l1)) < 1e-6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)


def test_bfloat16_forward_tracks_float32():
    cfg, params, tokens = _setup("gemma3")
    want = np.asarray(model.forward(params, tokens, cfg))
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    got = np.asarray(model.forward(bf16, tokens, cfg))
    assert got.dtype == np.float32  # logits are float32 whatever the params
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


def test_flops_hand_case():
    """Two layers, one sliding (window 2), 3 new tokens: pairs = (1+2+3) + (1+2+2) = 11."""
    cfg = model.get_preset("gemma3-270m").replace(num_layers=2, layer_types=(model.FULL, model.SLIDING),
                                                  sliding_window=2)
    assert flops.attended_pairs(cfg, 3) == 11
    f = flops.forward_flops(cfg, batch=2, seq=3)
    assert f["attention"] == 4 * cfg.num_heads * cfg.head_dim * 2 * 11
    assert f["dense"] == 2 * model.num_params(cfg) * 2 * 3  # tied: the table is the unembedding
