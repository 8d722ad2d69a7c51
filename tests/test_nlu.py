"""NLU pieces (GLUE specs and loader, metrics, generated tasks, tokenizer, MLM pre-training round
trip) and the text metrics (BLEU-4, ROUGE-L) against hand-computed values."""

import json
import math

import numpy as np
import pytest

from sortedjax.data import nlg as nlg_data
from sortedjax.data import nlu
from sortedjax.data.nlu import pretrain as nlu_pretrain
from sortedjax.data.nlu import tasks as nlu_tasks
from sortedjax.data.tokenizer import build_tokenizer
from sortedjax.metrics import text as text_metrics


def test_metrics_hand_computed_and_sklearn():
    from sklearn.metrics import f1_score, matthews_corrcoef

    pred, y = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])  # tp 2, fp 1, fn 1, tn 2
    assert nlu.metric("accuracy", pred, y) == pytest.approx(400 / 6)
    assert nlu.metric("f1", pred, y) == pytest.approx(100 * 4 / 6)  # 2tp / (2tp + fp + fn)
    assert nlu.metric("matthews", pred, y) == pytest.approx(100 * (4 - 1) / 9)  # (tp tn - fp fn) / 3^2
    assert nlu.metric("f1", pred, y) == pytest.approx(100 * f1_score(y, pred))
    assert nlu.metric("matthews", pred, y) == pytest.approx(100 * matthews_corrcoef(y, pred))
    assert nlu.metric("pearson", [1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(100 * 5 / math.sqrt(2 * 114 / 9))
    assert nlu.metric("matthews", [1, 1], [1, 0]) == 0.0 and nlu.metric("pearson", [1.0, 1.0], [0.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="unknown metric 'auc'; allowed"):
        nlu.metric("auc", pred, y)
    with pytest.raises(ValueError, match="equal-length"):
        nlu.metric("accuracy", [1, 0], [1])


def test_task_specs_and_unknown_names():
    assert {n: nlu.task_spec(n).metric for n in ("cola", "stsb", "mrpc", "sst2", "mnli")} == {
        "cola": "matthews",
        "stsb": "pearson",
        "mrpc": "f1",
        "sst2": "accuracy",
        "mnli": "accuracy",
    }
    assert nlu.task_spec("stsb").regression and nlu.task_spec("mnli").num_labels == 3
    with pytest.raises(ValueError, match=r"unknown GLUE config 'sst3'; allowed: \('sst2', 'mrpc'"):
        nlu.load_glue("sst3")
    with pytest.raises(ValueError, match="unknown task 'foo'; allowed: GLUE configs .* generated .*'negation'"):
        nlu.task_spec("foo")


def test_load_glue_from_local_files(tmp_path):
    f = tmp_path / "mnli.jsonl"
    rows = [
        {"premise": "a b", "hypothesis": "c", "label": 2, "idx": 0},
        {"premise": "d", "hypothesis": "e f", "label": 0, "idx": 1},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    ex = nlu.load_glue("mnli", source=str(f))
    assert ex == [nlu.Example("a b", "c", 2.0), nlu.Example("d", "e f", 0.0)]
    g = tmp_path / "sst2.csv"
    g.write_text("sentence,label,idx\ngood film,1,0\nbad,0,1\n")
    assert nlu.load_glue("sst2", source=str(g)) == [nlu.Example("good film", None, 1.0), nlu.Example("bad", None, 0.0)]
    with pytest.raises(ValueError, match=r"\(rte\) is missing field 'sentence1'"):
        nlu.load_glue("rte", source=str(f))  # rte needs sentence1 / sentence2
    t = tmp_path / "test.csv"
    t.write_text("sentence,label,idx\nx,-1,0\n")
    with pytest.raises(ValueError, match="has no label .* a test split"):
        nlu.load_glue("sst2", source=str(t))


def test_generated_tasks_labels_follow_their_rules():
    for name, task in nlu_tasks.TASKS.items():
        tr, ev = nlu_tasks.make_task(name, n_train=300, n_eval=50, seed=1)
        assert tr == nlu_tasks.make_task(name, n_train=300, n_eval=50, seed=1)[0]  # deterministic
        assert tr[:50] != ev and (tr[0].text_b is None) == (len(task.spec.text_keys) == 1)
    tr, _ = nlu_tasks.make_task("negation", n_train=400, n_eval=1)
    for e in tr:
        pos = any(w in nlu_tasks.POSITIVE for w in e.text_a.split())
        neg = any(w in nlu_tasks.NEGATORS for w in e.text_a.split())
        assert e.label == float(pos != neg)
    tr, _ = nlu_tasks.make_task("binding", n_train=300, n_eval=1)
    assert 0.25 < np.mean([e.label == 0 for e in tr]) < 0.42
    for e in tr:
        _, noun, _, colour = e.text_b.split()
        facts = dict(p.split(" is ") for p in e.text_a.replace("the ", "").replace(" and ", " , ").split(" , "))
        assert e.label == (1.0 if noun not in facts else 0.0 if facts[noun] == colour else 2.0)
    with pytest.raises(ValueError, match="unknown generated task 'x'"):
        nlu_tasks.make_task("x")


def test_tokenizer_pairs_and_encode():
    tok = build_tokenizer(["the kalo was good", "the x is red"], style="bert")
    enc = nlu.encode(tok, [nlu.Example("the kalo was good", "the x is red", 1.0)], max_len=16)
    ids = enc["ids"][0]
    assert ids[0] == tok.cls_token_id and list(ids).count(tok.sep_token_id) == 2
    assert enc["types"][0][:6].tolist() == [0] * 6 and enc["types"][0][6:11].tolist() == [1] * 5
    assert enc["mask"].sum() == 11 and enc["ids"].shape == (1, 16) and enc["label"].tolist() == [1.0]


@pytest.mark.slow
def test_pretrained_encoder_round_trips_as_hf_checkpoint(tmp_path):
    from transformers import AutoTokenizer

    from sortedjax.models import encoder

    cfg = nlu_pretrain.PretrainConfig(
        hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, num_docs=64, steps=4, batch_size=8, max_len=16
    )
    last = nlu_pretrain.pretrain(str(tmp_path / "hf"), cfg, workdir=str(tmp_path / "train"))
    assert np.isfinite(last["loss"]) and 0 <= last["mlm_accuracy"] <= 1
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok.mask_token == "[MASK]" and tok("the kalo", "red")["token_type_ids"][-1] == 1
    model = encoder.from_pretrained(str(tmp_path / "hf"), num_labels=3)
    assert model.cfg.num_labels == 3 and model.cfg.vocab_size == len(tok)
    arr = nlu.encode(tok, nlu_tasks.make_task("binding", n_train=4, n_eval=1)[0], 16)
    assert nlu.predict(model, arr).shape == (4,)


def test_bleu_and_rouge_l_hand_computed():
    cand, refs = ["the cat sat on the mat"], [["the cat is on the mat"]]
    # p1 5/6, p2 3/5, p3 1/4, p4 0/3 -> BLEU-4 0 (no smoothing); BLEU-2 = sqrt(5/6 * 3/5) (BP 1)
    assert text_metrics.corpus_bleu(cand, refs) == 0.0
    assert text_metrics.corpus_bleu(cand, refs, max_n=2) == pytest.approx(100 * math.sqrt(0.5))
    # identical -> 100; short candidate -> brevity penalty exp(1 - 6/5)
    assert text_metrics.corpus_bleu(["a b c d e f"], [["a b c d e f"]]) == pytest.approx(100)
    assert text_metrics.corpus_bleu(["a b c d e"], [["a b c d e f", "x y"]]) == pytest.approx(100 * math.exp(1 - 6 / 5))
    # clipping: "the the the" against "the cat": p1 = 1/3
    assert text_metrics.corpus_bleu(["the the the"], [["the cat"]], max_n=1) == pytest.approx(100 / 3)
    # ROUGE-L: LCS(the cat sat on the mat, the cat is on the mat) = 5; P = R = 5/6 -> F = 5/6
    assert text_metrics.corpus_rouge_l(cand, refs) == pytest.approx(100 * 5 / 6)
    # P = 2/2, R = 2/4 (best over references taken separately), beta 1.2
    want = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44 * 1)
    assert text_metrics.corpus_rouge_l(["a b"], [["a x b y", "q"]]) == pytest.approx(100 * want)
    with pytest.raises(ValueError, match="2 candidates but 1 reference sets"):
        text_metrics.corpus_bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="reference set 0 must be a non-empty list"):
        text_metrics.corpus_rouge_l(["a"], ["a"])


def test_e2e_loader_groups_references(tmp_path):
    f = tmp_path / "e2e.csv"
    f.write_text(
        'mr,ref\n"name[Kalo], food[Italian]",Kalo serves Italian food.\n"name[Kalo], food[Italian]",Kalo is Italian.\n"name[Bo]",Bo.\n'
    )
    recs = nlg_data.load_e2e(str(f))
    assert recs == [
        nlg_data.D2T("name[Kalo], food[Italian]", ("Kalo serves Italian food.", "Kalo is Italian.")),
        nlg_data.D2T("name[Bo]", ("Bo.",)),
    ]
    assert recs[0].prompt == "name[Kalo], food[Italian] =" and recs[0].output == "Kalo serves Italian food."
    g = tmp_path / "hf.jsonl"
    g.write_text(json.dumps({"meaning_representation": "name[A]", "human_reference": "A."}) + "\n")
    assert nlg_data.load_e2e(str(g))[0].references == ("A.",)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="needs fields 'meaning_representation' and 'human_reference'"):
        nlg_data.load_e2e(str(bad))
    train, ev = nlg_data.generated(20, 5)
    assert (
        len(ev) == 5
        and all(len(r.references) == 3 for r in ev)
        and {r.mr for r in train}.isdisjoint({r.mr for r in ev})
    )
