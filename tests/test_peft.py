"""PEFT LoRA adapters out and in: ``peft.PeftModel.from_pretrained`` on our export at rank b equals
our model at rank b (BERT, RoBERTa, LLaMA, GPT-2 with its fused ``c_attn``); adapters PEFT creates
load into our models with PEFT's logits; bad input is refused with the allowed values named."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file
from test_encoder import batch
from test_encoder import save_hf as save_encoder
from test_gpt2 import save_hf as save_gpt2
from test_llama import save_hf as save_llama

from sortedjax import peft as lora
from sortedjax.models import encoder, gpt2, llama
from sortedjax.models.mlp import MLPConfig, SortedMLP
from sortedjax.peft import files as lora_files
from sortedjax.submodel import SubModel

peft = pytest.importorskip("peft")
TOKENS = np.random.default_rng(3).integers(3, 97, (2, 10))


def randomize_up(model, seed=3, scale=0.3):
    """Give every W_up random values, as if trained (fresh adapters are zero)."""
    for i, a in enumerate(lora.adapters(model).values()):
        a.up[...] = scale * jax.random.normal(jax.random.PRNGKey(seed + i), a.up.shape)


def peft_logits(base_dir, adapter_dir, auto, **inputs):
    ref = auto.from_pretrained(str(base_dir)).eval()
    model = peft.PeftModel.from_pretrained(ref, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()


def config(d):
    return json.loads((d / "adapter_config.json").read_text())


@pytest.mark.parametrize("model_type", ["bert", pytest.param("roberta", marks=pytest.mark.slow)])
def test_encoder_export_at_rank_b_equals_peft(tmp_path, model_type):
    save_encoder(tmp_path / "base", model_type, num_hidden_layers=2)
    model = encoder.from_pretrained(str(tmp_path / "base"))
    assert lora.apply_dylora(model, ["query", "value"], r=4, alpha=8.0, r_min=2) == [
        "layers.layers.attn.q",
        "layers.layers.attn.v",
    ]
    randomize_up(model)
    model.classifier.kernel[...] += 0.5  # a trained head: written as PEFT modules_to_save
    model.pooler.bias[...] += 0.5
    lora.save_peft(model, tmp_path / "adapter", rank=3)
    cfg = config(tmp_path / "adapter")
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"], cfg["task_type"]) == (
        3,
        8.0,
        ["query", "value"],
        "SEQ_CLS",
    )
    assert cfg["modules_to_save"] == (["classifier", "pooler"] if model_type == "bert" else ["classifier"])
    tokens, mask, _ = batch(0, 1)
    ours = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask), sub=SubModel.of(rank=3))
    auto = transformers.AutoModelForSequenceClassification
    want = peft_logits(tmp_path / "base", tmp_path / "adapter", auto, input_ids=tokens, attention_mask=mask)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
    assert not np.allclose(ours, model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)), atol=1e-3)
    merged = lora.merge(model, 3)(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    np.testing.assert_allclose(merged, ours, atol=1e-5, rtol=1e-5)
    back = encoder.from_pretrained(str(tmp_path / "base"))
    assert lora.load_peft(back, tmp_path / "adapter") == ["layers.layers.attn.q", "layers.layers.attn.v"]
    assert lora.rank_range(back) == (2, 3)  # r_min from the file, r_max = the exported rank
    np.testing.assert_allclose(back(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)), ours, atol=1e-6)


def test_gpt2_fused_c_attn_export_equals_peft_and_splits_back(tmp_path):
    """q and v adapters of rank b are one c_attn adapter of rank 2b (block lora_B, k rows zero)."""
    save_gpt2(tmp_path / "base", n_layer=2)
    model = gpt2.from_pretrained(str(tmp_path / "base"))
    lora.apply_dylora(model, ["q", "v", "mlp.up"], r=4, alpha=8.0)
    randomize_up(model)
    lora.save_peft(model, tmp_path / "adapter", rank=2)
    cfg = config(tmp_path / "adapter")
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"], cfg["fan_in_fan_out"]) == (
        2,
        8.0,
        ["c_attn", "c_fc"],
        True,
    )
    assert set(cfg["rank_pattern"].values()) == {4} and set(cfg["alpha_pattern"].values()) == {16.0}
    sd = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    b_mat = sd["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"]
    assert b_mat.shape == (96, 4) and not b_mat[32:64].any()  # k rows zero
    assert not b_mat[:32, 2:].any() and not b_mat[64:, :2].any()  # q uses columns 0..1, v 2..3
    ours = model(jnp.asarray(TOKENS), sub=SubModel.of(rank=2))
    want = peft_logits(tmp_path / "base", tmp_path / "adapter", transformers.GPT2LMHeadModel, input_ids=TOKENS)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(lora.merge(model, 2)(jnp.asarray(TOKENS)), ours, atol=1e-5, rtol=1e-5)
    back = gpt2.from_pretrained(str(tmp_path / "base"))
    assert lora.load_peft(back, tmp_path / "adapter") == sorted(lora.adapters(model))
    assert back.layers.layers.attn.q.lora.r_max == 2 and back.layers.layers.attn.k.lora is None
    np.testing.assert_allclose(back(jnp.asarray(TOKENS)), ours, atol=1e-6)


@pytest.mark.slow
def test_llama_export_at_rank_b_equals_peft_and_peft_saved_file_loads(tmp_path):
    ref = save_llama(tmp_path / "base", num_hidden_layers=2)
    model = llama.from_pretrained(str(tmp_path / "base"))
    paths = lora.apply_dylora(model, r"layers\.layers\.(attn\.[qvo]|mlp\.down)", r=4, alpha=8.0)
    randomize_up(model)
    lora.save_peft(model, tmp_path / "adapter", rank=2, base_model_name_or_path=str(tmp_path / "base"))
    cfg = config(tmp_path / "adapter")
    assert (cfg["r"], cfg["lora_alpha"], cfg["task_type"]) == (2, 8.0, "CAUSAL_LM")
    assert cfg["target_modules"] == ["down_proj", "o_proj", "q_proj", "v_proj"]
    peft_model = peft.PeftModel.from_pretrained(ref, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        want = peft_model(torch.tensor(TOKENS)).logits.numpy()
    ours = model(jnp.asarray(TOKENS), sub=SubModel.of(rank=2))
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
    peft_model.save_pretrained(str(tmp_path / "peft_saved"))  # a file PEFT wrote loads too
    again = llama.from_pretrained(str(tmp_path / "base"))
    assert lora.load_peft(again, tmp_path / "peft_saved") == paths
    np.testing.assert_allclose(again(jnp.asarray(TOKENS)), ours, atol=1e-5)
    # lm_head's adapter runs at the sub-model's rank too: exported at rank 2 and at r_max
    lora.apply_dylora(model, ["lm_head"], r=4, alpha=8.0, seed=1)
    randomize_up(model, seed=9)
    for rank in (2, 4):
        out = tmp_path / f"with_head_{rank}"
        lora.save_peft(model, out, rank=rank)
        assert config(out)["target_modules"] == ["down_proj", "lm_head", "o_proj", "q_proj", "v_proj"]
        want = peft_logits(tmp_path / "base", out, transformers.LlamaForCausalLM, input_ids=TOKENS)
        ours = model(jnp.asarray(TOKENS), sub=SubModel.of(rank=rank))
        np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)


def _peft_made(hf_model, out, seed=0, **lora_kw):
    """An adapter PEFT creates (random non-zero lora_B, as if trained), saved; returns its logits fn."""
    pm = peft.get_peft_model(hf_model, peft.LoraConfig(**lora_kw))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    pm.eval().save_pretrained(str(out))

    def logits(**inputs):
        with torch.no_grad():
            return pm(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()

    return logits


def test_adapters_peft_created_load_with_peft_logits(tmp_path):
    """GPT-2 (dense c_attn: q, k, v at the full rank, rank_pattern honoured) and BERT; into a model
    without adapters and into one whose adapters have a larger r_max and another alpha."""
    hf = save_gpt2(tmp_path / "g", n_layer=2)
    logits = _peft_made(
        hf, tmp_path / "ga", r=4, lora_alpha=5, target_modules=["c_attn", "mlp.c_proj"], rank_pattern={"c_proj": 2}
    )
    want = logits(input_ids=TOKENS)
    fresh = gpt2.from_pretrained(str(tmp_path / "g"))
    got = lora.load_peft(fresh, tmp_path / "ga")
    assert got == ["layers.layers.attn.k", "layers.layers.attn.q", "layers.layers.attn.v", "layers.layers.mlp.down"]
    assert fresh.layers.layers.mlp.down.lora.r_max == 2 and fresh.layers.layers.attn.q.lora.r_max == 4
    np.testing.assert_allclose(fresh(jnp.asarray(TOKENS)), want, atol=1e-4)  # each adapter at its own r_max

    hf = save_encoder(tmp_path / "e", "bert", num_hidden_layers=2)
    tokens, mask, _ = batch(1, 0)
    logits = _peft_made(hf, tmp_path / "ea", r=3, lora_alpha=6, target_modules=["query", "value"], task_type="SEQ_CLS")
    want = logits(input_ids=tokens, attention_mask=mask)
    model = encoder.from_pretrained(str(tmp_path / "e"))
    lora.apply_dylora(model, ["query", "value"], r=5, alpha=2.0)
    lora.load_peft(model, tmp_path / "ea")
    ours = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask), sub=SubModel.of(rank=3))
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)


# -- bad input -----------------------------------------------------------------------------------
def _tiny_llama(**kw):
    c = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return llama.Llama(llama.LlamaConfig(**{**c, "num_key_value_heads": 2, **kw}), rngs=nnx.Rngs(0))


def test_bad_input_names_the_value_and_what_is_allowed(tmp_path):
    model = _tiny_llama()
    with pytest.raises(ValueError, match=r"no LoRA adapters; call sortedjax.peft.apply_dylora"):
        lora.save_peft(model, tmp_path / "x")
    with pytest.raises(ValueError, match=r"\['query'\] match no Linear.*Hugging Face modules: .*self_attn.q_proj"):
        lora.apply_dylora(model, ["query"])
    lora.apply_dylora(model, ["q_proj", "v_proj"], r=4, alpha=8.0, r_min=2)
    for bad in (1, 5, 2.5):
        with pytest.raises(ValueError, match=rf"rank {bad} outside the adapters' range r_min..r_max = 2..4"):
            lora.save_peft(model, tmp_path / "x", rank=bad)
    lora.save_peft(model, tmp_path / "llama", rank=3)
    # another architecture
    g = gpt2.GPT2(gpt2.GPT2Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
                  rngs=nnx.Rngs(0))  # fmt: skip
    with pytest.raises(ValueError, match=r"adapter written for architecture 'llama', model GPT2 is 'gpt2'"):
        lora.load_peft(g, tmp_path / "llama")
    # shapes that do not fit (a wider model), target modules the model lacks
    with pytest.raises(ValueError, match=r"lora_A.weight has shape \(3, 32\); Llama at rank r=3 needs \(3, 48\)"):
        lora.load_peft(_tiny_llama(hidden_size=48), tmp_path / "llama")
    sd = load_file(str(tmp_path / "llama" / "adapter_model.safetensors"))
    renamed = {k.replace("model.layers.1.", "model.layers.7."): v for k, v in sd.items()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "adapter_config.json").write_text((tmp_path / "llama" / "adapter_config.json").read_text())
    save_file(renamed, str(tmp_path / "other" / "adapter_model.safetensors"))
    with pytest.raises(
        ValueError, match=r"model.layers.7.self_attn.q_proj.*Llama's modules: .*model.layers.N.mlp.down_proj"
    ):
        lora.load_peft(_tiny_llama(), tmp_path / "other")
    # an existing adapter whose r_max is below the file's r
    small = _tiny_llama()
    lora.apply_dylora(small, ["q", "v"], r=2)
    with pytest.raises(ValueError, match=r"has rank r=3, above the model's adapter r_max=2"):
        lora.load_peft(small, tmp_path / "llama")
    cfg = config(tmp_path / "llama")
    (tmp_path / "llama" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match=r"\{'use_dora': True\} not supported; allowed: plain LoRA"):
        lora.load_peft(_tiny_llama(), tmp_path / "llama")


def test_other_models_round_trip_with_dotted_names(tmp_path):
    model = SortedMLP(MLPConfig(in_dim=5, hidden=12, out_dim=3, num_blocks=2), rngs=nnx.Rngs(0))
    lora.apply_dylora(model, ["inp", "dense"], r=4, alpha=2.0, r_min=2, frozen=True)
    randomize_up(model)
    lora_files.save_peft(model, tmp_path, rank=3)
    cfg = config(tmp_path)
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == ("LORA", 3, 2.0, ["dense", "inp"])
    assert "base_model.model.blocks.layers.1.dense.lora_A.weight" in load_file(
        str(tmp_path / "adapter_model.safetensors")
    )
    fresh = SortedMLP(MLPConfig(in_dim=5, hidden=12, out_dim=3, num_blocks=2), rngs=nnx.Rngs(0))
    assert lora_files.load_peft(fresh, tmp_path) == ["blocks.layers.dense", "inp"]
    assert lora.rank_range(fresh) == (2, 3) and fresh.inp.lora.frozen
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
    np.testing.assert_allclose(fresh(x), model(x, SubModel.of(rank=3)), atol=1e-6)


# -- python -m experiments.export_peft -----------------------------------------------------------
@pytest.mark.slow
def test_export_peft_from_a_trained_run(tmp_path, capsys):
    from experiments import export_peft
    from sortedjax.peft import runs as lora_runs
    from sortedjax.train import TrainConfig, train

    save_encoder(tmp_path / "base", "roberta", num_hidden_layers=2)
    model = encoder.from_pretrained(str(tmp_path / "base"))
    lora.apply_dylora(model, ["query", "value"], r=4, alpha=8.0)
    run = tmp_path / "runs" / "dylora"
    lora_runs.write_run_info(run, model, base_model=str(tmp_path / "base"))
    tokens, mask, _ = batch(2, 1)
    data = {"x": jnp.asarray(tokens), "m": jnp.asarray(mask)}

    def loss_fn(m, b, key):
        return jnp.mean((m(b["x"], attention_mask=b["m"], sub=SubModel.of(rank=2)) - 1.0) ** 2), {}

    trainable = nnx.Any(lora.LoRAParam, nnx.PathContains("classifier"))  # adapters and the head
    cfg = TrainConfig(workdir=str(run), steps=2, learning_rate=0.05, progress=False)
    trained = train(model, loss_fn, lambda step: data, cfg, trainable=trainable).model
    export_peft.main(["--workdir", str(run), "--rank", "3", "--out", str(tmp_path / "out")])
    assert "checkpoint step 2: r=3 lora_alpha=8.0 target_modules=['query', 'value']" in capsys.readouterr().out
    assert config(tmp_path / "out")["base_model_name_or_path"] == str(tmp_path / "base")
    ours = trained(data["x"], attention_mask=data["m"], sub=SubModel.of(rank=3))
    assert not np.allclose(ours, model(data["x"], attention_mask=data["m"], sub=SubModel.of(rank=3)), atol=1e-3)
    auto = transformers.AutoModelForSequenceClassification
    want = peft_logits(tmp_path / "base", tmp_path / "out", auto, input_ids=tokens, attention_mask=mask)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)

    with pytest.raises(ValueError, match=r"--rank 5 outside the adapters' range r_min..r_max = 1..4"):
        export_peft.main(["--workdir", str(run), "--rank", "5", "--out", str(tmp_path / "o2")])
    with pytest.raises(ValueError, match=r"holds no adapter_source.json .*runs below it: \[.*runs/dylora'\]"):
        export_peft.main(["--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "o2")])
    info = json.loads((run / "adapter_source.json").read_text())
    (run / "adapter_source.json").write_text(json.dumps({**info, "architecture": "resnet"}))
    with pytest.raises(ValueError, match=r"architecture 'resnet' cannot be exported; allowed: \('llama', 'bert'"):
        export_peft.main(["--workdir", str(run), "--out", str(tmp_path / "o2")])
    (run / "adapter_source.json").write_text(json.dumps({**info, "architecture": "bert"}))
    with pytest.raises(ValueError, match=r"architecture 'bert' but its config has model_type 'roberta'"):
        export_peft.main(["--workdir", str(run), "--out", str(tmp_path / "o2")])
    other = _tiny_llama()
    lora.apply_dylora(other, ["q", "v"], r=4)
    lora_runs.write_run_info(run, other)  # a RoBERTa checkpoint described as a LLaMA run
    with pytest.raises(
        ValueError,
        match=r"embed/embedding has shape \(99, 32\), the llama model .* needs \(50, 32\): it is not a checkpoint",
    ):
        export_peft.main(["--workdir", str(run), "--out", str(tmp_path / "o2")])


def headless_bert(path, num_hidden_layers: int, **overrides):
    """A random plain ``BertModel`` checkpoint (no classifier) saved to ``path``, loaded as ours
    (which warns that the classifier is newly initialised)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=num_hidden_layers, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=40,
    )  # fmt: skip
    transformers.BertModel(cfg).eval().save_pretrained(path)
    with pytest.warns(UserWarning, match="newly initialised"):
        return encoder.from_pretrained(str(path), **overrides)


