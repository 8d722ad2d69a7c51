"""SoFT / SFT / SFT+ICT losses: SoFT is the mean of per-exit losses, sharded == single device,
resume after an interruption, SFT+ICT trains only the heads, bad exits are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sortedjax import sharding
from sortedjax.methods import soft
from sortedjax.models import llama
from sortedjax.train import TrainConfig, train

CFG = llama.LlamaConfig(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def batch(seed=0, B=8, L=12):
    rng = np.random.default_rng(seed)
    toks = rng.integers(3, 50, (B, L + 1)).astype(np.int32)
    mask = np.zeros((B, L), np.float32)
    for b in range(B):  # prompt of 4..7 tokens, response of 2..4 tokens, then padding
        p, r = rng.integers(4, 8), rng.integers(2, 5)
        mask[b, p - 1 : p - 1 + r] = 1.0
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask}


def one_by_one(model, b, exits, own=False):
    out = []
    for j, e in enumerate(exits):
        if own:
            h = model.hidden_states(jnp.asarray(b["inputs"]), (e,))[0]
            logits = model.logits_from_hidden(h, j)
        else:
            logits = model(jnp.asarray(b["inputs"]), exit_layer=e)
        lp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(lp, jnp.asarray(b["targets"])[..., None], -1)[..., 0]
        out.append(float((nll * b["mask"]).sum() / b["mask"].sum()))
    return np.array(out)


def test_default_exits_and_bad_exits():
    assert soft.default_exits(40) == (12, 16, 20, 24, 28, 32, 36, 40)
    assert soft.default_exits(8) == (2, 3, 4, 5, 6, 7, 8)
    assert soft.parse_exits("4,2", 4) == (2, 4)
    with pytest.raises(ValueError, match="exit 9 is outside the model's depth: allowed 1..8"):
        soft.parse_exits("2,9", 8)
    with pytest.raises(ValueError, match="'x'"):
        soft.parse_exits("2,x", 8)
    with pytest.raises(ValueError, match="mode 'bogus'"):
        soft.SoftConfig(mode="bogus", exits=(2,), num_layers=4)


@pytest.mark.parametrize("response_len", [None, 4])
def test_soft_loss_is_mean_of_exit_losses(response_len):
    model = llama.Llama(CFG, rngs=nnx.Rngs(0))
    b = batch()
    exits = (1, 2, 3, 4)
    cfg = soft.SoftConfig(mode="soft", exits=exits, num_layers=4, response_len=response_len)
    loss, metrics = jax.jit(lambda m, x: soft.make_loss(cfg)(m, x, None))(model, jax.tree.map(jnp.asarray, b))
    ref = one_by_one(model, b, exits)
    np.testing.assert_allclose([metrics[f"loss@{e}"] for e in exits], ref, rtol=1e-5)
    np.testing.assert_allclose(loss, ref.mean(), rtol=1e-5)
    sft_loss, _ = soft.make_loss(soft.SoftConfig(mode="sft", exits=exits, num_layers=4, response_len=response_len))(
        model, jax.tree.map(jnp.asarray, b), None
    )
    np.testing.assert_allclose(sft_loss, ref[-1], rtol=1e-5)


def test_soft_gradient_equals_mean_of_exit_gradients():
    model = llama.Llama(CFG, rngs=nnx.Rngs(1))
    b = jax.tree.map(jnp.asarray, batch(1))
    cfg = soft.SoftConfig(mode="soft", exits=(2, 4), num_layers=4, response_len=4)

    @nnx.jit
    def grads(m):
        g = nnx.grad(lambda m: soft.make_loss(cfg)(m, b, None)[0])(m)
        c2, c4 = (soft.SoftConfig(mode="extracted", exits=(e,), num_layers=4, remat=False) for e in (2, 4))
        g2 = nnx.grad(lambda m: soft.make_loss(c2)(m, b, None)[0])(m)
        g4 = nnx.grad(lambda m: soft.make_loss(c4)(m, b, None)[0])(m)
        return g, jax.tree.map(lambda x, y: (x + y) / 2, g2, g4)

    g, want = grads(model)
    for a, w in zip(jax.tree.leaves(g), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-6)


def _run(tmp_path, name, mesh, steps=3, data=None, mode="soft"):
    model = llama.Llama(CFG, rngs=nnx.Rngs(0))
    cfg = soft.SoftConfig(mode=mode, exits=(2, 3, 4), num_layers=4, response_len=4)
    tc = TrainConfig(
        workdir=str(tmp_path / name), steps=steps, learning_rate=3e-3, checkpoint_every=100, log_every=1, progress=False
    )
    return train(model, soft.make_loss(cfg), data or (lambda s: batch(s)), tc, mesh=mesh)


def _params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("single"), "one", None)


@pytest.mark.slow
def test_sharded_step_equals_single_device(tmp_path, single_run):
    mesh = sharding.make_mesh("8")
    one = single_run
    eight = _run(tmp_path, "eight", mesh)
    emb = nnx.state(eight.model, nnx.Param)["embed"]["embedding"].get_value()
    assert len(emb.sharding.device_set) == 8  # parameters really are sharded
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), _params(one.model), _params(eight.model)
    )
    np.testing.assert_allclose([h["loss"] for h in one.history], [h["loss"] for h in eight.history], rtol=1e-5)


@pytest.mark.slow
def test_resume_after_interruption(tmp_path, single_run):
    full = single_run
    state = {"raised": False}

    def flaky(step):
        if step == 2 and not state["raised"]:
            state["raised"] = True
            raise KeyboardInterrupt
        return batch(step)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", None, steps=3, data=flaky)
    again = _run(tmp_path, "resumed", None, steps=3, data=flaky)
    assert again.resumed_from == 2 and again.step == 3
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), _params(full.model), _params(again.model)
    )


def test_sft_ict_changes_only_heads(tmp_path):
    sft_model = llama.Llama(CFG, rngs=nnx.Rngs(0))
    llama.save_pretrained(sft_model, str(tmp_path / "sft"))
    model = llama.from_pretrained(str(tmp_path / "sft"), exit_head_layers=(2, 3))
    # heads start as copies of the shared head, so before training the exits agree
    b = batch()
    np.testing.assert_allclose(one_by_one(model, b, (2, 3), own=True), one_by_one(sft_model, b, (2, 3)), rtol=1e-5)
    before = _params(model)
    cfg = soft.SoftConfig(mode="sft_ict", exits=(2, 3), num_layers=4, response_len=4)
    tc = TrainConfig(workdir=str(tmp_path / "ict"), steps=6, learning_rate=3e-3, log_every=1, progress=False)
    res = train(model, soft.make_loss(cfg), lambda s: batch(0), tc, trainable=soft.head_filter())
    after = _params(res.model)
    changed = {
        k
        for k in before
        if not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before[k]), jax.tree.leaves(after[k])))
    }
    assert changed == {"exit_norm", "exit_head"}
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    with pytest.raises(ValueError, match="drop 4"):
        soft.SoftConfig(mode="sft_ict", exits=(2, 4), num_layers=4)
