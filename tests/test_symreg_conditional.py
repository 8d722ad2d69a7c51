"""C-SymbolicGPT: control vectors, node-control layers (neutral control = the unconditional
decoder, other controls change it), cached decoding, training and save / load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax.train import TrainConfig
from symreg import conditional as cond
from symreg.checkpoint import load_pretrained, save_pretrained
from symreg.decoding import NeuralCandidateSource, SamplingConfig, sample_skeletons
from symreg.model import ModelConfig, SymbolicGPT, init_cache, make_points
from symreg.tokenizer import SkeletonTokenizer
from symreg.train import make_arrays, make_loss_fn

TOK = SkeletonTokenizer()
CFG = ModelConfig.preset("tiny", vocab_size=TOK.vocab_size, max_len=16, max_vars=2)
F = len(cond.CONTROL_FEATURES)


def _inputs(b=3, n=10, t=7, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(b, n, 3)).astype(np.float32)
    mask = np.ones((b, n), bool)
    tokens = rng.integers(3, TOK.vocab_size, size=(b, t)).astype(np.int32)
    return jnp.asarray(points), jnp.asarray(mask), jnp.asarray(tokens)


def test_control_vector_reads_the_nodes_of_a_skeleton():
    v = dict(zip(cond.CONTROL_FEATURES, cond.control_vector("C*sin(C*x1)+asin(x2)/x1**2")))
    assert v["sin"] == v["asin"] == v["div"] == v["pow"] == v["const"] == v["x1"] == v["x2"] == 1.0
    assert v["cos"] == v["exp"] == v["log"] == v["sqrt"] == v["x3"] == -1.0
    v = dict(zip(cond.CONTROL_FEATURES, cond.control_vector("asin(x12)")))
    assert v["sin"] == -1.0 and v["x1"] == -1.0  # asin is not sin, x12 is not x1
    with pytest.raises(ValueError, match="skeleton"):
        cond.control_vector("")


def test_neutral_control_is_exactly_the_unconditional_decoder():
    model = cond.CSymbolicGPT(CFG, rngs=nnx.Rngs(0))
    base = SymbolicGPT(CFG, rngs=nnx.Rngs(0))
    nnx.update(base, nnx.state(model.base))  # the same decoder weights
    # the control weights are random and non-zero; they still must not matter at c = 0
    assert float(jnp.abs(model.control.film.kernel[...]).max()) > 0
    points, mask, tokens = _inputs()
    want = base(points, mask, tokens)
    # CSymbolicGPT runs the base decoder (input_bias = U_in c = 0, FiLM hook h * 1 + 0): bit-identical
    np.testing.assert_array_equal(model(points, mask, tokens, cond.neutral_control(3)), want)
    np.testing.assert_array_equal(model(points, mask, tokens), want)
    z = base.encode(points, mask)
    cache_c, cache_b = init_cache(CFG, 3), init_cache(CFG, 3)
    for t in range(tokens.shape[1]):
        got, cache_c = model.decode(tokens[:, t : t + 1], z, cond.neutral_control(3), start=t, cache=cache_c)
        ref, cache_b = base.decode(tokens[:, t : t + 1], z, start=t, cache=cache_b)
        np.testing.assert_array_equal(got, ref)


def test_conditional_decode_is_the_base_decoder_with_input_bias_and_hook():
    model = cond.CSymbolicGPT(CFG, rngs=nnx.Rngs(4))
    points, mask, tokens = _inputs()
    c = np.random.default_rng(0).choice([-1.0, 0.0, 1.0], size=(3, F)).astype(np.float32)
    z = model.encode(points, mask)
    cin, film = model.control(c)
    want, _ = model.base.decode(tokens, z, input_bias=cin, hook=cond.film_hook, hook_state=film)
    np.testing.assert_array_equal(model.decode(tokens, z, c)[0], want)


def test_each_control_changes_the_output_per_row():
    model = cond.CSymbolicGPT(CFG, rngs=nnx.Rngs(1))
    points, mask, tokens = _inputs()
    c = np.zeros((3, F), np.float32)
    c[1, cond.CONTROL_FEATURES.index("sin")] = 1.0
    c[2, cond.CONTROL_FEATURES.index("exp")] = -1.0
    out = np.asarray(model(points, mask, tokens, c))
    ref = np.asarray(model(points, mask, tokens, cond.neutral_control(3)))
    np.testing.assert_allclose(out[0], ref[0], atol=1e-6)  # the neutral row is untouched
    assert np.abs(out[1] - ref[1]).max() > 1e-3 and np.abs(out[2] - ref[2]).max() > 1e-3
    c2 = c.copy()
    c2[1] = 0.0
    c2[1, cond.CONTROL_FEATURES.index("cos")] = 1.0
    assert np.abs(np.asarray(model(points, mask, tokens, c2))[1] - out[1]).max() > 1e-3
    with pytest.raises(ValueError, match="control must be"):
        model(points, mask, tokens, np.zeros((3, F + 1), np.float32))


def test_cached_decoding_matches_the_full_pass():
    model = cond.CSymbolicGPT(CFG, rngs=nnx.Rngs(2))
    points, mask, tokens = _inputs(b=2)
    c = np.stack([cond.control_vector("C*sin(x1)"), cond.control_vector("exp(x2)/x1")])
    z = model.encode(points, mask)
    full, _ = model.decode(tokens, z, c)
    cache = init_cache(CFG, 2)
    steps = []
    for t in range(tokens.shape[1]):
        logits, cache = model.decode(tokens[:, t : t + 1], z, c, start=t, cache=cache)
        steps.append(logits[:, 0])
    np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-4)


def test_sampling_and_candidate_source_use_the_control(tmp_path):
    model = cond.CSymbolicGPT(CFG, rngs=nnx.Rngs(3))
    X = np.linspace(-1, 1, 12)[:, None].astype(np.float32)
    points, mask = make_points([{"X": X, "y": np.sin(X[:, 0])}], CFG.max_vars)
    key = jax.random.key(0)
    greedy = SamplingConfig(method="greedy")
    a = sample_skeletons(model, points, mask, key, n_samples=2, sampling=greedy, control_BxF=cond.neutral_control(1))
    b = sample_skeletons(model.base, points, mask, key, n_samples=2, sampling=greedy)
    np.testing.assert_array_equal(a, b)  # neutral control samples what the base model samples
    with pytest.raises(ValueError, match="control must be"):
        sample_skeletons(model, points, mask, key, n_samples=2, control_BxF=np.zeros((2, F)))
    src = cond.ControlledSource(NeuralCandidateSource(model, TOK, n_samples=4, check_valid=False), None)
    assert isinstance(src.propose(X, np.sin(X[:, 0]), 4), list)
    save_pretrained(model, str(tmp_path / "m"))
    loaded, config = load_pretrained(str(tmp_path / "m"))
    assert config["architecture"] == "CSymbolicGPT" and isinstance(loaded, cond.CSymbolicGPT)
    x = _inputs()
    c = np.ones((3, F), np.float32)
    np.testing.assert_allclose(loaded(*x, c), model(*x, c), atol=1e-6)


def test_hide_controls_rates_and_loss_validation():
    c = jnp.ones((4000, F))
    h = np.asarray(cond.hide_controls(c, jax.random.key(0), p_hide=0.5, p_neutral=0.25))
    assert abs((h == 0).all(1).mean() - 0.25) < 0.03  # whole rows hidden
    assert abs((h != 0).mean() - 0.75 * 0.5) < 0.02  # entries kept
    with pytest.raises(ValueError, match="p_hide"):
        cond.make_conditional_loss_fn(p_hide=1.5)
    with pytest.raises(ValueError, match="1 skeletons for 2 token rows"):
        cond.add_controls({"tokens": np.zeros((2, 4))}, ["x1"])


def test_conditional_loss_is_the_base_loss_with_the_control():
    """One loss (symreg.train.make_loss_fn): with every control hidden, C-SymbolicGPT's loss and
    metrics are the base model's on the same weights."""
    model = cond.CSymbolicGPT(CFG, rngs=nnx.Rngs(5))
    points, mask, tokens = _inputs()
    batch = {"points": points, "mask": mask, "tokens": tokens, "control": jnp.ones((3, F))}
    key = jax.random.key(0)
    got = cond.make_conditional_loss_fn(p_hide=0.0, p_neutral=1.0)(model, batch, key)
    want = make_loss_fn()(model.base, batch, key)
    assert jax.tree.map(float, got) == jax.tree.map(float, want)
    shown = cond.make_conditional_loss_fn(p_hide=0.0, p_neutral=0.0)(model, batch, key)
    assert float(shown[0]) != float(want[0])


