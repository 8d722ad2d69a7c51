"""Our GPT-2 equals transformers' GPT2LMHeadModel: logits, greedy generation, sub-model export."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from sortedjax import decoding
from sortedjax.extract import extract
from sortedjax.models import gpt2
from sortedjax.submodel import SubModel

V, PAD, EOS = 100, 0, 99


def save_hf(path, seed=0, **kw):
    base = dict(
        vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD
    )
    base.update(kw)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**base))
    with torch.no_grad():  # LayerNorms start at (1, 0) and biases at 0: randomize so the test sees them
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(path)
    return model


def torch_logits(ref, tokens, mask=None, positions=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        if positions is not None:
            kw["position_ids"] = torch.tensor(positions)
        return ref(torch.tensor(tokens), **kw).logits.numpy()


def left_padded(seed, B=3, P=9):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, V - 1, (B, P))
    mask = np.ones((B, P), np.int64)
    mask[1, :3], mask[2, :6] = 0, 0
    tokens[mask == 0] = PAD
    return tokens, mask


@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
def test_logits_match_transformers_padded_batch_included(tmp_path, act):
    ref = save_hf(tmp_path, activation_function=act, n_inner=48 if act == "gelu" else None)
    model = gpt2.from_pretrained(str(tmp_path))
    tokens = np.random.default_rng(0).integers(0, V, (2, 20))
    np.testing.assert_allclose(model(jnp.asarray(tokens)), torch_logits(ref, tokens), atol=1e-4, rtol=1e-4)
    tokens, mask = left_padded(1)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)  # padding-aware positions (our default, generate's)
    ours = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    keep = mask.astype(bool)
    np.testing.assert_allclose(ours[keep], torch_logits(ref, tokens, mask, pos)[keep], atol=1e-4, rtol=1e-4)
    h_E = model.hidden_states(jnp.asarray(tokens), (1, 3), attention_mask=jnp.asarray(mask))
    np.testing.assert_allclose(model.logits_from_hidden(h_E[1]), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_greedy_generation_equals_transformers_generate(tmp_path):
    ref = save_hf(tmp_path)
    model = gpt2.from_pretrained(str(tmp_path))
    tokens, mask = left_padded(2)
    with torch.no_grad():
        theirs = ref.generate(
            torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=12,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    theirs = theirs[:, tokens.shape[1] :].numpy()
    ours = decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=12, pad_id=PAD, stop_tokens=[EOS])
    np.testing.assert_array_equal(ours, theirs)
    spec = decoding.speculative_generate(
        model, tokens, attention_mask=mask, max_new_tokens=12, draft_exit=1, num_draft=3
    )
    np.testing.assert_array_equal(spec[0] if isinstance(spec, tuple) else spec, ours)  # self-speculative: same tokens
    # a cached exit equals the full forward pass at that depth (every exit shares the head)
    _, logits = decoding.generate(model, tokens[:1], max_new_tokens=1, exit_layer=2, return_logits=True)
    np.testing.assert_allclose(logits[:, 0], model(jnp.asarray(tokens[:1]), exit_layer=2)[:, -1], atol=1e-5)


@pytest.mark.slow
def test_traced_submodels_are_one_program_and_extract_equals_masked():
    cfg = gpt2.GPT2Config(
        vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=32
    )
    model = gpt2.GPT2(cfg, rngs=nnx.Rngs(0))
    tokens, mask = left_padded(3)
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, sub: nnx.merge(graphdef, s)(jnp.asarray(tokens), attention_mask=jnp.asarray(mask), sub=sub))
    for sizes in (dict(depth=2, width=16, heads=2), dict(depth=3, width=24, heads=3), dict(depth=1, width=9, heads=1)):
        sub = SubModel.of(**sizes)
        masked = f(state, sub)
        small = extract(model, sub)
        assert small.wte.embedding.shape == (V, sizes["width"]) and small.cfg.head_dim == 8
        np.testing.assert_allclose(small(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)), masked, atol=1e-5)
    assert f._cache_size() == 1


@pytest.mark.parametrize("sizes", [dict(depth=2, heads=2), dict(depth=1), dict(width=16, heads=2)])
def test_submodel_export_loads_in_transformers_with_equal_logits(tmp_path, sizes):
    save_hf(tmp_path / "full")
    model = gpt2.from_pretrained(str(tmp_path / "full"))
    tokens = np.random.default_rng(4).integers(0, V, (2, 10))
    sub = SubModel.of(**sizes)
    masked = model(jnp.asarray(tokens), sub=sub)
    gpt2.save_pretrained(model, tmp_path / "sub", sub=sub)
    cfg = json.loads((tmp_path / "sub" / "config.json").read_text())
    w = sizes.get("width", 32)
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_head"]) == (sizes.get("depth", 3), w, w // 8)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sub").eval()
    np.testing.assert_allclose(torch_logits(ref, tokens), masked, atol=1e-4, rtol=1e-4)
    if sizes.get("heads", 4) < w // 8:  # heads past the kept ones are zeros (transformers: head_dim = n_embd / n_head)
        assert float(ref.transformer.h[0].attn.c_proj.weight[8 * sizes["heads"] :].detach().abs().max()) == 0.0


def test_bad_input_and_hub_layout(tmp_path):
    save_hf(tmp_path)
    model = gpt2.from_pretrained(str(tmp_path))
    # the original hub checkpoints name tensors without the "transformer." prefix
    (tmp_path / "hub").mkdir()
    shutil.copy(tmp_path / "config.json", tmp_path / "hub")
    sd = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    safetensors.numpy.save_file(
        {k.removeprefix("transformer."): v for k, v in sd.items()}, tmp_path / "hub" / "model.safetensors"
    )
    same = jax.tree.map(np.array_equal, nnx.state(gpt2.from_pretrained(tmp_path / "hub")), nnx.state(model))
    assert all(jax.tree.leaves(same))
    with pytest.raises(ValueError, match="input length 65 exceeds the model's 64 positions"):
        model(jnp.zeros((1, 65), jnp.int32))
    with pytest.raises(ValueError, match=r"depth 4 outside the allowed range 1\.\.3"):
        model(jnp.zeros((1, 3), jnp.int32), exit_layer=4)
    with pytest.raises(ValueError, match="token id 100 outside the vocabulary"):
        model(jnp.full((1, 3), 100, jnp.int32))
    with pytest.raises(ValueError, match=r"width 16 with 3 heads of head_dim 8 cannot be exported"):
        gpt2.save_pretrained(model, tmp_path / "x", sub=SubModel.of(width=16, heads=3))
    cfg = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match="model_type is 'llama', expected 'gpt2'"):
        gpt2.GPT2Config.from_hf({**cfg, "model_type": "llama"})
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True is not supported"):
        gpt2.GPT2Config.from_hf({**cfg, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(ValueError, match="activation_function 'quick_gelu' is not supported"):
        gpt2.GPT2Config(activation_function="quick_gelu")
