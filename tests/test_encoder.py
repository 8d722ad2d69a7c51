"""Our BERT / RoBERTa classifiers equal transformers' on the same checkpoints; sub-models extract and export."""

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
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from sortedjax.extract import extract
from sortedjax.models import encoder
from sortedjax.submodel import SubModel

V, L = 99, 11


def save_hf(path, model_type="bert", seed=0, **kw):
    base = dict(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        num_labels=3,
    )
    base.update(kw)
    torch.manual_seed(seed)
    if model_type == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**base))
    else:
        model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**base))
    with torch.no_grad():  # LayerNorms start at (1, 0) and biases at 0: randomize so the test sees them
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(path)
    return model


def batch(seed, pad, left=False):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, V, (3, L))
    mask = np.ones((3, L), np.int64)
    mask[1, 7:], mask[2, 4:] = 0, 0
    if left:
        mask = mask[:, ::-1].copy()
    tokens[mask == 0] = pad
    types = (np.arange(L) >= 5).astype(np.int64)[None].repeat(3, 0)
    return tokens, mask, types


def torch_out(ref, tokens, mask, types=None):
    with torch.no_grad():
        kw = {} if types is None else {"token_type_ids": torch.tensor(types)}
        return ref(torch.tensor(tokens), attention_mask=torch.tensor(mask), output_hidden_states=True, **kw)


