"""KV-cache decoding equals the full forward pass; sampling rules; candidate source."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax.sampling import sample
from symreg.decoding import SamplingConfig, sample_skeletons
from symreg.model import ModelConfig, SymbolicGPT, init_cache, make_points

CFG = ModelConfig.preset("tiny", vocab_size=13, max_len=10, max_vars=1)


@pytest.fixture(scope="module")
def model():
    return SymbolicGPT(CFG, rngs=nnx.Rngs(1))


def _problem(seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (7, 1)).astype(np.float32)
    return {"X": x, "y": np.cos(3 * x[:, 0]) * (seed + 1)}


@pytest.mark.slow
def test_kv_cache_steps_equal_full_forward(model):
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (3, CFG.max_len)))
    z = jnp.asarray(rng.normal(size=(3, CFG.embed)), jnp.float32)
    full, _ = model.decode(tokens, z)
    cache = init_cache(CFG, 3)
    steps = []
    for t in range(CFG.max_len):
        logits, cache = model.decode(tokens[:, t : t + 1], z, start=t, cache=cache)
        steps.append(logits[:, 0])
    np.testing.assert_allclose(jnp.stack(steps, 1), full, rtol=1e-4, atol=1e-5)
    # a 4-token prefill followed by single steps gives the same logits too
    cache = init_cache(CFG, 3)
    pre, cache = model.decode(tokens[:, :4], z, start=0, cache=cache)
    nxt, _ = model.decode(tokens[:, 4:5], z, start=4, cache=cache)
    np.testing.assert_allclose(pre, full[:, :4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(nxt[:, 0], full[:, 4], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_greedy_cached_generation_equals_naive_full_forward(model):
    points, mask = make_points([_problem(0), _problem(1)], CFG.max_vars)
    ids = sample_skeletons(
        model, points, mask, jax.random.key(0), n_samples=2, sampling=SamplingConfig(method="greedy")
    )
    assert ids.shape == (2, 2, CFG.max_len)
    z = model.encode(jnp.asarray(points), jnp.asarray(mask))
    naive = np.zeros((2, CFG.max_len), np.int32)
    naive[:, 0] = 1
    done = np.zeros(2, bool)
    for t in range(CFG.max_len - 1):
        logits = np.asarray(model.decode(jnp.asarray(naive), z)[0][:, t]).copy()
        logits[:, [0, 1]] = -np.inf  # pad and start are never sampled
        nxt = np.where(done, 0, logits.argmax(-1))
        naive[:, t + 1] = nxt
        done |= nxt == 2
    np.testing.assert_array_equal(ids[:, 0], naive)
    np.testing.assert_array_equal(ids[:, 1], naive)  # greedy: every sample identical


def test_sampling_methods_respect_truncation():
    logits = jnp.tile(jnp.array([[0.0, 3.0, 2.9, -1.0, 1.0]]), (4000, 1))
    key = jax.random.key(0)

    def draw(logits, key, cfg):  # how _generate draws a token
        return sample(logits, key, **cfg.sample_args())

    k2 = np.asarray(draw(logits, key, SamplingConfig(method="top_k", top_k=2)))
    assert set(np.unique(k2)) == {1, 2}
    p = np.asarray(draw(logits, key, SamplingConfig(method="top_p", top_p=0.01)))
    assert set(np.unique(p)) == {1}
    full = np.asarray(draw(logits, key, SamplingConfig(method="top_k", top_k=40)))
    assert len(np.unique(full)) == 5
    assert np.all(np.asarray(draw(logits, key, SamplingConfig(method="greedy"))) == 1)
    with pytest.raises(ValueError, match="method"):
        SamplingConfig(method="beam")


def test_top_k_sampling_is_seeded_and_stops_after_end(model):
    points, mask = make_points([_problem(2)], CFG.max_vars)
    a = sample_skeletons(model, points, mask, jax.random.key(3), n_samples=16)
    b = sample_skeletons(model, points, mask, jax.random.key(3), n_samples=16)
    np.testing.assert_array_equal(a, b)
    assert len({tuple(r) for r in a[0]}) > 1
    for row in a[0]:
        ends = np.flatnonzero(row == 2)
        if ends.size:
            assert np.all(row[ends[0] + 1 :] == 0)
        assert np.all(row[1:][row[1:] != 0] != 1)  # no start token after position 0
