"""Algorithm 1 (sortedjax.methods.dylora): p_B, the shared per-step rank, frozen mode over several steps,
summation, evaluation at every rank, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sortedjax import peft as lora
from sortedjax.data import nlu
from sortedjax.methods import dylora
from sortedjax.methods.dylora import DyLoRAConfig
from sortedjax.models import encoder
from sortedjax.submodel import SubModel
from sortedjax.train import make_train_step

ECFG = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def tiny_encoder(num_labels=2):
    return encoder.Encoder(encoder.EncoderConfig(**ECFG, num_labels=num_labels), rngs=nnx.Rngs(0))


def batch(n=6, length=7, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "ids": jnp.asarray(rng.integers(5, 40, (n, length)), jnp.int32),
        "mask": jnp.ones((n, length), jnp.int32),
        "types": jnp.zeros((n, length), jnp.int32),
        "label": jnp.asarray(rng.integers(0, 2, n), jnp.float32),
    }


def lora_arrays(state):
    flat = nnx.to_flat_state(state)
    return {k: np.asarray(v.get_value()) for k, v in flat if isinstance(v, lora.LoRAParam)}


@pytest.mark.parametrize("distribution", ["uniform", "geometric"])
def test_p_b_sampling_frequencies_match_the_distribution(distribution):
    model = tiny_encoder()
    cfg = DyLoRAConfig(r_max=8, r_min=2, distribution=distribution, p=0.15)
    dylora.attach(model, cfg)
    pool = dylora.rank_pool(model, cfg)
    ranks = np.asarray(jax.jit(jax.vmap(lambda k: pool.sample(k).rank))(jax.random.split(jax.random.PRNGKey(0), 40000)))
    support = np.arange(2, 9)
    want = (
        np.ones(7) / 7
        if distribution == "uniform"
        else 0.15 * 0.85 ** np.arange(7) / np.sum(0.15 * 0.85 ** np.arange(7))
    )
    freq = np.array([np.mean(ranks == b) for b in support])
    assert set(np.unique(ranks)) == set(support)  # never below r_min or above r_max
    np.testing.assert_allclose(freq, want, atol=0.01)
    if distribution == "geometric":
        assert freq[0] > 0.2 and freq[-1] < 0.1  # small ranks favoured: p(2) = 0.23, p(8) = 0.09


def test_one_rank_per_step_shared_by_every_layer_and_summation():
    model = tiny_encoder()
    cfg = DyLoRAConfig(r_max=4, alpha=8.0, target_modules=("query", "value"))  # Hugging Face names
    assert dylora.attach(model, cfg) == ["layers.layers.attn.q", "layers.layers.attn.v"]
    for a in lora.adapters(model).values():  # as if trained
        a.up[...] = 0.3 * jax.random.normal(jax.random.PRNGKey(1), a.up.shape)
    pool = dylora.rank_pool(model, cfg)
    b = batch()
    seen = []

    def task_loss(m, bt, sub):
        seen.append(sub.rank)
        return nlu.task_loss(m, bt, sub)

    key = jax.random.PRNGKey(3)
    loss, metrics = dylora.make_loss(task_loss, pool, "stochastic")(model, b, key)
    assert len(seen) == 1  # one draw per step: every adapted layer runs the same rank
    rank = int(pool.sample(key).rank)
    assert int(metrics["sub_rank"]) == rank
    np.testing.assert_allclose(loss, nlu.task_loss(model, b, SubModel.of(rank=rank))[0], rtol=1e-6)
    total, _ = dylora.make_loss(nlu.task_loss, pool, "summation")(model, b, key)
    want = sum(float(nlu.task_loss(model, b, SubModel.of(rank=r))[0]) for r in range(1, 5))
    np.testing.assert_allclose(total, want, rtol=1e-5)
    # the adapted model at rank r equals the merged dense model
    for r in (1, 3):
        np.testing.assert_allclose(
            model(b["ids"], sub=SubModel.of(rank=r)), lora.merge(model, r)(b["ids"]), atol=1e-5, rtol=1e-5
        )


def test_frozen_mode_changes_only_row_and_column_b_over_several_steps():
    model = tiny_encoder()
    cfg = DyLoRAConfig(r_max=4, frozen=True)
    dylora.attach(model, cfg)
    for a in lora.adapters(model).values():
        a.up[...] = 0.3 * jax.random.normal(jax.random.PRNGKey(2), a.up.shape)
    pool = dylora.rank_pool(model, cfg)
    graphdef, params, rest = nnx.split(model, dylora.trainable(), ...)
    tx = optax.adam(0.05)
    step = jax.jit(
        make_train_step(graphdef, dylora.make_loss(nlu.task_loss, pool), tx, post_update=dylora.post_update(pool, cfg))
    )
    opt = tx.init(params)
    keys = [jax.random.PRNGKey(s) for s in range(6)]
    ranks = [int(pool.sample(k).rank) for k in keys]
    assert len(set(ranks)) >= 3  # several different ranks over the steps
    b = batch()
    for key, r in zip(keys, ranks):
        new, opt, metrics = step(params, opt, (rest,), b, key)
        assert int(metrics["sub_rank"]) == r
        old_a, new_a = lora_arrays(params), lora_arrays(new)
        for name, old in old_a.items():
            axis = -2 if name[-1] == "down" else -1
            cur = new_a[name]
            np.testing.assert_array_equal(np.delete(cur, r - 1, axis), np.delete(old, r - 1, axis))
            assert not np.array_equal(np.take(cur, r - 1, axis), np.take(old, r - 1, axis)), (name, r)
        params = new


def test_lora_config_truncation_and_bad_input():
    assert DyLoRAConfig.lora(4).r_min == 4 and not DyLoRAConfig.lora(4).is_dynamic
    for kw, msg in [
        (dict(r_min=3, r_max=2), "r_min <= r_max"),
        (dict(distribution="zipf"), "distribution 'zipf' unknown; allowed: \\('uniform', 'geometric'\\)"),
        (dict(p=0.0), "p must be in"),
        (dict(objective="sum"), "objective 'sum' unknown"),
        (dict(frozen=True, objective="summation"), "frozen mode"),
        (dict(target_modules=()), "target_modules is empty"),
    ]:
        with pytest.raises(ValueError, match=msg):
            DyLoRAConfig(**kw)
    model = tiny_encoder()
    with pytest.raises(ValueError, match=r"\['qq'\] match no Linear module; Linear modules: .*attn.q"):
        dylora.attach(model, DyLoRAConfig(target_modules=("qq",)))
    dylora.attach(model, DyLoRAConfig.lora(4))
    with pytest.raises(ValueError, match="cover ranks 4..4 but the config says 1..8"):
        dylora.rank_pool(model, DyLoRAConfig())
    # a LoRA of rank 4 is evaluated by truncation at ranks 1..4 (below the rank it trained)
    got = dylora.evaluate_ranks(model, lambda m, sub: int(sub.rank), [1, 2, 4])
    assert got == {1: 1, 2: 2, 4: 4}
    with pytest.raises(ValueError, match=r"ranks \[5\] outside the allowed range 1..4"):
        dylora.evaluate_ranks(model, lambda m, sub: 0, [2, 5])
