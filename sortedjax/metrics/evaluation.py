"""Scoring generated responses: exact match, ROUGE-L and pairwise judge scores (thesis 5.5).

The pairwise score of system A against system B over a set of prompts is

    (W - L) / (W + L + T)

where each prompt is judged twice, once with A's response shown first and once with B's
first (position bias cancels), and W / L / T count A's wins, losses and ties over all
judgements. It lies in [-1, 1]; 0 means the two are as good as each other.

A *judge* is any callable ``judge(instruction, response_1, response_2, references) ->
1 | 2 | 0`` (0 = tie). Built in: :class:`ExactMatchJudge` (exact match decides; when both or
neither match, the higher ROUGE-L against the references wins) and :class:`LLMJudge`, a
hook that formats a PandaLM-style prompt, calls any text generator (e.g. a PandaLM
checkpoint behind ``generate``) and parses its verdict.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sortedjax.metrics.text import rouge_l

Judge = Callable[[str, str, str, Sequence[str]], int]


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, articles and extra whitespace (SQuAD / TriviaQA)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str] | str) -> bool:
    refs = [references] if isinstance(references, str) else list(references)
    p = normalize_answer(prediction)
    return any(p == normalize_answer(r) for r in refs)


def exact_match_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> float:
    """Percentage of predictions that exactly match one of their references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference sets")
    if not predictions:
        return 0.0
    return 100.0 * float(np.mean([exact_match(p, r) for p, r in zip(predictions, references)]))


def answer_tokens(text: str) -> list[str]:
    """The words of :func:`normalize_answer` (ROUGE-L of answers is taken over these)."""
    return normalize_answer(text).split()


def best_rouge_l(prediction: str, references: Sequence[str] | str) -> float:
    """The best ROUGE-L F1 (``beta=1``, over :func:`answer_tokens`) of ``prediction`` against any one reference."""
    refs = [references] if isinstance(references, str) else list(references)
    return max((rouge_l(prediction, [r], beta=1.0, tokenize=answer_tokens) for r in refs), default=0.0)


class ExactMatchJudge:
    """Exact match decides; if both or neither match, higher ROUGE-L wins (else a tie)."""

    def __init__(self, tol: float = 1e-9):
        self.tol = tol

    def __call__(self, instruction: str, response_1: str, response_2: str, references: Sequence[str]) -> int:
        m1, m2 = exact_match(response_1, references), exact_match(response_2, references)
        if m1 != m2:
            return 1 if m1 else 2
        if m1:
            return 0
        r1, r2 = best_rouge_l(response_1, references), best_rouge_l(response_2, references)
        if abs(r1 - r2) <= self.tol:
            return 0
        return 1 if r1 > r2 else 2


PANDALM_PROMPT = (
    "Below are two responses for a given task. The task is defined by the Instruction. "
    "Evaluate the responses and generate a reference answer for the task.\n\n"
    "### Instruction:\n{instruction}\n\n### Response 1:\n{response_1}\n\n"
    "### Response 2:\n{response_2}\n\n### Evaluation:\n"
)


class LLMJudge:
    """Hook for an LLM judge such as PandaLM.

    ``generate(prompt) -> text`` is any text generator; its first line is read as the
    verdict: ``1``, ``2`` or ``Tie`` (PandaLM's output format). Unparseable -> tie.
    """

    def __init__(self, generate: Callable[[str], str], template: str = PANDALM_PROMPT):
        self.generate = generate
        self.template = template

    def __call__(self, instruction: str, response_1: str, response_2: str, references: Sequence[str]) -> int:
        text = self.generate(
            self.template.format(instruction=instruction, response_1=response_1, response_2=response_2)
        )
        first = (text.strip().splitlines() or [""])[0].strip().lower()
        if first.startswith("1"):
            return 1
        if first.startswith("2"):
            return 2
        return 0


def pairwise_counts(
    instructions: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    references: Sequence[Sequence[str]],
    judge: Judge,
) -> tuple[int, int, int]:
    """A's (wins, losses, ties) over both presentation orders of every prompt."""
    n = len(instructions)
    if not (len(responses_a) == len(responses_b) == len(references) == n):
        raise ValueError(
            f"pairwise needs equal lengths: {n} instructions, {len(responses_a)} and "
            f"{len(responses_b)} responses, {len(references)} references"
        )
    w = l = t = 0
    for ins, a, b, ref in zip(instructions, responses_a, responses_b, references):
        for verdict, a_pos in ((judge(ins, a, b, ref), 1), (judge(ins, b, a, ref), 2)):
            if verdict not in (0, 1, 2):
                raise ValueError(f"judge returned {verdict!r}; expected 1, 2 or 0 (tie)")
            if verdict == 0:
                t += 1
            elif verdict == a_pos:
                w += 1
            else:
                l += 1
    return w, l, t


def pairwise_score(
    instructions: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    references: Sequence[Sequence[str]],
    judge: Judge | None = None,
) -> float:
    """(W - L) / (W + L + T) of A against B, averaged over both presentation orders."""
    w, l, t = pairwise_counts(instructions, responses_a, responses_b, references, judge or ExactMatchJudge())
    total = w + l + t
    return 0.0 if total == 0 else (w - l) / total


def pairwise_matrix(
    outputs: Mapping[str, Sequence[str]],
    rows: Sequence[str],
    cols: Sequence[str],
    instructions: Sequence[str],
    references: Sequence[Sequence[str]],
    judge: Judge | None = None,
) -> np.ndarray:
    """``M[i, j]`` = pairwise score of system ``rows[i]`` against ``cols[j]``.

    ``outputs`` maps a system name (e.g. ``"soft@12"``) to its responses, one per prompt.
    """
    judge = judge or ExactMatchJudge()
    for name in (*rows, *cols):
        if name not in outputs:
            raise ValueError(f"no outputs for system {name!r}; have {sorted(outputs)}")
    m = np.zeros((len(rows), len(cols)))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            m[i, j] = pairwise_score(instructions, outputs[r], outputs[c], references, judge)
    return m
