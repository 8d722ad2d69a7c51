"""KV-cache decoding equals full recomputation and transformers' greedy generate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from test_llama import save_hf

from sortedjax import decoding
from sortedjax.decoding import common, early_exit, plain
from sortedjax.extract import extract
from sortedjax.models import llama
from sortedjax.submodel import SubModel


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    ref = save_hf(
        path, num_hidden_layers=4, vocab_size=64, rope_parameters={"rope_type": "default", "rope_theta": 100.0}
    )
    return path, ref, llama.from_pretrained(str(path))


PROMPTS = [[5, 9, 33, 7, 12, 40], [17, 3, 22], [8, 8, 61, 30]]


def left_padded(pad=0):
    P = max(map(len, PROMPTS))
    tokens = np.array([[pad] * (P - len(p)) + p for p in PROMPTS])
    return tokens, (np.arange(P)[None] >= P - np.array(list(map(len, PROMPTS)))[:, None]).astype(np.int64)


def hf_greedy(ref, tokens, mask, max_new, eos):
    with torch.no_grad():
        out = ref.generate(
            torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=max_new,
            pad_token_id=0,
            eos_token_id=eos,
        )
    new = out[:, tokens.shape[1] :].numpy()
    return np.pad(new, ((0, 0), (0, max_new - new.shape[1])), constant_values=0)


def test_greedy_equals_transformers_generate_with_padding_and_stop(ckpt):
    _, ref, model = ckpt
    tokens, mask = left_padded()
    free = decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=12)
    np.testing.assert_array_equal(free, hf_greedy(ref, tokens, mask, 12, eos=63))
    stop = int(free[0, 3])  # a token row 0 emits: rows stop there
    ours = decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=12, stop_tokens=(stop,), pad_id=0)
    np.testing.assert_array_equal(ours, hf_greedy(ref, tokens, mask, 12, eos=stop))
    assert (ours[0, 4:] == 0).all() and ours[0, 3] == stop
    # ragged lists are left-padded internally
    np.testing.assert_array_equal(decoding.generate(model, PROMPTS, max_new_tokens=12), free)


def test_default_pad_is_no_token_and_every_loop_returns_row_lengths(ckpt):
    _, _, model = ckpt
    tokens, mask = left_padded()
    free = decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=12)
    stop = int(free[0, 3])
    kw = dict(attention_mask=mask, max_new_tokens=12, stop_tokens=(stop,), return_lengths=True)
    out, lengths = decoding.generate(model, tokens, **kw)
    assert decoding.PAD == -1 and (out[0, 4:] == decoding.PAD).all() and out[0, 3] == stop
    hit = free == stop
    expected = np.where(hit.any(1), hit.argmax(1) + 1, 12)
    np.testing.assert_array_equal(lengths, expected)
    np.testing.assert_array_equal((out != decoding.PAD).sum(1), lengths)
    spec, _, spec_lengths = decoding.speculative_generate(model, tokens, draft_exit=1, **kw)
    np.testing.assert_array_equal(spec, out)
    np.testing.assert_array_equal(spec_lengths, lengths)
    early, used, early_lengths = decoding.early_exit_generate(model, tokens, exits=[1], threshold=0.5, **kw)
    np.testing.assert_array_equal((early != decoding.PAD).sum(1), early_lengths)
    np.testing.assert_array_equal((used > 0).sum(1), early_lengths)
    with pytest.raises(TypeError, match="pad_id"):
        decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=4, pad_id=0.5)


def test_right_padding_equals_left_padding(ckpt):
    _, _, model = ckpt
    P = max(map(len, PROMPTS))
    right = np.array([p + [0] * (P - len(p)) for p in PROMPTS])
    rmask = (right != 0) | (np.arange(P)[None] < np.array(list(map(len, PROMPTS)))[:, None])
    left, lmask = left_padded()
    np.testing.assert_array_equal(
        decoding.generate(model, right, attention_mask=rmask, max_new_tokens=8),
        decoding.generate(model, left, attention_mask=lmask, max_new_tokens=8),
    )


@pytest.mark.parametrize("exit_layer", [2, 4])
def test_kv_cache_equals_full_recomputation(ckpt, exit_layer):
    _, _, model = ckpt
    prompt = np.array([[5, 9, 33, 7, 12, 40], [17, 3, 22, 1, 2, 50]])
    tokens, logits = decoding.generate(model, prompt, max_new_tokens=7, exit_layer=exit_layer, return_logits=True)
    seq = np.concatenate([prompt, tokens], axis=1)
    full = model(jnp.asarray(seq), exit_layer=exit_layer)
    np.testing.assert_allclose(logits, full[:, prompt.shape[1] - 1 : -1], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(tokens, np.argmax(full[:, prompt.shape[1] - 1 : -1], -1))


def test_exit_generation_equals_exported_submodel_in_transformers(ckpt, tmp_path):
    _, _, model = ckpt
    llama.save_pretrained(model, tmp_path, num_layers=2)
    sub = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens, mask = left_padded()
    np.testing.assert_array_equal(
        decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=8, exit_layer=2),
        hf_greedy(sub, tokens, mask, 8, eos=63),
    )


@pytest.mark.parametrize("sizes", [dict(width=40, heads=2), dict(depth=3, width=24, heads=2)])
def test_width_and_heads_submodels_decode_as_their_extracted_model(ckpt, sizes):
    _, _, model = ckpt
    sub = SubModel.of(**sizes)
    tokens, mask = left_padded()
    ours = decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=8, sub=sub)
    assert not np.array_equal(ours, decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=8))
    small = extract(model, sub)
    np.testing.assert_array_equal(ours, decoding.generate(small, tokens, attention_mask=mask, max_new_tokens=8))
    # the masked model's own full forward, argmax token by token (no cache)
    seq, seq_mask = tokens, mask
    for _ in range(8):
        nxt = np.argmax(model(jnp.asarray(seq), attention_mask=jnp.asarray(seq_mask), sub=sub)[:, -1], -1)
        seq, seq_mask = np.concatenate([seq, nxt[:, None]], 1), np.pad(seq_mask, ((0, 0), (0, 1)), constant_values=1)
    np.testing.assert_array_equal(ours, seq[:, tokens.shape[1] :])
    # self-speculative decoding of the sub-model (its first layer drafts) and early exit that never exits
    spec, _ = decoding.speculative_generate(
        model, tokens, attention_mask=mask, max_new_tokens=8, draft_exit=1, num_draft=3, sub=sub
    )
    np.testing.assert_array_equal(spec, ours)
    never, used = decoding.early_exit_generate(
        model, tokens, attention_mask=mask, max_new_tokens=8, exits=(1, 2), threshold=1.1, sub=sub
    )
    np.testing.assert_array_equal(never, ours)
    assert (used == sizes.get("depth", 4)).all()


def test_exit_layer_is_a_shorthand_for_sub_depth(ckpt):
    _, _, model = ckpt
    np.testing.assert_array_equal(
        decoding.generate(model, PROMPTS, max_new_tokens=6, exit_layer=2),
        decoding.generate(model, PROMPTS, max_new_tokens=6, sub=SubModel.of(depth=2)),
    )
    with pytest.raises(ValueError, match="give the depth once"):
        decoding.generate(model, PROMPTS, max_new_tokens=2, exit_layer=2, sub=SubModel.of(depth=2))
    with pytest.raises(ValueError, match=r"width 65 outside the allowed range 1\.\.64"):
        decoding.generate(model, PROMPTS, max_new_tokens=2, sub=SubModel.of(width=65))
    with pytest.raises(ValueError, match="draft_exit 3 is past the decoded sub-model's depth 2"):
        decoding.speculative_generate(model, PROMPTS, max_new_tokens=2, draft_exit=3, sub=SubModel.of(depth=2))
    with pytest.raises(ValueError, match="exit 3 is past the decoded sub-model's depth 2"):
        decoding.early_exit_generate(model, PROMPTS, max_new_tokens=2, exits=(1, 3), sub=SubModel.of(depth=2))


def test_prefill_and_step_compile_once(ckpt):
    _, _, model = ckpt
    prompt = np.array([[5, 9, 33, 7], [1, 2, 3, 4]])
    decoding.generate(model, prompt, max_new_tokens=5)
    sizes = common.prefill._cache_size(), plain.decode_loop._cache_size()
    for kw in (
        dict(exit_layer=1),
        dict(exit_layer=3, temperature=0.7, top_k=5),
        dict(temperature=1.3, top_p=0.8, seed=3),
        dict(exit_layer=2, stop_tokens=(4,)),
    ):
        decoding.generate(model, prompt + 1, max_new_tokens=5, **kw)
    assert (common.prefill._cache_size(), plain.decode_loop._cache_size()) == sizes


def test_sampling_controls():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 512))
    keys = jax.random.key(0)
    draws = np.asarray(decoding.sample(logits, keys, 1.0, 0, 1.0))
    assert set(draws) == {0, 1, 2, 3} and abs((draws == 0).mean() - 0.5) < 0.08
    assert set(np.asarray(decoding.sample(logits, keys, 1.0, 2, 1.0))) == {0, 1}
    assert set(np.asarray(decoding.sample(logits, keys, 1.0, 0, 0.7))) == {0, 1}  # 0.5 + 0.3 covers 0.7
    assert set(np.asarray(decoding.sample(logits, keys, 1.0, 0, 0.4))) == {0}
    assert set(np.asarray(decoding.sample(logits, keys, 0.0, 0, 1.0))) == {0}
    hot = np.asarray(decoding.sample(logits, keys, 100.0, 0, 1.0))
    assert abs((hot == 3).mean() - 0.25) < 0.08  # high temperature flattens


def test_seeded_sampling_is_reproducible(ckpt):
    _, _, model = ckpt
    kw = dict(max_new_tokens=6, temperature=1.0, top_k=10, top_p=0.9)
    a = decoding.generate(model, PROMPTS, seed=1, **kw)
    np.testing.assert_array_equal(a, decoding.generate(model, PROMPTS, seed=1, **kw))
    assert not np.array_equal(a, decoding.generate(model, PROMPTS, seed=2, **kw))


@pytest.mark.parametrize("draft_exit,num_draft", [(1, 3), (3, 4)])
def test_self_speculative_greedy_equals_plain_greedy(ckpt, draft_exit, num_draft):
    _, _, model = ckpt
    tokens, mask = left_padded()
    plain = decoding.generate(model, tokens, attention_mask=mask, max_new_tokens=11)
    spec, stats = decoding.speculative_generate(
        model, tokens, attention_mask=mask, max_new_tokens=11, draft_exit=draft_exit, num_draft=num_draft
    )
    np.testing.assert_array_equal(spec, plain)
    assert stats["verifies"] <= 10


def test_speculation_with_full_depth_draft_accepts_everything(ckpt):
    _, _, model = ckpt
    spec, stats = decoding.speculative_generate(model, PROMPTS, max_new_tokens=9, draft_exit=4, num_draft=3)
    np.testing.assert_array_equal(spec, decoding.generate(model, PROMPTS, max_new_tokens=9))
    assert stats["tokens_per_verify"] == 4.0 and stats["verifies"] == 2
    assert stats["acceptance_rate"] == 1.0 and stats["rejection_ratio"] == 0.0


def test_bad_generation_arguments(ckpt):
    _, _, model = ckpt
    with pytest.raises(ValueError, match=r"depth 5 outside the allowed range 1\.\.4"):
        decoding.generate(model, [[1, 2]], max_new_tokens=2, exit_layer=5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.generate(model, [[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match="attention_mask shape"):
        decoding.generate(model, [[1, 2]], attention_mask=[[1, 1, 1]], max_new_tokens=2)


def test_confidence_early_exit(ckpt):
    _, _, model = ckpt
    tokens, mask = left_padded()
    kw = dict(attention_mask=mask, max_new_tokens=8)
    never, used = decoding.early_exit_generate(model, tokens, exits=(1, 2, 3), threshold=1.1, **kw)
    compiled = early_exit.early_exit_loop._cache_size()  # other tests may have compiled other shapes
    np.testing.assert_array_equal(never, decoding.generate(model, tokens, **kw))
    assert (used == 4).all()
    # threshold 0: every token after the (full-depth) first one leaves at layer 2, and
    # layers 1..2 see an exact cache, so this is exit-2 decoding of prompt + first token
    always, used = decoding.early_exit_generate(model, tokens, exits=(2, 3), threshold=0.0, **kw)
    longer = np.concatenate([tokens, always[:, :1]], 1)
    exit2 = decoding.generate(
        model, longer, attention_mask=np.pad(mask, ((0, 0), (0, 1)), constant_values=1), max_new_tokens=7, exit_layer=2
    )
    np.testing.assert_array_equal(always[:, 1:], exit2)
    assert (used[:, 1:] == 2).all()
    mid, used = decoding.early_exit_generate(model, tokens, exits=(1, 2, 3), threshold=0.05, **kw)
    assert mid.shape == (3, 8) and set(np.unique(used[:, 1:])) <= {1, 2, 3, 4}
    assert early_exit.early_exit_loop._cache_size() == compiled
