"""Self-speculative and early-exit decoding: exactness, the sampled distribution, one compilation,
argument checks (issue 12); the generate boundary's id and length checks (issue 15)."""

import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats as sps

from sortedjax import decoding, nn
from sortedjax.decoding import early_exit, speculative
from sortedjax.models import llama

PROMPTS = [[5, 9, 33, 7, 12, 40], [17, 3, 22], [8, 8, 61, 30]]


def tiny(vocab=64, layers=4, scale=1.0, seed=0, **kw):
    cfg = llama.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **kw,
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(seed))
    if scale != 1.0:  # peaked distributions that differ between exits
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p: p * scale if p.ndim > 1 else p, state))
    return model


@pytest.fixture(scope="module")
def model():
    return tiny(scale=8.0)


@pytest.mark.parametrize(
    "draft_exit,num_draft,adaptive", [(1, 1, False), (2, 3, False), (3, 8, False), (1, 4, True), (2, 2, True)]
)
def test_greedy_speculative_equals_greedy_ragged_and_stop(model, draft_exit, num_draft, adaptive):
    plain = decoding.generate(model, PROMPTS, max_new_tokens=13)
    kw = dict(max_new_tokens=13, draft_exit=draft_exit, num_draft=num_draft, adaptive=adaptive)
    spec, st = decoding.speculative_generate(model, PROMPTS, **kw)
    np.testing.assert_array_equal(spec, plain)
    assert 1.0 <= st["tokens_per_verify"] <= num_draft + 1 + 2 * adaptive * 4
    assert st["acceptance_rate"] + st["rejection_ratio"] == pytest.approx(1.0)
    stop = (int(plain[1, 4]), int(plain[2, 7]))
    plain_stop = decoding.generate(model, PROMPTS, max_new_tokens=13, stop_tokens=stop, pad_id=1)
    spec_stop, _ = decoding.speculative_generate(model, PROMPTS, stop_tokens=stop, pad_id=1, **kw)
    np.testing.assert_array_equal(spec_stop, plain_stop)
    assert (plain_stop == 1).any()  # the stop tokens did cut rows


@pytest.mark.slow
def test_rows_accept_their_own_prefix(model):
    """Each row advances by its own accepted count: a batch takes as many rounds as its slowest
    row alone (in lockstep, every round would advance by the batch's smallest count)."""
    prompts = [[5, 9, 33, 7, 12, 40], [17, 3, 22, 8, 8, 61]]
    kw = dict(max_new_tokens=24, draft_exit=2, num_draft=4)
    batch, st = decoding.speculative_generate(model, prompts, **kw)
    alone = [decoding.speculative_generate(model, [p], **kw) for p in prompts]
    np.testing.assert_array_equal(batch, np.concatenate([a for a, _ in alone]))
    rounds = [s["verifies"] for _, s in alone]
    assert rounds[0] != rounds[1] and st["verifies"] == max(rounds)


def exact_joint(model, prompt, n, V):
    """p(x_1..x_n | prompt) for every sequence, by full forward passes."""
    probs = {}
    for seq in itertools.product(range(V), repeat=n - 1):
        logits = model(jnp.asarray([prompt + list(seq)]))[0, len(prompt) - 1 :]
        p = np.asarray(jax.nn.softmax(logits, -1), np.float64)
        head = np.prod([p[i, s] for i, s in enumerate(seq)])
        for last in range(V):
            probs[seq + (last,)] = head * p[n - 1, last]
    return probs


def chi2(draws, probs):
    keys = sorted(probs)
    index = {k: i for i, k in enumerate(keys)}
    counts = np.bincount([index[tuple(int(x) for x in row)] for row in draws], minlength=len(keys))
    expected = np.array([probs[k] for k in keys]) * len(draws)
    return sps.chisquare(counts, expected / expected.sum() * len(draws)).pvalue


