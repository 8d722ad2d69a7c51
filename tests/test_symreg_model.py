"""SymbolicGPT model invariants: T-net set invariance, causal decoder, tied output, config, the
decoder's conditioning arguments (``input_bias``, ``hook``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from symreg.model import ModelConfig, SymbolicGPT, init_cache, make_points

CFG = ModelConfig.preset("tiny", vocab_size=17, max_len=12, max_vars=2)


@pytest.fixture(scope="module")
def model():
    return SymbolicGPT(CFG, rngs=nnx.Rngs(0))


def _points(n=9, d=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (n, d)).astype(np.float32)
    return {"X": X, "y": np.sin(X[:, 0]) * 3 + X.sum(1) ** 2}


def test_tnet_invariant_to_point_order_and_padding(model):
    inst = _points()
    p, m = make_points([inst], CFG.max_vars)
    perm = np.random.default_rng(1).permutation(len(inst["y"]))
    shuffled = {"X": inst["X"][perm], "y": inst["y"][perm]}
    p2, m2 = make_points([shuffled], CFG.max_vars, n_points=25)  # permuted and 16 padding points
    # garbage in the padding must not matter either
    p2[:, len(inst["y"]) :] = 1e3
    z = model.encode(jnp.asarray(p), jnp.asarray(m))
    z2 = model.encode(jnp.asarray(p2), jnp.asarray(m2))
    assert z.shape == (1, CFG.embed)
    np.testing.assert_allclose(z, z2, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_tnet_batch_with_different_n_and_d(model):
    a, b = _points(n=5, d=1, seed=2), _points(n=11, d=2, seed=3)
    p, m = make_points([a, b], CFG.max_vars)
    z = model.encode(jnp.asarray(p), jnp.asarray(m))
    za = model.encode(*map(jnp.asarray, make_points([a], CFG.max_vars)))
    zb = model.encode(*map(jnp.asarray, make_points([b], CFG.max_vars)))
    np.testing.assert_allclose(z, jnp.concatenate([za, zb]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_vars"):
        make_points([_points(d=3)], CFG.max_vars)


def test_decoder_is_causal(model):
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (2, CFG.max_len)))
    z = jnp.asarray(rng.normal(size=(2, CFG.embed)), jnp.float32)
    logits, _ = model.decode(tokens, z)
    assert logits.shape == (2, CFG.max_len, CFG.vocab_size)
    changed = tokens.at[:, 6:].set((tokens[:, 6:] + 3) % CFG.vocab_size)
    logits2, _ = model.decode(changed, z)
    np.testing.assert_allclose(logits[:, :6], logits2[:, :6], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[:, 6:], logits2[:, 6:])


def test_decode_input_bias_and_hook(model):
    """No bias and the identity hook are exactly the plain decoder; a B x E bias is a shift of
    ``z``, a B x T x E one is added per position; a hook's change reaches the logits, in the
    full and the cached pass alike."""
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (2, 7)))
    z = jnp.asarray(rng.normal(size=(2, CFG.embed)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(2, CFG.embed)), jnp.float32)
    plain, _ = model.decode(tokens, z)

    def identity(i, h_in, h_out, state):
        return h_out, state

    same, _ = model.decode(tokens, z, input_bias=jnp.zeros_like(z), hook=identity, hook_state=jnp.zeros(()))
    np.testing.assert_array_equal(same, plain)
    np.testing.assert_array_equal(model.decode(tokens, z, input_bias=bias)[0], model.decode(tokens, z + bias)[0])
    per_pos = jnp.broadcast_to(bias[:, None], (2, 7, CFG.embed))
    np.testing.assert_allclose(
        model.decode(tokens, z, input_bias=per_pos)[0], model.decode(tokens, z + bias)[0], atol=1e-5
    )

    def shift(i, h_in, h_out, scale_L):
        return h_out + scale_L[i][None, None, :], scale_L

    scale = jnp.asarray(rng.normal(size=(CFG.n_layers, CFG.embed)), jnp.float32)  # not uniform: LayerNorm drops that
    shifted, _ = model.decode(tokens, z, hook=shift, hook_state=scale)
    assert np.abs(np.asarray(shifted - plain)).max() > 1e-3
    cache, steps = init_cache(CFG, 2), []
    for t in range(tokens.shape[1]):
        logits, cache = model.decode(
            tokens[:, t : t + 1], z, start=t, cache=cache, input_bias=bias, hook=shift, hook_state=scale
        )
        steps.append(logits[:, 0])
    full, _ = model.decode(tokens, z, input_bias=bias, hook=shift, hook_state=scale)
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4)


def test_output_projection_is_tied(model):
    # the only vocab-sized parameter is the token embedding W_t, reused as the output layer
    vocab_sized = [x.shape for x in jax.tree.leaves(nnx.state(model, nnx.Param)) if CFG.vocab_size in x.shape]
    assert vocab_sized == [(CFG.vocab_size, CFG.embed)]


def test_config_validation():
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(vocab_size=10, embed=30, n_heads=4)
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.preset("huge", vocab_size=10)
