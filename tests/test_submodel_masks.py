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


def test_submodel_and_pool_print_readably():
    assert repr(SubModel.of(depth=3, width=64)) == "SubModel(depth=3, width=64)"
    assert repr(SubModel()) == "SubModel()"
    assert repr(SubModel.of(heads=2, rank=4)) == "SubModel(heads=2, rank=4)"
    assert repr(Pool.from_configs([{"depth": 1}, {"depth": 3}]).stacked()) == "SubModel(depth=[1, 3])"
    seen = []
    jax.jit(lambda s: seen.append(repr(s)))(SubModel.of(depth=3))
    assert seen == ["SubModel(depth=traced int32[])"]
    pool = Pool(
        {
            "depth": Dim.range(1, 4),
            "width": Dim(support=(16, 32, 64), distribution="geometric", p=0.5),
            "heads": Dim(support=(1, 2), weights=(0.3, 0.7)),
        }
    )
    assert repr(pool) == "Pool(depth=1..4 uniform, width=[16, 32, 64] geometric(p=0.5), heads=[1, 2] weights(0.3, 0.7))"
    assert repr(Dim.range(2, 3)) == "Dim([2, 3] uniform)"
    configs = Pool.from_configs([{"depth": 2, "width": 32}, {"depth": 4, "width": 64}], weights=[1, 3])
    assert repr(configs) == "Pool(configs=[{depth=2, width=32}, {depth=4, width=64}], weights=(1, 3))"
    many = Pool.from_configs([{"depth": d} for d in range(1, 10)])
    assert repr(many) == "Pool(configs=[{depth=1}, {depth=2}, {depth=3}, ... 9 configs ..., {depth=9}])"


def test_filled_sets_every_limited_dimension_as_int32():
    limits = {"depth": 4, "width": 64, "heads": 4}
    full = SubModel.of(depth=3).filled(limits)
    assert full.as_dict() == {"depth": 3, "width": 64, "heads": 4}
    assert full.rank is None and all(getattr(full, d).dtype == jnp.int32 for d in limits)
    assert SubModel.of(rank=2).filled(limits).as_dict() == {"depth": 4, "width": 64, "heads": 4, "rank": 2}
    # one pytree structure for every sub-model: a jitted function of a filled sub-model compiles once
    f = jax.jit(lambda s: s.depth + s.width + s.heads)
    for sub in (SubModel(), SubModel.of(depth=3), SubModel.of(heads=2), SubModel.of(depth=2, width=30)):
        f(sub.filled(limits))
    assert f._cache_size() == 1


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