@pytest.mark.slow
def test_sampled_speculative_matches_the_full_models_distribution():
    """Tiny vocabulary, 3 new tokens (the first from the prefill, two from one round with a
    1-layer draft): the joint distribution of the 64 sequences equals the full model's."""
    V, n, rows = 4, 3, 6000
    m = tiny(vocab=V, layers=3, scale=6.0, seed=1)
    prompt = [1, 2, 3, 0]
    probs = exact_joint(m, prompt, n, V)
    batch = np.asarray([prompt] * rows)
    kw = dict(max_new_tokens=n, temperature=1.0, seed=3)
    spec, st = decoding.speculative_generate(m, batch, draft_exit=1, num_draft=2, **kw)
    assert 0.1 < st["acceptance_rate"] < 0.95  # the draft really differs from the full model
    assert chi2(spec, probs) > 1e-3
    # the test has power: drafting without verification (the 1-layer model's samples) fails it
    draft_only = decoding.generate(m, batch, exit_layer=1, **kw)
    assert chi2(draft_only, probs) < 1e-6


def test_early_exit_above_one_equals_greedy(model):
    plain = decoding.generate(model, PROMPTS, max_new_tokens=10, stop_tokens=(7,))
    out, used = decoding.early_exit_generate(
        model, PROMPTS, max_new_tokens=10, exits=(1, 2, 3), threshold=(1.5, 1.01, 2.0), stop_tokens=(7,)
    )
    np.testing.assert_array_equal(out, plain)
    assert set(np.unique(used)) <= {0, 4}


def test_thesis_thresholds_scale_by_depth():
    assert early_exit.thesis_thresholds((12, 20, 36), 40) == pytest.approx((0.95, 0.9, 0.7))
    assert early_exit.thesis_thresholds((3, 4, 5, 6, 7, 8, 9), 10) == pytest.approx(
        (0.95, 0.95, 0.9, 0.9, 0.8, 0.8, 0.7)
    )
    assert early_exit.thesis_thresholds((1, 10), 10) == pytest.approx((0.95, 0.7))  # clamped at the ends


def test_one_compilation_for_any_draft_exit_k_threshold(model):
    prompt = np.array([[5, 9, 33, 7], [1, 2, 3, 4]])
    decoding.speculative_generate(model, prompt, max_new_tokens=6, draft_exit=1, num_draft=2)
    decoding.early_exit_generate(model, prompt, max_new_tokens=6, exits=(1,), threshold=0.5)
    sizes = speculative.speculate_loop._cache_size(), early_exit.early_exit_loop._cache_size()
    for e, k, a, t in [(2, 1, False, 0.0), (3, 8, True, 0.0), (4, 5, False, 0.8), (1, 4, True, 1.2)]:
        decoding.speculative_generate(
            model, prompt + 1, max_new_tokens=9, draft_exit=e, num_draft=k, adaptive=a, temperature=t, top_k=3
        )
    for exits, thr in [((1, 2, 3), 0.9), ((2,), None), ((3, 4), (0.2, 0.3)), ((1, 3), 1.5)]:
        decoding.early_exit_generate(model, prompt + 2, max_new_tokens=9, exits=exits, threshold=thr)
    assert (speculative.speculate_loop._cache_size(), early_exit.early_exit_loop._cache_size()) == sizes


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="num_draft must be in 1..max_draft=8, got 0"):
        decoding.speculative_generate(model, PROMPTS, max_new_tokens=4, draft_exit=2, num_draft=0)
    with pytest.raises(ValueError, match="num_draft must be in 1..max_draft=8, got 9"):
        decoding.speculative_generate(model, PROMPTS, max_new_tokens=4, draft_exit=2, num_draft=9)
    with pytest.raises(ValueError, match=r"depth 5 outside the allowed range 1\.\.4"):
        decoding.speculative_generate(model, PROMPTS, max_new_tokens=4, draft_exit=5)
    with pytest.raises(ValueError, match="exits must name at least one layer"):
        decoding.early_exit_generate(model, PROMPTS, max_new_tokens=4, exits=(), threshold=0.9)
    for bad in (0, 5):
        with pytest.raises(ValueError, match=rf"depth {bad} outside the allowed range 1\.\.4"):
            decoding.early_exit_generate(model, PROMPTS, max_new_tokens=4, exits=(1, bad), threshold=0.9)
    with pytest.raises(ValueError, match="threshold has 1 values for 2 exits"):
        decoding.early_exit_generate(model, PROMPTS, max_new_tokens=4, exits=(1, 2), threshold=(0.9,))


