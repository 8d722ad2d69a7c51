import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sortedjax import masks
from sortedjax.submodel import Dim, Pool, SubModel, check_sizes


def test_prefix_mask_traced():
    f = jax.jit(lambda k: masks.prefix_mask(6, k))
    np.testing.assert_array_equal(f(3), [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(f(6), np.ones(6))
    assert f._cache_size() == 1


def test_pool_sampling_distribution_in_jit():
    pool = Pool(
        {
            "width": Dim(support=(2, 4, 8), distribution="weights", weights=(0.2, 0.3, 0.5)),
            "depth": Dim.range(1, 3, distribution="geometric", p=0.5),
        }
    )
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
    # Theta-perp: truncations of the sampled sub-model, never larger ones
    assert pool.targeted_configs({"depth": 1, "width": 2}) == []
    assert pool.targeted_configs({"depth": 3, "width": 8}) == [{"depth": 1, "width": 8}, {"depth": 3, "width": 2}]
    assert len(Pool({"width": Dim.range(1, 4), "depth": Dim(support=(1, 2))}).configs()) == 8


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(support=()), "non-empty"),
        (dict(support=(0, 1)), ">= 1"),
        (dict(support=(1, 2), distribution="geometric", p=1.5), "0 < p <= 1"),
        (dict(support=(1, 2), distribution="zipf"), "unknown distribution"),
        (dict(support=(1, 2), weights=(1.0,)), "weights"),
    ],
)
def test_dim_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Dim(**kw)


def test_unknown_dimension():
    with pytest.raises(ValueError, match="unknown pool dimension 'size'"):
        Pool({"size": Dim(support=(1,))})
    with pytest.raises(ValueError, match="unknown sub-model dimension"):
        SubModel.of(size=3)


def test_sizes_outside_the_model_raise():
    limits = {"width": 32, "depth": 4}
    check_sizes(SubModel.of(width=32, depth=1), limits)
    for sub, msg in [
        (SubModel.of(width=40), "width 40 outside the allowed range 1..32"),
        (SubModel.of(width=0), "width 0 outside the allowed range 1..32"),
        (SubModel.of(depth=5), "depth 5 outside the allowed range 1..4"),
        (SubModel.of(heads=2), "no sub-model dimension 'heads'"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_sizes(sub, limits)
    with pytest.raises(ValueError, match="width 48 outside the allowed range 1..32"):
        Pool({"width": Dim.range(8, 48)}, limits=limits)
    with pytest.raises(ValueError, match="depth 6 outside the allowed range 1..4"):
        Pool.from_configs([{"depth": 2}, {"depth": 6}], limits=limits)
    with pytest.raises(ValueError, match="support sizes must be >= 1"):
        Dim(support=(0, 2))
    Pool({"width": Dim.range(1, 32), "depth": Dim.range(1, 4)}, limits=limits)  # fits: no error


def test_mesh_fallback_to_replication_warns():
    from sortedjax import sharding

    mesh = sharding.make_mesh("data:2,fsdp:4")
    with pytest.warns(UserWarning, match=r"dimension 0 \('embed', size 6\).*not divisible by mesh axes \('fsdp',\)"):
        spec = sharding.logical_to_spec(("embed", "mlp"), (6, 8), mesh)
    assert spec == jax.sharding.PartitionSpec(None, None)
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 8), mesh) == jax.sharding.PartitionSpec("fsdp", None)
