"""Our Flax NNX LLaMA equals transformers' PyTorch LlamaForCausalLM on the same checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from sortedjax import sharding
from sortedjax.models import llama

LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}


def save_hf(tmp_path, seed=0, **kw):
    base = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(kw)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base)).eval()
    with torch.no_grad():  # norms start at 1; randomize them so the test sees their weights
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def torch_logits(model, tokens, mask=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(tokens), **kw).logits.numpy()


CASES = {
    "gqa_untied": {},
    "tied_mha": dict(tie_word_embeddings=True, num_key_value_heads=4),
    "llama3_rope": dict(rope_parameters=LLAMA3, head_dim=16),
    "mqa": dict(num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1234.0}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path, case):
    ref = save_hf(tmp_path, **CASES[case])
    model = llama.from_pretrained(str(tmp_path))
    tokens = np.random.default_rng(0).integers(0, 97, (2, 40))
    np.testing.assert_allclose(model(jnp.asarray(tokens)), torch_logits(ref, tokens), atol=1e-4, rtol=1e-4)


def test_padded_batch_matches_transformers(tmp_path):
    ref = save_hf(tmp_path)
    model = llama.from_pretrained(str(tmp_path))
    tokens = np.random.default_rng(1).integers(3, 97, (2, 12))
    mask = np.ones((2, 12), np.int64)
    mask[1, 8:] = 0  # right padding: HF positions are arange, so pass those explicitly
    pos = np.broadcast_to(np.arange(12), (2, 12))
    ours = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask), positions=jnp.asarray(pos))
    theirs = torch_logits(ref, tokens, mask)
    np.testing.assert_allclose(ours[mask.astype(bool)], theirs[mask.astype(bool)], atol=1e-4, rtol=1e-4)


def test_traced_exit_one_program_and_hidden_states(tmp_path):
    save_hf(tmp_path, num_hidden_layers=4)
    model = llama.from_pretrained(str(tmp_path))
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 10)))

    @jax.jit
    def f(state, tokens, n):
        return nnx.merge(graphdef, state)(tokens, exit_layer=n)

    outs = [f(state, tokens, jnp.int32(n)) for n in (1, 2, 3, 4)]
    assert f._cache_size() == 1
    np.testing.assert_allclose(outs[-1], model(tokens), atol=1e-5)
    h_E = model.hidden_states(tokens, exits=(1, 3))
    assert h_E.shape == (2, 2, 10, 32)
    for j, n in enumerate((1, 3)):
        np.testing.assert_allclose(model.logits_from_hidden(h_E[j]), outs[n - 1], atol=1e-5)
        np.testing.assert_allclose(model(tokens, exit_layer=n), outs[n - 1], atol=1e-5)


def test_layers_past_exit_are_not_computed(tmp_path):
    save_hf(tmp_path)
    model = llama.from_pretrained(str(tmp_path))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 97, (1, 6)))
    before = model(tokens, exit_layer=2)
    model.layers.layers.attn.q.kernel[...] = model.layers.layers.attn.q.kernel[...].at[2].set(jnp.nan)  # poison layer 3
    np.testing.assert_array_equal(model(tokens, exit_layer=2), before)
    assert np.isnan(np.asarray(model(tokens))).all()


def test_sharded_load_equals_single_device(tmp_path):
    save_hf(
        tmp_path, hidden_size=64, intermediate_size=128, num_attention_heads=8, num_key_value_heads=4, vocab_size=96
    )
    mesh = sharding.make_mesh("data:1,fsdp:4,tensor:2")
    sharded = llama.from_pretrained(str(tmp_path), mesh=mesh)
    assert sharded.layers.layers.mlp.gate.kernel[...].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor"
    )
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 96, (2, 8)))
    np.testing.assert_allclose(
        sharded(tokens, exit_layer=2), llama.from_pretrained(str(tmp_path))(tokens, exit_layer=2), atol=1e-5
    )


def test_bfloat16_close_to_float32(tmp_path):
    save_hf(tmp_path)
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 97, (1, 8)))
    m16 = llama.from_pretrained(str(tmp_path), dtype="bfloat16")
    assert m16.layers.layers.attn.q.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_allclose(m16(tokens), llama.from_pretrained(str(tmp_path))(tokens), atol=0.05)


def test_per_exit_heads(tmp_path):
    save_hf(tmp_path)
    model = llama.from_pretrained(str(tmp_path), exit_head_layers=(1, 2))
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 97, (1, 5)))
    shared = model(tokens, exit_layer=2)  # exit heads start as copies of the shared head
    model.exit_head[...] = model.exit_head[...].at[1].multiply(2.0)
    np.testing.assert_allclose(model(tokens, exit_layer=2), 2 * shared, rtol=1e-5, atol=1e-5)
    h = model.hidden_states(tokens, exits=(2,))[0]
    np.testing.assert_allclose(model.logits_from_hidden(h, exit_index=1), 2 * shared, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.logits_from_hidden(h), shared, rtol=1e-5, atol=1e-5)


def test_bad_config_values():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        llama.LlamaConfig(num_attention_heads=4, num_key_value_heads=3, hidden_size=32)
    with pytest.raises(ValueError, match="yarn"):
        llama.LlamaConfig.from_hf(
            {
                "hidden_size": 32,
                "num_attention_heads": 4,
                "vocab_size": 9,
                "intermediate_size": 8,
                "num_hidden_layers": 1,
                "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0},
            }
        )
    with pytest.raises(ValueError, match="config.json lacks required key 'intermediate_size'"):
        llama.LlamaConfig.from_hf(
            {"hidden_size": 32, "num_attention_heads": 4, "vocab_size": 9, "num_hidden_layers": 1}
        )
    with pytest.raises(ValueError, match="dtype"):
        llama.LlamaConfig(dtype="float16")
    cfg = llama.LlamaConfig(
        vocab_size=10, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"depth 3 outside the allowed range 1\.\.2"):
        model(jnp.zeros((1, 3), jnp.int32), exit_layer=3)
    with pytest.raises(ValueError, match=r"exit 0 outside"):
        model.hidden_states(jnp.zeros((1, 3), jnp.int32), exits=(0, 2))


@pytest.mark.slow
def test_traced_exits_and_gradients_stop_at_the_exit(tmp_path):
    save_hf(tmp_path)
    model = llama.from_pretrained(str(tmp_path))
    tokens = jnp.asarray(np.random.default_rng(7).integers(0, 97, (2, 6)))
    graphdef, state = nnx.split(model)
    h_E = jax.jit(lambda s, e: nnx.merge(graphdef, s).hidden_states(tokens, exits=e))(state, jnp.array([1, 2]))
    np.testing.assert_allclose(h_E, model.hidden_states(tokens, exits=(1, 2)), atol=1e-6)

    def loss(m):
        return m(tokens, exit_layer=2).mean()

    grads = nnx.grad(loss)(model)
    g = np.asarray(grads["layers"]["layers"]["mlp"]["up"]["kernel"][...])
    assert np.abs(g[:2]).sum() > 0 and np.abs(g[2]).sum() == 0


@pytest.mark.slow
def test_eager_calls_run_one_compiled_program_for_every_exit():
    from sortedjax.nn import eager

    cfg = llama.LlamaConfig(
        vocab_size=31, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 31, (2, 5)))
    before = eager._run._cache_size()
    outs = [model(tokens, exit_layer=e) for e in (1, 2, 3)]
    assert eager._run._cache_size() == before + 1  # one program for every depth
    for e, out in zip((1, 2, 3), outs):  # equals the op-by-op forward
        kw = dict(width=None, heads=None, rank=None)
        np.testing.assert_allclose(out, model._logits(tokens, e, None, None, kw), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="token id -1 outside the vocabulary: allowed 0..30"):
        model(tokens.at[0, 0].set(-1))


def test_simulated_mesh_larger_than_the_cap_is_refused():
    import subprocess
    import sys

    code = "from sortedjax import sharding; sharding.make_mesh('data:2,fsdp:64')"
    env = {**__import__("os").environ, "JAX_PLATFORMS": "cpu"}
    env.pop("SORTEDJAX_MAX_SIMULATED_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "simulating more than 64 CPU devices is refused" in out.stderr