CASES = {
    "bert_3_labels": dict(model_type="bert"),
    "bert_regression": dict(model_type="bert", num_labels=1, hidden_act="gelu_new"),
    "roberta_left_padded": dict(model_type="roberta", type_vocab_size=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_hidden_states_and_pooled_output_match_transformers(tmp_path, case):
    kw = CASES[case]
    ref = save_hf(tmp_path, **kw)
    model = encoder.from_pretrained(str(tmp_path))
    roberta = kw["model_type"] == "roberta"
    tokens, mask, types = batch(1, ref.config.pad_token_id, left=roberta)
    types = None if roberta else types
    out = torch_out(ref, tokens, mask, types)
    j = lambda x: None if x is None else jnp.asarray(x)  # noqa: E731
    logits = model(j(tokens), j(mask), j(types))
    assert logits.shape == (3, kw.get("num_labels", 3))
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4, rtol=1e-4)
    h_E = model.hidden_states(j(tokens), (1, 2, 3), j(mask), j(types))
    np.testing.assert_allclose(h_E, np.stack([h.numpy() for h in out.hidden_states[1:]]), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(model.logits_from_hidden(h_E[-1]), logits, atol=1e-5, rtol=1e-5)
    if not roberta:
        with torch.no_grad():
            pooled = ref.bert(
                torch.tensor(tokens), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)
            )
        np.testing.assert_allclose(model.pooled(h_E[-1]), pooled.pooler_output.numpy(), atol=1e-4, rtol=1e-4)


def test_roberta_positions_start_after_pad_and_skip_pads(tmp_path):
    ref = save_hf(tmp_path, model_type="roberta")
    model = encoder.from_pretrained(str(tmp_path))
    tokens = np.array([[5, 6, 1, 7, 1, 1], [1, 1, 8, 9, 10, 11]])  # pad_token_id 1, pads inside and on the left
    theirs = ref.roberta.embeddings.create_position_ids_from_input_ids(torch.tensor(tokens), 1)
    np.testing.assert_array_equal(model.default_positions(jnp.asarray(tokens)), theirs.numpy())
    np.testing.assert_array_equal(model.default_positions(jnp.asarray(tokens))[0], [2, 3, 1, 4, 1, 1])
    with pytest.raises(ValueError, match="input length 39 exceeds the model's 38 positions"):
        model(jnp.full((1, 39), 5))


def bert_tokenizer():
    """A BERT-style word-level fast tokenizer built offline (``[CLS] a [SEP] b [SEP]``, token types 0 / 1)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = "the cat sat on a mat dog ran far away".split()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def test_tokenizer_output_and_last_hidden_state_match_transformers(tmp_path):
    ref = save_hf(tmp_path)
    model = encoder.from_pretrained(str(tmp_path))
    tok = bert_tokenizer()
    texts, pairs = ["the cat sat", "a dog ran far away"], ["on a mat", "the mat"]
    enc = tok(texts, pairs, padding=True, return_tensors="np")
    assert set(enc) == {"input_ids", "token_type_ids", "attention_mask"}
    assert enc["token_type_ids"].any() and not enc["attention_mask"].all()  # the test sees types and padding
    with torch.no_grad():
        pt = {k: torch.tensor(v) for k, v in enc.items()}
        theirs, base = ref(**pt).logits.numpy(), ref.bert(**pt)
    logits = model(**enc)
    np.testing.assert_allclose(logits, theirs, atol=1e-4, rtol=1e-4)
    ids, mask, types = (jnp.asarray(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    np.testing.assert_allclose(model(ids, mask, types), logits, atol=1e-6, rtol=1e-6)  # positional calls as before
    np.testing.assert_allclose(model(**{k: jnp.asarray(v) for k, v in enc.items()}), logits, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(model(**tok(texts, pairs, padding=True)), logits, atol=1e-6, rtol=1e-6)  # lists
    # headless: transformers' BertModel outputs, the last layer by default
    out = model(**enc, head=False)
    np.testing.assert_allclose(out.last_hidden_state, base.last_hidden_state.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["pooler_output"], base.pooler_output.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(model.last_hidden_state(**enc), out.last_hidden_state, atol=1e-6, rtol=1e-6)
    # a sub-model's last hidden state: the state after its depth, as hidden_states reads it
    h = model(**enc, head=False, sub=SubModel.of(depth=2, width=16)).last_hidden_state
    h2 = model.hidden_states(ids, (2,), mask, types, sub=SubModel.of(width=16))[0]
    np.testing.assert_allclose(h, h2, atol=1e-6, rtol=1e-6)
    assert float(jnp.abs(h[..., 16:]).max()) == 0.0
    with pytest.raises(TypeError, match="give tokens_BxL or input_ids, not both"):
        model(ids, input_ids=ids)
    with pytest.raises(TypeError, match="needs the token ids"):
        model(attention_mask=mask)


@pytest.mark.slow
def test_traced_submodels_are_one_program_and_extract_equals_masked():
    cfg = encoder.EncoderConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        layer_norm_eps=1e-5,
    )
    model = encoder.Encoder(cfg, rngs=nnx.Rngs(0))
    tokens, mask, types = batch(2, 0)
    args = (jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(types))
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, sub: nnx.merge(graphdef, s)(*args, sub=sub))
    for sizes in (dict(depth=2, width=16, heads=2), dict(depth=3, width=20, heads=3), dict(depth=1, width=9, heads=1)):
        sub = SubModel.of(**sizes)
        masked = f(state, sub)
        np.testing.assert_allclose(model(*args, sub=sub), masked, atol=1e-5, rtol=1e-5)
        small = extract(model, sub)
        assert small.embed.embedding.shape == (V, sizes["width"])
        assert small.layers.layers.attn.q.kernel.shape[1:] == (sizes["width"], sizes["heads"], 8)
        np.testing.assert_allclose(small(*args), masked, atol=1e-5, rtol=1e-5)
    assert f._cache_size() == 1
    h = model.hidden_states(*args[:1], (2,), *args[1:], sub=SubModel.of(width=16))[0]
    assert float(jnp.abs(h[..., 16:]).max()) == 0.0  # the masked features stay zero


@pytest.mark.parametrize(
    "model_type,sizes",
    [("bert", dict(depth=2, heads=2)), ("bert", dict(depth=1, width=16, heads=2)), ("roberta", dict(heads=3))],
)
def test_submodel_export_loads_in_transformers_with_equal_logits(tmp_path, model_type, sizes):
    save_hf(tmp_path / "full", model_type=model_type)
    model = encoder.from_pretrained(str(tmp_path / "full"))
    tokens, mask, types = batch(3, 0 if model_type == "bert" else 1)
    sub = SubModel.of(**sizes)
    masked = model(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(types), sub=sub)
    encoder.save_pretrained(model, tmp_path / "sub", sub=sub)
    cfg = json.loads((tmp_path / "sub" / "config.json").read_text())
    w = sizes.get("width", 32)
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (
        sizes.get("depth", 3),
        w,
        w // 8,
    )  # heads past the kept ones are written as zeros: transformers ties head_dim to hidden / heads
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "sub").eval()
    out = torch_out(ref, tokens, mask, types)
    np.testing.assert_allclose(out.logits.numpy(), masked, atol=1e-4, rtol=1e-4)
    back = encoder.from_pretrained(str(tmp_path / "sub"))
    np.testing.assert_allclose(back(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(types)), masked, atol=1e-5)


def test_bad_input_and_base_checkpoints(tmp_path):
    save_hf(tmp_path / "bert")
    model = encoder.from_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match=r"16 with 3 heads of head_dim 8 cannot be exported"):
        encoder.save_pretrained(model, tmp_path / "x", sub=SubModel.of(width=16, heads=3))
    with pytest.raises(ValueError, match=r"heads 5 outside the allowed range 1\.\.4"):
        model(jnp.zeros((1, 3), jnp.int32), sub=SubModel.of(heads=5))
    with pytest.raises(ValueError, match="token type id 2 outside type_vocab_size"):
        model(jnp.zeros((1, 3), jnp.int32), token_type_ids=jnp.full((1, 3), 2))
    with pytest.raises(ValueError, match="token id 99 outside the vocabulary"):
        model(jnp.full((1, 3), 99, jnp.int32))
    with pytest.raises(ValueError, match="model_type is 'gpt2'; an encoder checkpoint must be one of"):
        encoder.EncoderConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="hidden_act 'swish' is not supported"):
        encoder.EncoderConfig(hidden_act="swish")
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key' is not supported"):
        encoder.EncoderConfig.from_hf(
            {**json.loads((tmp_path / "bert" / "config.json").read_text()), "position_embedding_type": "relative_key"}
        )
    # a base BertModel checkpoint (no "bert." prefix, no classifier): encoder and pooler load, the head starts fresh
    torch.manual_seed(1)
    base = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
        )
    ).eval()
    base.save_pretrained(tmp_path / "base")
    with pytest.warns(UserWarning, match=r"\[.classifier.weight., .classifier.bias.\]: not in the checkpoint"):
        fresh = encoder.from_pretrained(str(tmp_path / "base"), num_labels=1)
    tokens = np.random.default_rng(4).integers(3, V, (2, 7))
    with torch.no_grad():
        pooled = base(torch.tensor(tokens)).pooler_output.numpy()
    h = fresh.hidden_states(jnp.asarray(tokens), (2,))[0]
    np.testing.assert_allclose(fresh.pooled(h), pooled, atol=1e-4, rtol=1e-4)
    assert fresh(jnp.asarray(tokens)).shape == (2, 1)
    # old BERT files name LayerNorm parameters gamma / beta
    (tmp_path / "old").mkdir()
    shutil.copy(tmp_path / "base" / "config.json", tmp_path / "old")
    sd = safetensors.numpy.load_file(tmp_path / "base" / "model.safetensors")
    old = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in sd.items()
    }
    safetensors.numpy.save_file(old, tmp_path / "old" / "model.safetensors")
    with pytest.warns(UserWarning, match="newly initialised"):
        same = jax.tree.map(
            np.array_equal, nnx.state(encoder.from_pretrained(tmp_path / "old", num_labels=1)), nnx.state(fresh)
        )
    assert all(jax.tree.leaves(same))
    with pytest.warns(UserWarning, match="classifier.weight"):  # another label count: a new classifier
        assert encoder.from_pretrained(str(tmp_path / "bert"), num_labels=5)(jnp.asarray(tokens)).shape == (2, 5)
