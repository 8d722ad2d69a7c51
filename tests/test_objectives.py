"""Thesis Algorithm 2: stochastic summation over theta*_t and its truncations, g_acc with its own
mini-batch per iteration, sampling distributions, and per-sub-model classifier re-tuning."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sortedjax.methods import objectives, retune
from sortedjax.models.mlp import MLPConfig, SortedMLP
from sortedjax.submodel import Dim, Pool, SubModel
from sortedjax.train import TrainConfig, make_optimizer, make_train_step

CFG = MLPConfig(in_dim=4, hidden=8, out_dim=3, num_blocks=3)


def _batch(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0))}


def _xent(model, batch, sub):
    logits = model(batch["x"], sub)
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(batch["y"])), batch["y"]])


def _code(sub):
    """A loss that is a distinct number per sub-model (1000 * 4**depth + 2**width)."""
    return (4.0 ** sub.depth.astype(jnp.float32)) * 1000.0 + (2.0 ** sub.width.astype(jnp.float32)), {}


def _truncations(sizes, supports):
    """Theta-perp by brute force: one dimension smaller (within its support), the rest as sampled."""
    out = []
    for name, support in supports.items():
        for s in support:
            if s < sizes[name]:
                out.append({**sizes, name: s})
    return out


@pytest.mark.parametrize(
    "pool",
    [
        Pool({"width": Dim(support=(2, 5, 8)), "depth": Dim.range(1, 3)}),
        Pool.from_configs([{"depth": 1, "width": 2}, {"depth": 2, "width": 8}, {"depth": 3, "width": 5}]),
    ],
)
def test_stochastic_summation_is_the_sum_over_theta_and_its_truncations(pool):
    supports = {"width": (2, 5, 8), "depth": (1, 2, 3)}
    model = SortedMLP(CFG, rngs=nnx.Rngs(0))
    batch = _batch()
    f = jax.jit(lambda k: objectives.stochastic_summation(lambda s: (_xent(model, batch, s), {}), pool, k))
    code = jax.jit(lambda k: objectives.stochastic_summation(_code, pool, k))
    one = jax.jit(lambda s: _xent(model, batch, s))
    seen = set()
    for i in range(8):
        key = jax.random.PRNGKey(i)
        sizes = pool.sample(key).as_dict()
        seen.add(tuple(sizes.values()))
        group = [sizes] + _truncations(sizes, supports)
        key_of = lambda c: (c["depth"], c["width"])  # noqa: E731
        assert sorted(pool.targeted_configs(sizes), key=key_of) == sorted(group[1:], key=key_of)
        loss, m = f(key)
        want = sum(float(one(SubModel.of(**g))) for g in group)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)
        assert m["n_targeted"] == len(group) - 1
        want_code = sum(float(_code(SubModel.of(**g))[0]) for g in group)
        assert float(code(key)[0]) == want_code  # exactly these sub-models, each once
    assert len(seen) >= 3 and f._cache_size() == 1  # several samples, one compilation
    # never a larger model: the largest sample targets every smaller size of each dimension
    assert len(pool.targeted_configs({"width": 8, "depth": 3})) == 4
    assert pool.targeted_configs({"width": 2, "depth": 1}) == []


def test_stochastic_summation_gradient_is_the_sum_of_the_group_gradients():
    pool = Pool({"width": Dim(support=(3, 8)), "depth": Dim.range(1, 3)})
    model = SortedMLP(CFG, rngs=nnx.Rngs(4))
    graphdef, params = nnx.split(model)
    batch = _batch()
    key = jax.random.PRNGKey(2)
    sizes = pool.sample(key).as_dict()
    group = [sizes] + _truncations(sizes, pool.supports())
    assert len(group) >= 2

    def total(p):
        m = nnx.merge(graphdef, p)
        return objectives.stochastic_summation(lambda s: (_xent(m, batch, s), {}), pool, key)[0]

    def one(p, s):
        return _xent(nnx.merge(graphdef, p), batch, s)

    g = jax.jit(jax.grad(total))(params)
    g1 = jax.jit(jax.grad(one))
    want = jax.tree.map(lambda *gs: sum(gs), *[g1(params, SubModel.of(**c)) for c in group])
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_targeted_stacked_candidates_and_bad_sizes():
    pool = Pool({"width": Dim(support=(2, 4, 8)), "depth": Dim.range(1, 2)})
    cands, valid = pool.targeted(SubModel.of(width=4, depth=2))
    np.testing.assert_array_equal(cands.depth, [1, 2, 2, 2, 2])  # depth's support, then width's
    np.testing.assert_array_equal(cands.width, [4, 4, 2, 4, 8])
    np.testing.assert_array_equal(valid, [True, False, True, False, False])
    with pytest.raises(ValueError, match="lack pool dimension 'depth'"):
        pool.targeted_configs({"width": 4})


def test_uniform_is_the_default_distribution():
    pool = Pool({"width": Dim(support=(2, 4, 8, 16))})
    np.testing.assert_allclose(pool.dims["width"].probs, [0.25] * 4)
    w = np.asarray(jax.jit(jax.vmap(pool.sample))(jax.random.split(jax.random.PRNGKey(0), 8000)).width)
    np.testing.assert_allclose([np.mean(w == v) for v in (2, 4, 8, 16)], [0.25] * 4, atol=0.02)


POOL = Pool({"width": Dim.range(1, 8), "depth": Dim.range(1, 3)})


def _loss(model, batch, key):
    return objectives.stochastic(lambda s: (_xent(model, batch, s), {}), POOL, key)


def test_g_acc_is_k_iterations_own_batches_one_update(k=3):
    model = SortedMLP(CFG, rngs=nnx.Rngs(1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(TrainConfig(workdir="x", steps=1, learning_rate=0.05))
    batches = [_batch(8, seed=10 + i) for i in range(k)]
    big = jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches)  # data(step): the k mini-batches
    key = jax.random.PRNGKey(7)
    step = jax.jit(make_train_step(graphdef, _loss, tx, grad_accum=k))
    new, _, m = step(params, tx.init(params), (rest,), big, key)

    # by hand: k iterations, each its own mini-batch and its own sampled sub-model, then one update
    keys = jax.random.split(key, k)
    assert len({tuple(POOL.sample(kk).as_dict().values()) for kk in keys}) == k  # k different sub-models

    def loss_p(p, b, kk):
        return _loss(nnx.merge(graphdef, p, rest, copy=True), b, kk)[0]

    grad = jax.jit(jax.grad(loss_p))
    grads = [grad(params, b, kk) for b, kk in zip(batches, keys)]
    g = jax.tree.map(lambda *gs: sum(gs) / k, *grads)
    upd, _ = tx.update(g, tx.init(params), params)
    want = optax.apply_updates(params, upd)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    # ...and it is not the old behaviour (one mini-batch reused for every sub-model)
    reused = jax.tree.map(lambda *gs: sum(gs) / k, *[grad(params, batches[0], kk) for kk in keys])
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(reused), jax.tree.leaves(g)))
    np.testing.assert_allclose(m["grad_norm"], optax.tree.norm(g), rtol=1e-5)
    # one compiled program whatever the batches and sub-models
    step(params, tx.init(params), (rest,), jax.tree.map(lambda x: x[::-1], big), jax.random.PRNGKey(3))
    assert step._cache_size() == 1


def test_accumulated_splits_the_batch_and_make_refuses_g_acc():
    model = SortedMLP(CFG, rngs=nnx.Rngs(2))
    batches = [_batch(6, seed=i) for i in range(3)]
    big = jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches)
    key = jax.random.PRNGKey(0)
    loss, _ = objectives.accumulated(lambda b, kk: _loss(model, b, kk), big, key, 3)
    want = np.mean([float(_loss(model, b, kk)[0]) for b, kk in zip(batches, jax.random.split(key, 3))])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    with pytest.raises(ValueError, match="batch size 18 is not divisible by g_acc=4"):
        objectives.accumulated(lambda b, kk: _loss(model, b, kk), big, key, 4)
    with pytest.raises(ValueError, match="g_acc=2: objectives.make binds one mini-batch"):
        objectives.make("stochastic", lambda s: (0.0, {}), POOL, g_acc=2)
    with pytest.raises(ValueError, match="unknown objective 'sandwich'"):
        objectives.make("sandwich", lambda s: (0.0, {}), POOL)


def test_retune_classifiers_changes_only_the_head_and_helps_that_submodel(tmp_path):
    model = SortedMLP(CFG, rngs=nnx.Rngs(3))
    batch = _batch(32, seed=5)
    subs = [{"width": 2, "depth": 1}, {"width": 8, "depth": 3}]
    cfg = TrainConfig(workdir=str(tmp_path), steps=30, learning_rate=0.05, progress=False, log_every=30)
    out = retune.retune_classifiers(
        model, subs, lambda m, b, s: (_xent(m, b, s), {}), lambda step: batch, cfg, head=retune.head_filter("out")
    )
    assert list(out) == ["width2_depth1", "width8_depth3"]
    before = nnx.to_flat_state(nnx.state(model, nnx.Param))
    for s, name in zip(subs, out):
        after = dict(nnx.to_flat_state(nnx.state(out[name], nnx.Param)))
        for path, v in before:
            same = np.array_equal(np.asarray(v[...]), np.asarray(after[path][...]))
            assert same != ("out" in path), path  # body frozen, head re-tuned
        sub = SubModel.of(**s)
        assert float(_xent(out[name], batch, sub)) < float(_xent(model, batch, sub)) - 0.01
    with pytest.raises(ValueError, match="selects no parameters"):
        retune.retune_classifiers(model, subs, None, None, cfg, head=retune.head_filter("classifier"))
    with pytest.raises(ValueError, match="subs is empty"):
        retune.retune_classifiers(model, [], None, None, cfg)


def test_all_configs_of_a_pool_are_its_product():
    pool = Pool({"width": Dim(support=(2, 4)), "depth": Dim.range(1, 3)})
    assert pool.configs() == [dict(zip(("depth", "width"), c)) for c in itertools.product((1, 2, 3), (2, 4))]
