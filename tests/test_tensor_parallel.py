"""The ``tensor`` mesh axis: a LLaMA SoFT step on data:2,fsdp:2,tensor:2 equals the one-device step;
activations and the KV cache carry logical sharding names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sortedjax import sharding as shd
from sortedjax.methods import soft
from sortedjax.models.llama import Llama, LlamaConfig
from sortedjax.train import TrainConfig, make_optimizer, make_train_step

CFG = LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
)  # fmt: skip


def _batch():
    rng = np.random.default_rng(0)
    tok = rng.integers(1, 64, (8, 13)).astype(np.int32)
    mask = (np.arange(12)[None] >= 6).astype(np.float32).repeat(8, 0)
    return {"inputs": tok[:, :-1], "targets": tok[:, 1:], "mask": mask}


def _step(mesh):
    model = Llama(CFG, rngs=nnx.Rngs(0))
    graphdef, params, *rest = nnx.split(model, nnx.Param, ...)
    rest = tuple(rest)
    # SGD with lr 1: new params = params - grads, so the comparison checks the gradients themselves
    tx = make_optimizer(TrainConfig(workdir="", steps=1, learning_rate=1.0, optimizer="sgd"))
    step = make_train_step(graphdef, soft.make_loss(soft.SoftConfig(mode="soft", exits=(1, 2), num_layers=2)), tx)
    key = jax.random.PRNGKey(0)
    if mesh is None:
        p, _, m = jax.jit(step)(params, tx.init(params), rest, _batch(), key)
        return p, m, None
    p_s, o_s, r_s, rep = shd.train_shardings(tx, params, rest, mesh)
    params, rest = jax.device_put(params, p_s), jax.device_put(rest, r_s)
    opt = jax.jit(tx.init, out_shardings=o_s)(params)
    jstep = jax.jit(step, in_shardings=(p_s, o_s, r_s, None, rep), out_shardings=(p_s, o_s, rep))
    with shd.use_mesh(mesh):
        text = jstep.lower(params, opt, rest, shd.shard_batch(_batch(), mesh), key).as_text()
        p, _, m = jstep(params, opt, rest, shd.shard_batch(_batch(), mesh), key)
    return p, m, text


@pytest.mark.slow
def test_tensor_axis_step_equals_single_device():
    mesh = shd.make_mesh("data:2,fsdp:2,tensor:2")
    p1, m1, _ = _step(None)
    p8, m8, text = _step(mesh)
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    q = nnx.state(Llama(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    mlp = shd.state_shardings(q, mesh)["layers"]["layers"]["mlp"]["up"]["kernel"].get_value()
    assert mlp.spec == P(None, "fsdp", "tensor")  # weights: FSDP on embed, tensor on the MLP width
    assert "sharding_constraint" in text  # activations are constrained inside the step


def test_activation_and_cache_names():
    mesh = shd.make_mesh("data:2,fsdp:2,tensor:2")
    x = jnp.zeros((4, 6, 32))
    assert shd.constrain(x, shd.ACT_BxLxD) is x  # no mesh set: unchanged
    with shd.use_mesh(mesh):
        y = jax.jit(lambda v: shd.constrain(v * 2, shd.ACT_BxLxD))(x)
        logits = jax.jit(lambda v: shd.constrain(v, ("act_batch", "act_length", "act_vocab")))(jnp.zeros((4, 6, 64)))
        cache = Llama(CFG, rngs=nnx.Rngs(0)).init_cache(4, 8)
    assert _spec(y) == (("data", "fsdp"), None, None)
    assert _spec(logits) == (("data", "fsdp"), None, "tensor")
    assert _spec(cache.k) == (None, ("data", "fsdp"), None, "tensor", None)


def _spec(a):
    s = tuple(a.sharding.spec)
    return s + (None,) * (a.ndim - len(s))


@pytest.mark.parametrize("bad", ["data:2,fsdp:2,tensr:2", "tensor:0"])
def test_bad_mesh_spec_raises(bad):
    with pytest.raises(ValueError, match="mesh axis"):
        shd.parse_mesh_spec(bad)