def test_headless_bert_export_loads_onto_peft_bertmodel_with_equal_outputs(tmp_path):
    """A DyLoRA adapter trained on a plain BertModel checkpoint (e.g. all-MiniLM-L6-v2) is named for
    BertModel (no ``bert.`` prefix, no classifier), so PEFT loads every key onto ``BertModel``."""
    model = headless_bert(tmp_path / "base", num_hidden_layers=2)
    assert model.hf_descriptor().headless and model.hf_descriptor().layer_prefix == "encoder.layer."
    lora.apply_dylora(model, ["query", "value"], r=4, alpha=8.0, r_min=2)
    randomize_up(model)
    model.pooler.bias[...] += 0.5  # a trained pooler: BertModel has it, so it is written
    with pytest.warns(UserWarning, match=r"\['classifier'\].*headless base model"):
        lora.save_peft(model, tmp_path / "adapter", rank=3)
    cfg = config(tmp_path / "adapter")
    assert (cfg["task_type"], cfg["modules_to_save"]) == ("FEATURE_EXTRACTION", ["pooler"])
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert not any(k.startswith("base_model.model.bert.") or "classifier" in k for k in keys)
    tokens, mask, _ = batch(0, 1)
    out = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask), sub=SubModel.of(rank=3), head=False)
    ref = peft.PeftModel.from_pretrained(transformers.BertModel.from_pretrained(str(tmp_path / "base")).eval(),
                                         str(tmp_path / "adapter")).eval()  # fmt: skip
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(out.last_hidden_state, theirs.last_hidden_state.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out.pooler_output, theirs.pooler_output.numpy(), atol=1e-4, rtol=1e-4)
    full = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask), head=False).last_hidden_state
    assert not np.allclose(out.last_hidden_state, full, atol=1e-3)  # the adapters changed the outputs