@pytest.mark.slow
def test_conditional_training_learns_to_use_the_control(tmp_path):
    """Two skeletons on identical points: only the control tells them apart, and after
    training the greedy sample follows it."""
    X = np.linspace(-2, 2, 20)[:, None].astype(np.float32)
    y = np.zeros(20, np.float32)  # same y: the points carry no information
    insts = [{"X": X, "y": y, "skeleton": s, "n_vars": 1} for s in ("sin(x1)", "exp(x1)")] * 8
    cfg = ModelConfig.preset("tiny", vocab_size=TOK.vocab_size, max_len=12, max_vars=1)
    arrays, kept = make_arrays(insts, TOK, max_len=12, max_vars=1)
    arrays = cond.add_controls(arrays, [insts[i]["skeleton"] for i in kept])
    tc = TrainConfig(workdir=str(tmp_path), steps=150, learning_rate=3e-3, checkpoint_every=150, progress=False)
    model = cond.train_conditional(cfg, arrays, tc, batch_size=16, p_hide=0.0, p_neutral=0.0).model
    src = NeuralCandidateSource(model, TOK, n_samples=1, sampling=SamplingConfig(method="greedy"))
    ctrls = np.stack([cond.control_vector("sin(x1)"), cond.control_vector("exp(x1)")])
    got = src.propose_many([(X, y), (X, y)], 1, controls=ctrls)
    assert got == [["sin(x1)"], ["exp(x1)"]]
