"""Sorted encoders (thesis Tables 4.3 and C.3): BERT-base-in-BERT-large export, the GLUE path, and
both experiments end to end on tiny settings."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from experiments import bert_in_bert, sortednet_glue
from sortedjax.data.nlu import pretrain as nlu_pretrain
from sortedjax.data.nlu import tasks as nlu_tasks
from sortedjax.extract import extract
from sortedjax.models import encoder
from sortedjax.submodel import SubModel

LARGE = dict(vocab_size=50, hidden_size=128, num_hidden_layers=8, num_attention_heads=8, intermediate_size=96)


def _tokens(n=3, length=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, LARGE["vocab_size"], (n, length))
    mask = np.ones((n, length), np.int64)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    types = (np.arange(length) >= 4).astype(np.int64)[None].repeat(n, 0)
    return ids, mask, types


def test_base_in_large_exports_as_a_real_smaller_checkpoint_with_equal_logits(tmp_path, model_type="bert"):
    cfg = encoder.EncoderConfig(model_type=model_type, max_position_embeddings=40, num_labels=3, **LARGE)
    model = encoder.Encoder(cfg, rngs=nnx.Rngs(0))
    ids, mask, types = _tokens()
    sizes = {"depth": 4, "width": 64, "heads": 4}
    sub = SubModel.of(**sizes)
    masked = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), sub=sub))
    small = extract(model, sizes)
    np.testing.assert_allclose(small(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)), masked, atol=1e-5)
    encoder.save_pretrained(model, tmp_path / "inner", sub=sub)
    hf_cfg = json.loads((tmp_path / "inner" / "config.json").read_text())
    assert (hf_cfg["num_hidden_layers"], hf_cfg["hidden_size"], hf_cfg["num_attention_heads"]) == (4, 64, 4)
    assert hf_cfg["intermediate_size"] == 96  # the FFN inner width is not a sorted dimension
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "inner").eval()
    assert ref.config.num_attention_heads * 16 == ref.config.hidden_size  # no padded heads
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    np.testing.assert_allclose(out.logits.numpy(), masked, atol=1e-4, rtol=1e-4)
    assert not np.allclose(masked, np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))))


def test_inner_sizes_must_be_a_loadable_bert():
    model = encoder.Encoder(encoder.EncoderConfig(max_position_embeddings=40, **LARGE), rngs=nnx.Rngs(0))
    cfg = bert_in_bert.BertInBertExperiment(inner=(4, 64, 4))
    assert bert_in_bert.inner_sizes(cfg, model) == {"depth": 4, "width": 64, "heads": 4}
    assert bert_in_bert.inner_sizes(bert_in_bert.BertInBertExperiment(), model) == {"depth": 4, "width": 64, "heads": 4}
    with pytest.raises(ValueError, match=r"inner width 48 with 4 heads: a BERT needs width = heads x head_dim \(16\)"):
        bert_in_bert.inner_sizes(bert_in_bert.BertInBertExperiment(inner=(4, 48, 4)), model)
    with pytest.raises(ValueError, match="depth 9 outside the allowed range 1..8"):
        bert_in_bert.inner_sizes(bert_in_bert.BertInBertExperiment(inner=(9, 64, 4)), model)
    with pytest.raises(ValueError, match="inner must be three positive sizes"):
        bert_in_bert.BertInBertExperiment(inner=(4, 64))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        sortednet_glue.SortedGlueExperiment(tasks=("sst3",))
    with pytest.raises(ValueError, match="g_acc must be >= 1, got 0"):
        sortednet_glue.SortedGlueExperiment(g_acc=0)
    with pytest.raises(SystemExit):
        sortednet_glue.parse_args(["--objective", "sandwich"])


def test_glue_path_reads_a_local_file(tmp_path):
    rows = [{"sentence1": f"the {w} was good", "sentence2": f"the {w} was {v}", "label": i % 2} for i, (w, v) in
            enumerate(zip(nlu_tasks.NOUNS[:6], ("good", "bad") * 3))]  # fmt: skip
    path = tmp_path / "mrpc.json"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    tok = nlu_pretrain.build_tokenizer([r["sentence1"] + " " + r["sentence2"] for r in rows])
    cfg = sortednet_glue.SortedGlueExperiment(tasks=("mrpc",), data=str(path), max_len=12, n_eval=4)
    spec, tr, ev = sortednet_glue.load_task(cfg, "mrpc", tok, 0)
    assert spec.metric == "f1" and tr["ids"].shape == (6, 12) and ev["ids"].shape == (4, 12)
    np.testing.assert_array_equal(tr["label"], [0, 1, 0, 1, 0, 1])
    assert (tr["types"][0] == 1).any()  # a sentence pair: the second sentence has token type 1


TINY = ["--pretrain-steps", "3", "--steps", "4", "--batch-size", "8", "--n-train", "40", "--n-eval", "24"]


@pytest.mark.slow
def test_sortednet_glue_runs_end_to_end(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--tasks", "overlap", "--base-layers", "2", "--g-acc", "2"]
    res = sortednet_glue.run(sortednet_glue.parse_args(argv + TINY + ["--retune-steps", "2"]))
    out = capsys.readouterr().out
    assert "Table 4.3" in out and "overlap sorted" in out and "avg retuned" in out
    s = res["summary"]
    assert set(s["overlap"]["sorted"]) == {"1", "2"} and s["overlap"]["metric"] == "pearson"
    for t in ("overlap", "avg"):
        for m in ("standard", "sorted", "retuned"):
            assert all(-100.0 <= v["mean"] <= 100.0 for v in s[t][m].values())
    assert (tmp_path / "score_vs_depth.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == json.loads(json.dumps(s))
    again = sortednet_glue.run(sortednet_glue.parse_args(argv + TINY + ["--retune-steps", "2"]))  # reuses every run
    assert again["summary"] == res["summary"]


@pytest.mark.slow
def test_bert_in_bert_runs_end_to_end(tmp_path, capsys):
    res = bert_in_bert.run(bert_in_bert.parse_args(["--workdir", str(tmp_path), "--task", "polarity", *TINY]))
    assert "Table C.3" in capsys.readouterr().out
    assert res["inner"] == {"depth": 4, "width": 64, "heads": 4} and res["large"]["width"] == 128
    e = res["export"]
    assert e["max_abs_logit_diff"] < 1e-4
    assert e["config"]["hidden_size"] == 64 and e["config"]["num_attention_heads"] == 4
    assert abs(e["score"] - res["sorted"]["inner"]) <= 100 / 24 + 1e-6  # as ours (one near-tie may flip)
    assert (tmp_path / "inner_hf" / "tokenizer.json").exists() and (tmp_path / "bert_in_bert.png").exists()
