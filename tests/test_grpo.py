"""GRPO: the ALGORITHMS.md section 3 cases (advantages, clipping on both sides, clip-higher, k3
value and gradient, the four aggregations, zero-variance groups) and the variants' pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasonax.train import grpo


def test_group_advantages_hand_cases():
    a = np.asarray(grpo.group_advantages([1, 0, 0, 0, 1, 1, 1, 1], 4, eps=0.0 + 1e-12))
    np.testing.assert_allclose(a[:4], [1.5, -0.5, -0.5, -0.5], rtol=1e-6)
    assert (a[4:] == 0).all()  # all-equal group: zero advantage, no NaN
    with_eps = np.asarray(grpo.group_advantages([1, 0, 0, 0], 4))  # default eps 1e-4
    np.testing.assert_allclose(with_eps, np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4), rtol=1e-6)


def test_advantage_scales():
    r = np.array([1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 1.0, 1.0])
    none = np.asarray(grpo.group_advantages(r, 4, scale="none"))
    np.testing.assert_allclose(none, [0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 0.0, 0.0], rtol=1e-6)
    batch = np.asarray(grpo.group_advantages(r, 4, scale="batch", eps=0.0))
    np.testing.assert_allclose(batch, none / np.std(r, ddof=1), rtol=1e-6)
    group = np.asarray(grpo.group_advantages(r, 4, scale="group", eps=0.0))
    np.testing.assert_allclose(group[4:], none[4:] / np.std(r[4:], ddof=1), rtol=1e-6)
    for bad in (dict(rewards=r, group_size=3), dict(rewards=r, group_size=1), dict(rewards=r[None], group_size=4)):
        with pytest.raises(ValueError, match="groups"):
            grpo.group_advantages(**bad)
    with pytest.raises(ValueError, match="scale"):
        grpo.group_advantages(r, 4, scale="std")


def _loss_and_grad(rho, adv, **kw):
    old = jnp.zeros((1, 1))

    def f(logp):
        loss, clipped = grpo.policy_loss(logp, old, jnp.asarray([adv], jnp.float32), **kw)
        return loss.sum(), clipped

    (loss, clipped), g = jax.value_and_grad(f, has_aux=True)(jnp.log(jnp.full((1, 1), rho, jnp.float32)))
    return float(loss), float(g[0, 0]), bool(clipped[0, 0])


def test_clipping_hand_cases():
    loss, g, clipped = _loss_and_grad(1.3, 1.0)
    np.testing.assert_allclose(loss, -1.2, rtol=1e-6)
    assert g == 0.0 and clipped
    loss, g, _ = _loss_and_grad(1.25, 1.0, eps_high=0.28)  # clip-higher: inside the wider range
    np.testing.assert_allclose(loss, -1.25, rtol=1e-6)
    assert g != 0.0
    loss, g, clipped = _loss_and_grad(0.7, -1.0)
    np.testing.assert_allclose(loss, 0.8, rtol=1e-6)
    assert g == 0.0 and clipped
    loss, g, clipped = _loss_and_grad(1.5, -1.0)  # pessimistic bound: the gradient flows
    np.testing.assert_allclose(loss, 1.5, rtol=1e-6)
    np.testing.assert_allclose(g, 1.5, rtol=1e-6)  # d(rho * 1)/d logp = rho
    assert not clipped
    loss, g, clipped = _loss_and_grad(5.0, -1.0, dual_clip=3.0)  # dual clip caps it at c * |A|
    np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
    assert g == 0.0 and clipped
    loss, _, _ = _loss_and_grad(2.0, -1.0, dual_clip=3.0)  # below the dual bound: unchanged
    np.testing.assert_allclose(loss, 2.0, rtol=1e-6)
    loss, g, _ = _loss_and_grad(1.0, 0.7)  # on policy: rho = 1, gradient = -A
    np.testing.assert_allclose([loss, g], [-0.7, -0.7], rtol=1e-6)


def test_k3_value_and_gradient():
    logp = jnp.log(jnp.float32(0.5))
    ref = jnp.log(jnp.float32(0.25))
    np.testing.assert_allclose(grpo.k3_kl(logp, ref), 0.5 + np.log(2) - 1, rtol=1e-6)
    np.testing.assert_allclose(0.5 + np.log(2) - 1, 0.193147, atol=1e-6)
    np.testing.assert_allclose(jax.grad(grpo.k3_kl)(logp, ref), 0.5, rtol=1e-6)
    assert float(grpo.k3_kl(ref, ref)) == 0.0
    x = jnp.linspace(-5, 5, 101)
    assert (np.asarray(grpo.k3_kl(x, 0.3 * x[::-1])) >= 0).all()


def test_aggregation_hand_cases():
    loss = np.array([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    loss_junk = np.where(mask > 0, loss, 99.0)  # masked positions must not leak in
    want = {"seq-mean-token-mean": 0.75, "token-mean": 4.0 / 6, "dr-grpo": 0.5, "seq-mean-token-sum": 2.0}
    for mode, value in want.items():
        np.testing.assert_allclose(grpo.aggregate(loss_junk, mask, mode, max_len=4), value, rtol=1e-6, err_msg=mode)
    np.testing.assert_allclose(grpo.aggregate(loss, mask, "dr-grpo", max_len=8), 4.0 / 16, rtol=1e-6)
    np.testing.assert_allclose(grpo.aggregate(loss, mask, "dr-grpo"), 0.5, rtol=1e-6)  # max_len default: T
    with pytest.raises(ValueError, match="aggregation mode"):
        grpo.aggregate(loss, mask, "mean")
    # a sequence with no counted token (a masked truncated completion) adds 0 to the seq means
    np.testing.assert_allclose(grpo.aggregate(loss, mask * [[0], [1]], "seq-mean-token-mean"), 0.25, rtol=1e-6)


def test_overlong_penalty_and_importance_weights():
    pen = np.asarray(grpo.overlong_penalty([10, 12, 16, 20], max_len=20, buffer=8))
    np.testing.assert_allclose(pen, [0.0, 0.0, -0.5, -1.0], rtol=1e-6)
    w = np.asarray(grpo.importance_weights(jnp.log(jnp.array([0.5, 0.9, 0.2])),
                                           jnp.log(jnp.array([0.5, 0.3, 0.4])), cap=2.0))
    np.testing.assert_allclose(w, [1.0, 2.0, 0.5], rtol=1e-6)