def test_ids_outside_the_vocabulary_and_long_generation(model):
    for fn in (
        lambda p: decoding.generate(model, p, max_new_tokens=2),
        lambda p: decoding.speculative_generate(model, p, max_new_tokens=2, draft_exit=1),
        lambda p: decoding.early_exit_generate(model, p, max_new_tokens=2, exits=(1,)),
    ):
        with pytest.raises(ValueError, match=r"token id 64 outside the vocabulary: allowed 0\.\.63"):
            fn([[1, 64, 2]])
        with pytest.raises(ValueError, match=r"token id -3 outside the vocabulary: allowed 0\.\.63"):
            fn([[1, -3, 2]])
    with pytest.warns(UserWarning, match="past max_position_embeddings=64"):
        decoding.generate(model, [[1, 2, 3]], max_new_tokens=62)


def test_per_row_cache_write_equals_scalar_write():
    cache = nn.KVCache.create(2, 3, 8, 1, 2)
    k = jnp.arange(3 * 2 * 1 * 2, dtype=jnp.float32).reshape(3, 2, 1, 2)
    a, _, _ = cache.write(1, 4, k, -k)
    b, _, _ = cache.write(1, jnp.array([4, 4, 4]), k, -k)
    np.testing.assert_array_equal(a.k, b.k)
    np.testing.assert_array_equal(a.attention_mask(4, 2), b.attention_mask(jnp.array([4, 4, 4]), 2))
    c, _, _ = cache.write(1, jnp.array([0, 3, 7]), k, -k)  # row 2's second entry falls off the end
    np.testing.assert_array_equal(c.k[1, 1, 3:5], k[1])
    np.testing.assert_array_equal(c.k[1, 2, 7], k[2, 0])
    mask = c.attention_mask(jnp.array([0, 3, 7]), 2)
    assert mask.shape == (3, 2, 8) and mask[1, 1].sum() == 5 and mask[0, 0].sum() == 1


def _bench_models():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "dynamic_inference_model.py"
    spec = importlib.util.spec_from_file_location("dynamic_inference_model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # trains twice (a few steps each, compiled)
def test_benchmark_model_is_soft_trained_once_then_cached(tmp_path):
    dm = _bench_models()
    spec = dm.BenchModel(layers=2, hidden=16, heads=2, steps=3, batch_size=4, docs=40)
    assert spec.exits == (1, 2) and dm.MODELS["b_deep"].exits == (6, 9, 12, 15, 18, 21, 24)
    assert spec.key() != dm.BenchModel(layers=2, hidden=16, heads=2, steps=4, batch_size=4, docs=40).key()
    m1, tok, held_out, rec1 = dm.load_or_train("t", spec, cache=str(tmp_path))
    assert not rec1["cached"] and set(rec1["final_metrics"]) >= {"loss@1", "loss@2"}
    m2, _, _, rec2 = dm.load_or_train("t", spec, cache=str(tmp_path))
    assert rec2["cached"]
    for a, b in zip(jax.tree.leaves(nnx.state(m1, nnx.Param)), jax.tree.leaves(nnx.state(m2, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, _, _, rec3 = dm.load_or_train("t", spec, cache=str(tmp_path), retrain=True)
    assert not rec3["cached"]
    p = dm.prompts(tok, held_out, 3, 5)
    assert p.shape == (3, 5) and (p[:, 0] == tok.bos_token_id).all()
    with pytest.raises(ValueError, match="hidden 15 must be a multiple of heads 2"):
        dm.BenchModel(layers=2, hidden=15, heads=2, steps=1)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        dm.BenchModel(layers=2, hidden=16, heads=2, steps=0)
    with pytest.raises(ValueError, match="held-out documents have 500 tokens"):
        dm.prompts(tok, held_out, 2, 500)
