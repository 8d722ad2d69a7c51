"""DyLoRA on whole models: every rank equals its merged model, frozen mode (PEFT files: test_peft.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sortedjax import peft as lora
from sortedjax import sharding
from sortedjax.models import llama
from sortedjax.models.mlp import MLPConfig, SortedMLP
from sortedjax.submodel import Pool, SubModel
from sortedjax.train import TrainConfig, make_train_step, train

CFG = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 8)))


def tiny_llama(**kw):
    return llama.Llama(llama.LlamaConfig(**CFG, **kw), rngs=nnx.Rngs(0))


def randomize_up(model, seed=3, scale=0.5):
    """Give every W_up random values, as if trained (fresh adapters are zero)."""
    for i, a in enumerate(lora.adapters(model).values()):
        a.up[...] = scale * jax.random.normal(jax.random.PRNGKey(seed + i), a.up.shape)


def lora_arrays(state):
    """{path: array} of the adapter weights in an nnx State."""
    flat = nnx.to_flat_state(state)
    return {k: np.asarray(v.get_value()) for k, v in flat if isinstance(v, lora.LoRAParam)}


def base_arrays(model):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {k: np.asarray(v.get_value()) for k, v in flat if not isinstance(v, lora.LoRAParam)}


@pytest.mark.slow
def test_every_rank_equals_merged_model_and_formula():
    model = tiny_llama()
    paths = lora.apply_dylora(model, ["q", "v"], r=4, alpha=8.0)
    assert paths == ["layers.layers.attn.q", "layers.layers.attn.v"]
    q = model.layers.layers.attn.q.lora
    assert q.down.shape == (2, 4, 32) and q.up.shape == (2, 32, 4)  # stacked: one adapter per layer
    assert q.down.get_metadata()["out_sharding"] == ("layers", "rank", "embed")
    assert q.up.get_metadata()["out_sharding"] == ("layers", "heads", "rank")
    assert not np.allclose(q.down[...][0], q.down[...][1])  # distinct random init per layer
    base = lora.merge(model, 4)(TOKENS)
    np.testing.assert_allclose(base, model(TOKENS), atol=1e-6)  # fresh adapters (W_up = 0) add nothing
    randomize_up(model)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda state, t, b: nnx.merge(graphdef, state)(t, sub=SubModel(rank=b)))
    outs = {}
    for b in range(1, 5):
        outs[b] = fwd(state, TOKENS, jnp.int32(b))
        np.testing.assert_allclose(outs[b], lora.merge(model, b)(TOKENS), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(model(TOKENS, sub=SubModel.of(rank=b)), outs[b], atol=1e-5, rtol=1e-5)
    assert fwd._cache_size() == 1  # one program serves every rank
    assert not np.allclose(outs[1], outs[4], atol=1e-3) and not np.allclose(outs[4], base, atol=1e-3)
    np.testing.assert_allclose(model(TOKENS), outs[4], atol=1e-5)  # rank None = r_max
    merged = lora.merge(model, 2)
    assert lora.adapters(merged) == {} and len(lora.adapters(model)) == 2  # the caller's model keeps its adapters
    assert nnx.graphdef(merged) == nnx.graphdef(tiny_llama())  # a plain model

    # one layer against the explicit formula: y = x W + (alpha/b) (x W_dw[:b]^T) W_up[:, :b]^T
    graphdef, state = nnx.split(model.layers.layers.attn.q)
    layer0 = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))
    x = jax.random.normal(jax.random.PRNGKey(7), (3, 5, 32))
    W, down, up = (np.asarray(v[...][0]) for v in (model.layers.layers.attn.q.kernel, q.down, q.up))
    for b in range(1, 5):
        want = np.einsum("bti,ihk->bthk", x, W) + (8.0 / b) * (np.asarray(x) @ down[:b].T @ up[:, :b].T).reshape(
            3, 5, 4, 8
        )
        np.testing.assert_allclose(layer0(x, rank=b), want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_multi_axis_inputs_and_outputs_merge():
    """o (2 input axes: heads x head_dim), down (mlp) and the unstacked lm_head."""
    model = tiny_llama()
    assert lora.apply_dylora(model, r".*(attn\.o|mlp\.down|lm_head)", r=3, alpha=6.0) == [
        "layers.layers.attn.o",
        "layers.layers.mlp.down",
        "lm_head",
    ]
    o = model.layers.layers.attn.o.lora
    assert o.down.shape == (2, 3, 32) and o.down.get_metadata()["out_sharding"] == ("layers", "rank", "heads")
    assert model.lm_head.lora.down.shape == (3, 32)
    randomize_up(model)
    sizes = dict(heads=2, width=40)
    for b in (1, 3):  # lm_head's adapter runs at the sub-model's rank like the layers'
        merged = lora.merge(model, b)
        np.testing.assert_allclose(
            model(TOKENS, sub=SubModel.of(rank=b, **sizes)),
            merged(TOKENS, sub=SubModel.of(**sizes)),
            atol=1e-5,
            rtol=1e-5,
        )


def test_bad_targets_and_ranks():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"\['qq'\] match no Linear module; Linear modules: .*layers.layers.attn.q"):
        lora.apply_dylora(model, ["q", "qq"])
    with pytest.raises(ValueError, match="regex 'attn' matches no Linear module"):
        lora.apply_dylora(model, "attn")
    lora.apply_dylora(model, ["attn.q"], r=8)
    with pytest.raises(ValueError, match="already have a LoRA adapter"):
        lora.apply_dylora(model, ["q"])
    for b in (0, 9):
        with pytest.raises(ValueError, match=f"rank {b} outside the allowed range 1..8"):
            model(TOKENS, sub=SubModel.of(rank=b))
    with pytest.raises(ValueError, match="rank 9 outside the allowed range 1..8"):
        lora.merge(model, 9)
    with pytest.raises(ValueError, match="r_min must be in 1..r=4"):
        lora.apply_dylora(model, ["k"], r=4, r_min=5)
    assert lora.rank_range(model) == (1, 8)
    dim = lora.rank_dim(model, "geometric", p=0.3)
    assert dim.support == tuple(range(1, 9)) and dim.probs[0] > dim.probs[-1]


def _frozen_setup(frozen):
    model = tiny_llama()
    lora.apply_dylora(model, ["q", "v"], r=4, alpha=8.0, frozen=frozen)
    randomize_up(model)
    graphdef, params, rest = nnx.split(model, lora.LoRAParam, ...)
    y = jax.random.randint(jax.random.PRNGKey(5), TOKENS.shape, 0, 50)
    pool = Pool({"rank": lora.rank_dim(model)})

    def loss_fn(m, batch, key):
        logits = m(batch["x"], sub=SubModel(rank=pool.sample(key).rank))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    return model, graphdef, params, rest, {"x": TOKENS, "y": y}, pool, loss_fn


@pytest.mark.slow
def test_frozen_mode_moves_only_the_sampled_rank():
    model, graphdef, params, rest, batch, pool, loss_fn = _frozen_setup(frozen=True)
    rank_of_key = lambda k: pool.sample(k).rank  # noqa: E731 - the loss draws the same rank from the same key
    tx = optax.adam(0.05)
    keys = [jax.random.PRNGKey(s) for s in range(40)]
    ranks = [int(rank_of_key(k)) for k in keys]
    keys = [keys[ranks.index(b)] for b in (2, 4, 1)]  # three steps at ranks 2, 4, 1
    for post in (lora.frozen_post_update(rank_of_key), None):
        step = jax.jit(make_train_step(graphdef, loss_fn, tx, post_update=post))
        p, opt = params, tx.init(params)
        moved_elsewhere = False
        for key, b in zip(keys, (2, 4, 1)):
            new, opt, _ = step(p, opt, (rest,), batch, key)
            for name, old in lora_arrays(p).items():
                cur = lora_arrays(new)[name]
                axis = -2 if name[-1] == "down" else -1
                other = np.delete(cur, b - 1, axis) != np.delete(old, b - 1, axis)
                assert not np.array_equal(np.take(cur, b - 1, axis), np.take(old, b - 1, axis))
                if post is not None:
                    assert not other.any(), (name, b)  # every other entry bit-identical
                moved_elsewhere |= bool(other.any())
            p = new
        assert moved_elsewhere == (post is None)  # without keep_only_rank, Adam momentum moves old ranks
    # gradient: only row / column b-1 of the adapters
    grads = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch, keys[0])[0])(params)
    for name, g in lora_arrays(grads).items():
        axis = -2 if name[-1] == "down" else -1
        assert np.abs(np.take(g, 1, axis)).sum() > 0 and np.all(np.delete(g, 1, axis) == 0)


@pytest.mark.slow
def test_unfrozen_gradient_reaches_ranks_up_to_b():
    model, graphdef, params, rest, batch, _, _ = _frozen_setup(frozen=False)
    b = 3

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(batch["x"], sub=SubModel.of(rank=b))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    grads = jax.grad(loss)(params)
    for name, g in lora_arrays(grads).items():
        axis = -2 if name[-1] == "down" else -1
        for i in range(4):
            row = np.take(g, i, axis)
            assert (np.abs(row).sum() > 0) == (i < b), (name, i)


@pytest.mark.slow
def test_train_updates_only_adapters_sharded_equals_single_device(tmp_path):
    """train(trainable=LoRAParam) with dropout + sampled ranks: base weights bit-identical, and a
    run on a 2x2 (fsdp x tensor) mesh equals the single-device run."""
    model = tiny_llama()
    lora.apply_dylora(model, ["q", "v", "o"], r=4, alpha=8.0, dropout=0.1)
    randomize_up(model)
    batch = {"x": TOKENS, "y": jax.random.randint(jax.random.PRNGKey(5), TOKENS.shape, 0, 50)}
    pool = Pool({"rank": lora.rank_dim(model)})

    def loss_fn(m, batch, key):
        lora.reseed(m, key)  # fresh dropout masks each step
        logits = m(batch["x"], sub=pool.sample(key))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    before_base, before_lora = base_arrays(model), lora_arrays(nnx.state(model))
    runs = []
    for mesh in (None, "fsdp:2,tensor:2"):
        cfg = TrainConfig(
            workdir=str(tmp_path / str(mesh)), steps=2, learning_rate=0.05, progress=False, log_every=1, donate=False
        )
        out = train(
            model,
            loss_fn,
            lambda step: batch,
            cfg,
            trainable=lora.LoRAParam,
            mesh=None if mesh is None else sharding.make_mesh(mesh),
        )
        runs.append((out.history, base_arrays(out.model), lora_arrays(nnx.state(out.model))))
    (hist, after_base, after_lora), (hist8, _, lora8) = runs
    assert before_base.keys() == after_base.keys() and len(before_base) > 10
    for k in before_base:
        np.testing.assert_array_equal(after_base[k], before_base[k])
    assert all(not np.array_equal(after_lora[k], before_lora[k]) for k in before_lora)
    np.testing.assert_allclose([h["loss"] for h in hist8], [h["loss"] for h in hist], rtol=1e-5)
    for k in after_lora:
        np.testing.assert_allclose(lora8[k], after_lora[k], atol=1e-5)


@pytest.mark.slow
def test_dropout_inside_layer_stack():
    model = tiny_llama()
    lora.apply_dylora(model, ["q", "v"], r=4, alpha=8.0, dropout=0.5)
    randomize_up(model)
    assert model.layers.layers.attn.q.lora.rng.key.shape == (2,)  # one dropout stream per stacked layer
    model.eval()
    np.testing.assert_allclose(model(TOKENS), lora.merge(model)(TOKENS), atol=1e-5, rtol=1e-5)
    model.train()
    a, b = model(TOKENS), model(TOKENS)  # the streams advance: new masks each call
    assert not np.allclose(a, b, atol=1e-4) and not np.allclose(a, lora.merge(model)(TOKENS), atol=1e-4)

    @nnx.jit
    def fwd(m, key):
        lora.reseed(m, key)
        return m(TOKENS)

    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(fwd(model, k1), fwd(model, k1))
    assert not np.allclose(fwd(model, k1), fwd(model, k2), atol=1e-4)

    # in the pure train step: masks come from the step key (reseed), so they differ per step
    def loss_fn(m, batch, key):
        lora.reseed(m, key)
        return jnp.mean(m(batch["x"], sub=SubModel.of(rank=3)) ** 2), {}

    graphdef, params, rest = nnx.split(model, lora.LoRAParam, ...)
    tx = optax.sgd(0.1)
    step = jax.jit(make_train_step(graphdef, loss_fn, tx))
    loss = [float(step(params, tx.init(params), (rest,), {"x": TOKENS}, k)[2]["loss"]) for k in (k1, k1, k2)]
    assert loss[0] == loss[1] != loss[2]


@pytest.mark.slow
def test_sorted_mlp_adapters_equal_merged_and_formula():
    model = SortedMLP(MLPConfig(in_dim=5, hidden=12, out_dim=3, num_blocks=2), rngs=nnx.Rngs(0))
    assert lora.apply_dylora(model, ["inp", "dense", "out"], r=4, alpha=2.0) == ["blocks.layers.dense", "inp", "out"]
    assert model.blocks.layers.dense.lora.down.shape == (2, 4, 12)
    randomize_up(model)
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 5))

    def dense(lin, i=None):
        w, d, u = lin.kernel[...], lin.lora.down[...], lin.lora.up[...]
        w, d, u, bias = (a if i is None else a[i] for a in (w, d, u, lin.bias[...]))
        return w + (2.0 / 4) * (u @ d).T, bias

    w, bias = dense(model.inp)
    h = jax.nn.relu(x @ w + bias[None, :])
    for i in range(2):
        w, bias = dense(model.blocks.layers.dense, i)
        h = jax.nn.relu(h @ w + bias[None, :])
    w, bias = dense(model.out)
    want = h @ w + bias[None, :]
    np.testing.assert_allclose(model(x), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(lora.merge(model)(x), want, atol=1e-5, rtol=1e-5)
    for b in (1, 2):  # the model passes sub.rank to every Linear
        lin = model.inp
        want_b = (
            x @ lin.kernel[...]
            + lin.bias[...][None, :]
            + (2.0 / b) * (x @ lin.lora.down[...][:b].T @ lin.lora.up[...][:, :b].T)
        )
        np.testing.assert_allclose(lin(x, rank=b), want_b, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(lora.merge(model, b).inp(x), want_b, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(
            model(x, SubModel.of(rank=b, width=7)), lora.merge(model, b)(x, SubModel.of(width=7)), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(ValueError, match="rank 5 outside the allowed range 1..4"):
        model(x, SubModel.of(rank=5))
