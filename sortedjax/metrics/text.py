"""Corpus BLEU-4 and ROUGE-L for generated text against several references (the E2E NLG scores).

* :func:`corpus_bleu` -- Papineni et al. (2002): clipped n-gram precisions ``p_1..p_4`` summed over
  the corpus, their geometric mean, times the brevity penalty ``exp(1 - r / c)`` when the total
  candidate length ``c`` is below ``r``, the sum of the reference lengths closest to each candidate
  (ties: the shorter). No smoothing: a corpus with no matching 4-gram scores 0.
* :func:`corpus_rouge_l` -- ROUGE-L as the E2E / COCO evaluation scripts compute it: per candidate,
  ``P = max_ref LCS / len(candidate)``, ``R = max_ref LCS / len(ref)``, ``F = (1 + b^2) P R / (R + b^2 P)``
  with ``b = 1.2``; averaged over the corpus.

Both work on lower-cased whitespace tokens and return percentages.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence


def tokens(text: str) -> list[str]:
    return text.lower().split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _check(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if not candidates:
        raise ValueError("no candidates to score")
    empty = [i for i, r in enumerate(references) if isinstance(r, str) or not r]
    if empty:
        raise ValueError(f"reference set {empty[0]} must be a non-empty list of strings")


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` (percent) of ``candidates[i]`` against the list ``references[i]``."""
    _check(candidates, references)
    match, total = [0] * max_n, [0] * max_n
    c_len = r_len = 0
    for cand, refs in zip(candidates, references):
        c = tokens(cand)
        rs = [tokens(r) for r in refs]
        c_len += len(c)
        r_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            cn = _ngrams(c, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r, n)  # max count of each n-gram over the references
            match[n - 1] += sum(min(k, best[g]) for g, k in cn.items())
            total[n - 1] += max(len(c) - n + 1, 0)
    if min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / max_n
    bp = 1.0 if c_len > r_len else math.exp(1.0 - r_len / max(c_len, 1))
    return 100.0 * bp * math.exp(log_p)


def rouge_l(
    candidate: str, references: Sequence[str], beta: float = 1.2, tokenize: Callable[[str], list[str]] = tokens
) -> float:
    """ROUGE-L F (fraction) of one candidate against its references (COCO / E2E style): ``P`` and ``R``
    are the best LCS precision and recall over the references, ``F = (1 + b^2) P R / (R + b^2 P)``.
    ``beta=1`` with one reference is the plain LCS F1 (the judge's :func:`~sortedjax.metrics.evaluation.best_rouge_l`)."""
    c = tokenize(candidate)
    if not c:
        return 0.0
    prec, rec = 0.0, 0.0
    for ref in references:
        r = tokenize(ref)
        lcs = lcs_length(c, r)
        if r:
            prec, rec = max(prec, lcs / len(c)), max(rec, lcs / len(r))
    if prec == 0 or rec == 0:
        return 0.0
    return (1 + beta**2) * prec * rec / (rec + beta**2 * prec)


def corpus_rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Mean ROUGE-L F over the corpus, percent."""
    _check(candidates, references)
    return 100.0 * sum(rouge_l(c, r, beta) for c, r in zip(candidates, references)) / len(candidates)
