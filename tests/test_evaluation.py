"""Exact match, ROUGE-L and the pairwise (W-L)/(W+L+T) score over both presentation orders."""

import numpy as np
import pytest

from sortedjax.metrics import evaluation as ev


def test_exact_match_normalizes():
    assert ev.exact_match("The Eiffel Tower.", ["eiffel tower"])
    assert not ev.exact_match("tower", ["eiffel tower"])
    assert ev.exact_match_accuracy(["7", "8", "x"], [["7"], ["9"], ["x", "y"]]) == pytest.approx(200 / 3)


def test_rouge_l():
    assert ev.best_rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS of "cat sat mat" vs "cat on mat" = 2 -> P = R = 2/3
    assert ev.best_rouge_l("cat sat mat", "cat on mat") == pytest.approx(2 / 3)
    assert ev.best_rouge_l("", "x") == 0.0


def test_pairwise_both_orders_and_formula():
    ins = ["q1", "q2", "q3", "q4"]
    refs = [["a"], ["b"], ["c"], ["d e f"]]
    a = ["a", "b", "x", "d e"]  # win, tie (both right), loss, win by rouge
    b = ["z", "b", "c", "d"]
    w, l, t = ev.pairwise_counts(ins, a, b, refs, ev.ExactMatchJudge())
    assert (w, l, t) == (4, 2, 2)
    assert ev.pairwise_score(ins, a, b, refs) == pytest.approx((4 - 2) / 8)
    assert ev.pairwise_score(ins, b, a, refs) == pytest.approx(-(4 - 2) / 8)


def test_position_biased_judge_cancels():
    first_always = lambda ins, r1, r2, ref: 1  # noqa: E731
    assert ev.pairwise_score(["q"] * 3, ["a"] * 3, ["b"] * 3, [["a"]] * 3, first_always) == 0.0


def test_llm_judge_hook():
    prompts = []

    def fake_llm(prompt):
        prompts.append(prompt)
        return "2\n\nReason: response 2 is right" if "### Response 2:\nright" in prompt else "1"

    j = ev.LLMJudge(fake_llm)
    assert ev.pairwise_score(["q"], ["right"], ["wrong"], [["right"]], j) == 1.0
    assert "### Instruction:\nq" in prompts[0]
    assert ev.LLMJudge(lambda p: "Tie")("q", "a", "b", []) == 0


def test_pairwise_matrix_antisymmetric():
    outs = {"soft@2": ["a", "x"], "sft@2": ["y", "x"], "soft@4": ["a", "b"]}
    m = ev.pairwise_matrix(outs, list(outs), list(outs), ["q1", "q2"], [["a"], ["b"]])
    np.testing.assert_allclose(m, -m.T)
    assert m[0, 1] > 0 and np.all(np.diag(m) == 0)
    with pytest.raises(ValueError, match="'nope'"):
        ev.pairwise_matrix(outs, ["nope"], ["sft@2"], ["q1", "q2"], [["a"], ["b"]])


def test_one_rouge_l_for_the_judge_and_the_nlg_scores():
    from sortedjax.metrics import text

    p, refs = "The cat sat, on a mat!", ["cat on the mat", "a dog sat"]
    per_ref = [text.rouge_l(p, [r], beta=1.0, tokenize=ev.answer_tokens) for r in refs]
    assert ev.best_rouge_l(p, refs) == pytest.approx(max(per_ref)) == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    # the E2E style (beta 1.2, best precision and recall over references) is the same function's default
    assert text.rouge_l("a b c", ["a b", "c"]) == pytest.approx((1 + 1.44) * (2 / 3) * 1.0 / (1.0 + 1.44 * 2 / 3))
