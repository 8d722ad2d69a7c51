import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sortedjax import nn
from sortedjax import peft as lora
from sortedjax.extract import extract
from sortedjax.models.mlp import MLPConfig, SortedMLP
from sortedjax.submodel import SubModel


def _sliced_dense(model, k, n):
    """A smaller dense SortedMLP (hidden=k, num_blocks=n) built from sliced weights."""
    c = model.cfg
    small = SortedMLP(MLPConfig(in_dim=c.in_dim, hidden=k, out_dim=c.out_dim, num_blocks=n), rngs=nnx.Rngs(9))
    small.inp.kernel[...] = model.inp.kernel[...][:, :k]
    small.inp.bias[...] = model.inp.bias[...][:k]
    small.blocks.layers.dense.kernel[...] = model.blocks.layers.dense.kernel[...][:n, :k, :k]
    small.blocks.layers.dense.bias[...] = model.blocks.layers.dense.bias[...][:n, :k]
    small.out.kernel[...] = model.out.kernel[...][:k]
    small.out.bias[...] = model.out.bias[...]
    return small


@pytest.mark.slow
def test_masked_mlp_equals_sliced_dense_model():
    model = SortedMLP(MLPConfig(in_dim=5, hidden=12, out_dim=3, num_blocks=4), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
    fwd = nnx.jit(lambda m, x, s: m(x, s))
    for k, n in [(1, 1), (5, 2), (12, 4), (7, 3)]:
        got = fwd(model, x, SubModel.of(width=k, depth=n))
        want = _sliced_dense(model, k, n)(x)
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(extract(model, SubModel.of(width=k, depth=n))(x), want, atol=1e-6, rtol=1e-6)


def test_mlp_bad_sizes():
    model = SortedMLP(MLPConfig(in_dim=2, hidden=4, out_dim=2, num_blocks=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth 0 outside the allowed range 1..2"):
        model(jnp.ones((1, 2)), SubModel.of(depth=0))
    with pytest.raises(ValueError, match="depth 3 outside the allowed range 1..2"):
        model(jnp.ones((1, 2)), SubModel.of(depth=3))
    with pytest.raises(ValueError, match="width 5 outside the allowed range 1..4"):
        model(jnp.ones((1, 2)), SubModel.of(width=5))


class _One(nnx.Module):
    def __init__(self, rngs):
        self.lin = nn.Linear(6, 4, names=("embed", "mlp"), rngs=rngs)


def _trained_lora(frozen=False):
    """An ``nn.Linear(6, 4)`` with a DyLoRA adapter (r_max=5, alpha=2) whose W_up is random, as if trained."""
    holder = _One(nnx.Rngs(0))
    assert lora.apply_dylora(holder, ["lin"], r=5, alpha=2.0, frozen=frozen) == ["lin"]
    holder.lin.lora.up[...] = jax.random.normal(jax.random.PRNGKey(3), (4, 5))
    return holder


def test_lora_rank_equals_merged_and_sliced():
    holder = _trained_lora()
    layer, a = holder.lin, holder.lin.lora
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 6))
    for b in range(1, 6):
        got = layer(x, rank=b)
        np.testing.assert_allclose(got, lora.merge(holder, b).lin(x), atol=1e-6, rtol=1e-6)
        dense = (
            x @ layer.kernel[...] + layer.bias[...][None, :] + (2.0 / b) * (x @ a.down[...][:b].T @ a.up[...][:, :b].T)
        )
        np.testing.assert_allclose(got, dense, atol=1e-6, rtol=1e-6)
    # fresh adapter (W_up = 0) is the base layer at every rank
    fresh = _One(nnx.Rngs(0))
    lora.apply_dylora(fresh, ["lin"], r=5, alpha=2.0)
    np.testing.assert_allclose(
        fresh.lin(x, rank=3), x @ fresh.lin.kernel[...] + fresh.lin.bias[...][None, :], atol=1e-6
    )


def test_lora_rank_out_of_range():
    holder = _trained_lora()
    for b in (0, 6):
        with pytest.raises(ValueError, match=f"rank {b} outside the allowed range 1..5"):
            holder.lin(jnp.ones((1, 6)), rank=b)
    with pytest.raises(ValueError, match="rank 9 outside"):
        lora.merge(holder, 9)


def test_lora_frozen_mode_updates_only_row_b():
    holder = _trained_lora(frozen=True)
    graphdef, params, rest = nnx.split(holder, lora.LoRAParam, ...)
    x = jax.random.normal(jax.random.PRNGKey(4), (8, 6))
    y = jax.random.normal(jax.random.PRNGKey(5), (8, 4))
    tx = optax.adam(0.1)
    opt = tx.init(params)
    b = 3

    @jax.jit
    def step(params, opt):
        loss = lambda p: jnp.mean((nnx.merge(graphdef, p, rest).lin(x, rank=b) - y) ** 2)  # noqa: E731
        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return lora.keep_only_rank(params, optax.apply_updates(params, updates), b), opt, grads

    new, opt, grads = step(params, opt)
    g_down, g_up = np.asarray(grads["lin"]["lora"]["down"][...]), np.asarray(grads["lin"]["lora"]["up"][...])
    assert np.abs(g_down[b - 1]).sum() > 0 and np.abs(g_up[:, b - 1]).sum() > 0
    assert np.all(np.delete(g_down, b - 1, axis=0) == 0) and np.all(np.delete(g_up, b - 1, axis=1) == 0)
    for _ in range(3):  # Adam momentum must not move the other rows either
        new, opt, _ = step(new, opt)
    d0, d1 = np.asarray(params["lin"]["lora"]["down"][...]), np.asarray(new["lin"]["lora"]["down"][...])
    u0, u1 = np.asarray(params["lin"]["lora"]["up"][...]), np.asarray(new["lin"]["lora"]["up"][...])
    np.testing.assert_array_equal(np.delete(d1, b - 1, 0), np.delete(d0, b - 1, 0))
    np.testing.assert_array_equal(np.delete(u1, b - 1, 1), np.delete(u0, b - 1, 1))
    assert not np.allclose(d1[b - 1], d0[b - 1]) and not np.allclose(u1[:, b - 1], u0[:, b - 1])
    assert "kernel" not in params["lin"]  # the base weight is not a trainable parameter here
