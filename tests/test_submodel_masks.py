import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sortedjax import masks
from sortedjax.submodel import Dim, Pool, SubModel


def test_prefix_mask_traced():
    f = jax.jit(lambda k: masks.prefix_mask(6, k))
    np.testing.assert_array_equal(f(3), [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(f(6), np.ones(6))
    np.testing.assert_array_equal(masks.head_mask(3, 2, 2), [1, 1, 1, 1, 0, 0])
    assert f._cache_size() == 1


def test_pool_sampling_distribution_in_jit():
    pool = Pool({"width": Dim(support=(2, 4, 8), distribution="weights", weights=(0.2, 0.3, 0.5)),
                 "depth": Dim.range(1, 3, distribution="geometric", p=0.5)})
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    subs = jax.jit(jax.vmap(pool.sample))(keys)
    w, d = np.asarray(subs.width), np.asarray(subs.depth)
    assert set(np.unique(w)) == {2, 4, 8}
    np.testing.assert_allclose([np.mean(w == v) for v in (2, 4, 8)], [0.2, 0.3, 0.5], atol=0.015)
    geo = 0.5 ** np.arange(3)
    np.testing.assert_allclose([np.mean(d == v) for v in (1, 2, 3)], geo / geo.sum(), atol=0.015)
    assert subs.width.dtype == jnp.int32


def test_pool_from_configs_and_targeted():
    pool = Pool.from_configs([{"depth": 1, "width": 2}, {"depth": 3, "width": 8}], weights=[1, 3])
    subs = jax.vmap(pool.sample)(jax.random.split(jax.random.PRNGKey(1), 8000))
    pairs = set(zip(np.asarray(subs.depth).tolist(), np.asarray(subs.width).tolist()))
    assert pairs == {(1, 2), (3, 8)}
    assert abs(np.mean(np.asarray(subs.depth) == 3) - 0.75) < 0.02
    assert pool.max() == {"depth": 3, "width": 8}
    t = pool.targeted(SubModel.of(depth=1, width=2))
    assert [x.as_dict() for x in t] == [{"depth": 1, "width": 8}, {"depth": 3, "width": 2}]
    assert len(Pool({"width": Dim.range(1, 4), "depth": Dim(support=(1, 2))}).configs()) == 8


@pytest.mark.parametrize("kw, msg", [
    (dict(support=()), "non-empty"),
    (dict(support=(0, 1)), ">= 1"),
    (dict(support=(1, 2), distribution="geometric", p=1.5), "0 < p <= 1"),
    (dict(support=(1, 2), distribution="zipf"), "unknown distribution"),
    (dict(support=(1, 2), weights=(1.0,)), "weights"),
])
def test_dim_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Dim(**kw)


def test_unknown_dimension():
    with pytest.raises(ValueError, match="unknown pool dimension 'size'"):
        Pool({"size": Dim(support=(1,))})
    with pytest.raises(ValueError, match="unknown sub-model dimension"):
        SubModel.of(size=3)


def test_depth_scan_skips_and_collects():
    L = 5
    ws = jnp.arange(1, L + 1, dtype=jnp.float32)  # layer i multiplies by (i+1)

    def layer(w, h):
        return h * w

    f = jax.jit(lambda d: masks.depth_scan(layer, ws, jnp.ones(3), d, exits=(1, 3, 5)))
    h, states = f(3)
    np.testing.assert_allclose(h, 6.0 * np.ones(3))  # 1*2*3, layers 4,5 skipped
    np.testing.assert_allclose(states[:, 0], [1.0, 6.0, 6.0])  # exit 5 > depth: state at depth
    h5, states5 = f(5)
    np.testing.assert_allclose(states5[:, 0], [1.0, 6.0, 120.0])
    assert f._cache_size() == 1
    with pytest.raises(ValueError, match="depth 0 outside the allowed range 1..5"):
        masks.depth_scan(layer, ws, jnp.ones(3), 0)
    with pytest.raises(ValueError, match="exit 6 outside the allowed range 1..5"):
        masks.depth_scan(layer, ws, jnp.ones(3), None, exits=(6,))


def test_depth_scan_skipped_layers_do_not_run():
    """A skipped layer that would produce NaN leaves no trace (the branch is not taken)."""
    ws = jnp.array([2.0, jnp.nan, jnp.nan])
    h = jax.jit(lambda d: masks.depth_scan(lambda w, h: h * w, ws, jnp.ones(2), d))(1)
    np.testing.assert_allclose(h, [2.0, 2.0])
    g = jax.grad(lambda w: masks.depth_scan(lambda w, h: h * w, w, jnp.ones(2), 1).sum())(ws)
    np.testing.assert_allclose(g, [2.0, 0.0, 0.0])
