"""Instruction data: template, loaders through `datasets`, bad input, response-only masks."""

import json

import numpy as np
import pytest

from sortedjax.data import instruct as idata


@pytest.fixture(scope="module")
def task():
    return idata.builtin_task(seed=0, num_countries=6, num_things=6)


@pytest.fixture(scope="module")
def tok(task):
    return idata.task_tokenizer(
        idata.builtin_corpus(task, num_docs=50) + [e.prompt + " " + e.output for e in task.train + task.eval]
    )


def test_alpaca_template():
    p = idata.alpaca_prompt("Say hi.")
    assert p.startswith("Below is an instruction that describes a task.")
    assert p.endswith("### Instruction:\nSay hi.\n\n### Response:\n")
    q = idata.alpaca_prompt("Add.", "2 and 3")
    assert "### Input:\n2 and 3\n\n### Response:\n" in q


def test_load_alpaca_json_and_parquet(tmp_path):
    rows = [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Add", "input": "1 2", "output": "3"},
    ]
    js = tmp_path / "a.json"
    js.write_text(json.dumps(rows))
    ex = idata.load_alpaca(str(js))
    assert [e.output for e in ex] == ["hi", "3"] and ex[1].input == "1 2"
    import datasets

    pq = tmp_path / "a.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    assert [e.instruction for e in idata.load_dataset_examples(f"alpaca:{pq}")] == ["Say hi", "Add"]


def test_load_triviaqa_jsonl(tmp_path):
    rows = [{"question": "Capital of France?", "answer": {"value": "Paris", "aliases": ["Paris", "Paree"]}}]
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    (ex,) = idata.load_triviaqa(str(f), config=None)
    assert ex.output == "Paris" and set(ex.references) == {"Paris", "Paree"}
    assert idata.load_dataset_examples(str(f))[0].kind == "triviaqa"


def test_missing_field_named(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "z"}]))
    with pytest.raises(ValueError, match=r"record 1 .*'output'"):
        idata.load_alpaca(str(f))
    with pytest.raises(ValueError, match="'question'"):
        idata.triviaqa_examples([{"answer": {"value": "a"}}])


def test_empty_and_malformed_files_named(tmp_path):
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match=r"data file '.*empty.json' is empty"):
        idata.load_dataset_examples(f"alpaca:{tmp_path / 'empty.json'}")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read \['.*bad.json'\] as json: .*JSON parse error"):
        idata.load_dataset_examples(f"alpaca:{tmp_path / 'bad.json'}")


def test_tokenizer_roundtrip(tmp_path, tok):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "### Response: 3 plus 4 is 7 ."
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)


def test_builtin_task_split(task):
    assert task.eval and task.train
    train_q = {e.instruction for e in task.train}
    assert all(e.answers == (e.output,) for e in task.eval)
    # held-out facts are asked about only in evaluation
    eval_subjects = {e.instruction for e in task.eval}
    assert len(train_q) > len(eval_subjects)


def test_encode_response_only_mask(tok, task):
    ex = task.train[0]
    enc = idata.encode_sft(tok, [ex], max_len=64)
    resp = tok(ex.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    m = enc.mask[0].astype(bool)
    assert enc.targets[0][m].tolist() == resp
    assert enc.inputs[0, 0] == tok.bos_token_id
    # the target is the next input token
    n = int(m.nonzero()[0][-1])
    np.testing.assert_array_equal(enc.inputs[0, 1 : n + 1], enc.targets[0, :n])
    assert enc.num_truncated == 0


def test_truncation_counted_in_warning(tok, task):
    long = idata.Example("What is " + " ".join(["the capital"] * 40) + "?", "vell")
    with pytest.warns(UserWarning, match=r"1 of 2 examples .*max_len=40"):
        enc = idata.encode_sft(tok, [long, task.train[0]], max_len=40, max_response_len=4)
    assert enc.num_truncated == 1
    assert enc.inputs[0, 0] == tok.bos_token_id and enc.mask[0].sum() == 2  # answer + EOS kept
    ids, att = idata.encode_prompts(tok, [task.eval[0]], max_len=60)
    assert att[0, -1] == 1 and ids[0, -1] == tok(":", add_special_tokens=False)["input_ids"][0]


def test_step_batches_pure_function_of_step(tok, task):
    arrays = idata.encode_sft(tok, task.train, max_len=48).arrays()
    get = idata.step_batches(arrays, 4, seed=3)
    a, b = get(7), get(7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["inputs"].shape == (4, 48)


def test_decode_stops_at_eos(tok):
    ids = np.array([[tok.convert_tokens_to_ids("red"), tok.eos_token_id, tok.convert_tokens_to_ids("blue")]])
    assert idata.decode_responses(tok, ids) == ["red"]


def test_one_tokenizer_builder_two_styles():
    from sortedjax.data.tokenizer import build_tokenizer

    causal = build_tokenizer(["a b", "b c"])
    assert [causal.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert causal.unk_token_id == 3 and causal("zz").input_ids == [3]
    bert = build_tokenizer(["a b"], style="bert")
    a, b = bert.convert_tokens_to_ids("a"), bert.convert_tokens_to_ids("b")
    assert bert("a", "b").input_ids == [2, a, 3, b, 3] and bert("a", "b").token_type_ids == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="style must be one of \\('causal', 'bert'\\), got 'gpt'"):
        build_tokenizer(["a"], style="gpt")
