"""Hugging Face checkpoints: sharded loads, sub-model export that transformers loads, bad input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from test_llama import save_hf, torch_logits

from sortedjax import hf
from sortedjax.models import llama


def test_sharded_index_loads_same_as_single_file(tmp_path):
    ref = save_hf(tmp_path / "one")
    ref.save_pretrained(tmp_path / "many", max_shard_size="20KB")
    assert (tmp_path / "many" / hf.INDEX).is_file()
    assert len(set(json.loads((tmp_path / "many" / hf.INDEX).read_text())["weight_map"].values())) > 1
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, (1, 9)))
    np.testing.assert_array_equal(
        llama.from_pretrained(str(tmp_path / "many"))(tokens), llama.from_pretrained(str(tmp_path / "one"))(tokens)
    )


@pytest.mark.parametrize("tied", [False, True])
def test_exit_n_equals_exported_n_layer_checkpoint_in_transformers(tmp_path, tied):
    save_hf(tmp_path / "full", num_hidden_layers=4, tie_word_embeddings=tied)
    model = llama.from_pretrained(str(tmp_path / "full"))
    tokens = np.random.default_rng(1).integers(0, 97, (2, 11))
    for n in (1, 3, 4):
        llama.save_pretrained(model, tmp_path / f"sub{n}", num_layers=n)
        assert json.loads((tmp_path / f"sub{n}" / "config.json").read_text())["num_hidden_layers"] == n
        sub = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"sub{n}").eval()
        assert sub.config.num_hidden_layers == n and sub.config.tie_word_embeddings == tied
        np.testing.assert_allclose(
            model(jnp.asarray(tokens), exit_layer=n), torch_logits(sub, tokens), atol=1e-4, rtol=1e-4
        )
        # the round trip through our loader is exact
        back = llama.from_pretrained(str(tmp_path / f"sub{n}"))
        np.testing.assert_allclose(back(jnp.asarray(tokens)), model(jnp.asarray(tokens), exit_layer=n), atol=1e-6)


def test_export_uses_the_exit_own_head(tmp_path):
    save_hf(tmp_path / "full", tie_word_embeddings=True)
    model = llama.from_pretrained(str(tmp_path / "full"), exit_head_layers=(2,))
    model.exit_head[...] = model.exit_head[...] * 0.5
    llama.save_pretrained(model, tmp_path / "sub2", num_layers=2)
    sub = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sub2").eval()
    tokens = np.random.default_rng(2).integers(0, 97, (1, 7))
    np.testing.assert_allclose(model(jnp.asarray(tokens), exit_layer=2), torch_logits(sub, tokens), atol=1e-4)


def test_bfloat16_export_loads_in_transformers(tmp_path):
    save_hf(tmp_path / "full")
    model = llama.from_pretrained(str(tmp_path / "full"), dtype="bfloat16")
    llama.save_pretrained(model, tmp_path / "bf", num_layers=2)
    sub = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf", dtype="auto")
    assert sub.model.embed_tokens.weight.dtype == torch.bfloat16


def test_tokenizer_loaded_when_present(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    save_hf(tmp_path)
    assert hf.load_tokenizer(tmp_path) is None
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "<unk>": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
    fast.save_pretrained(tmp_path)
    loaded = hf.load_tokenizer(tmp_path)
    assert loaded("hello world")["input_ids"] == [3, 4]


def test_bad_checkpoints_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        llama.from_pretrained(str(tmp_path / "nope" / "x" / "y"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_config(tmp_path / "empty")
    save_hf(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").rename(tmp_path / "ok" / "weights.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        llama.from_pretrained(str(tmp_path / "ok"))

    save_hf(tmp_path / "shape")  # config disagrees with the weights
    cfg = json.loads((tmp_path / "shape" / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tmp_path / "shape" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.gate_proj.weight.*\(64, 32\).*\(48, 32\)"):
        llama.from_pretrained(str(tmp_path / "shape"))

    cfg["intermediate_size"], cfg["num_hidden_layers"] = 64, 2
    (tmp_path / "shape" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model.layers.2.*num_hidden_layers=2"):
        llama.from_pretrained(str(tmp_path / "shape"))

    cfg["num_hidden_layers"], cfg["tie_word_embeddings"] = 3, False
    cfg["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    (tmp_path / "shape" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported rope type 'dynamic'"):
        llama.from_pretrained(str(tmp_path / "shape"))

    save_hf(tmp_path / "tied", tie_word_embeddings=True)
    cfg = json.loads((tmp_path / "tied" / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (tmp_path / "tied" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(KeyError, match="lm_head.weight"):
        llama.from_pretrained(str(tmp_path / "tied"))

    model = llama.Llama(
        llama.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2),
        rngs=nnx.Rngs(0),
    )
    with pytest.raises(ValueError, match=r"depth 3 outside the allowed range 1\.\.2"):
        llama.save_pretrained(model, tmp_path / "x", num_layers=3)


def test_hub_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    save_hf(tmp_path / "snap")
    calls = []

    def fake_download(repo_id, **kw):
        calls.append(repo_id)
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = llama.from_pretrained("some-org/tiny-llama")
    assert calls == ["some-org/tiny-llama"] and model.cfg.num_hidden_layers == 3

    def offline(repo_id, **kw):
        raise OSError("no internet")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="'some-org/tiny-llama' is not a local directory.*no internet"):
        llama.from_pretrained("some-org/tiny-llama")


def test_nonfinite_weights_and_mesh_spec_string(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_hf(tmp_path / "ok")
    model = llama.from_pretrained(str(tmp_path / "ok"), mesh="8")  # a --mesh spec string is accepted
    assert len(model.layers.layers.mlp.gate.kernel[...].sharding.device_set) == 8
    tensors = load_file(str(tmp_path / "ok" / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
    save_file(tensors, str(tmp_path / "ok" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="bad --mesh spec 'eight'"):
        llama.from_pretrained(str(tmp_path / "ok"), mesh="eight")
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight' holds non-finite values"):
        llama.from_pretrained(str(tmp_path / "ok"))