def test_export_refuses_adapter_names_the_checkpoint_lacks(tmp_path, monkeypatch):
    import dataclasses

    save_encoder(tmp_path / "base", "bert", num_hidden_layers=2)
    model = encoder.from_pretrained(str(tmp_path / "base"))
    lora.apply_dylora(model, ["query"], r=4, alpha=8.0)
    good = model.hf_descriptor()
    headless_tensors = frozenset(n.removeprefix("bert.") for n in good.tensors if not n.startswith("classifier"))
    wrong = dataclasses.replace(good, tensors=headless_tensors, headless=True)  # task names, headless checkpoint
    monkeypatch.setattr(type(model), "hf_descriptor", lambda self: wrong)
    with pytest.raises(ValueError, match=r"adapter keys \['base_model.model.bert.encoder.layer.0.attention.self"):
        lora.save_peft(model, tmp_path / "adapter", modules_to_save=False)
    assert not (tmp_path / "adapter").exists()


def test_a_fresh_head_left_frozen_by_the_dylora_recipe_is_named(tmp_path):
    import warnings as w

    from sortedjax import train as sj_train
    from sortedjax.methods import dylora

    model = headless_bert(tmp_path / "base", num_hidden_layers=1, num_labels=2)
    assert model.fresh_modules == ("classifier",)  # BertModel holds the pooler, not the classifier
    lora.apply_dylora(model, ["query"], r=2, alpha=2.0)
    tokens, mask, _ = batch(0, 1)
    data = sj_train.ArrayBatches({"x": tokens, "m": mask, "y": np.array([0, 1, 0])}, 3)

    def loss_fn(m, b, key):
        logits = m(b["x"], attention_mask=b["m"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), b["y"][:, None], -1)), {}

    run = dict(steps=1, log_every=1, checkpoint_every=1, progress=False)
    with pytest.warns(UserWarning, match=r"\['classifier'\] were newly initialised .* leaves them frozen"):
        sj_train.train(model, loss_fn, data, sj_train.TrainConfig(workdir=str(tmp_path / "a"), **run),
                       trainable=lora.LoRAParam)  # fmt: skip
    before = np.asarray(model.classifier.kernel[...])
    with w.catch_warnings():
        w.simplefilter("error", UserWarning)
        res = sj_train.train(model, loss_fn, data, sj_train.TrainConfig(workdir=str(tmp_path / "b"), **run),
                             trainable=dylora.trainable(nnx.PathContains("classifier")))  # fmt: skip
    assert not np.allclose(np.asarray(res.model.classifier.kernel[...]), before)
