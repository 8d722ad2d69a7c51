"""Generated offline sentence(-pair) classification tasks of graded difficulty, and their text.

One small world (invented nouns, English sentiment adjectives, colours, fillers) serves every task:

=========== ===== ========================================================== ===========
task        level what decides the label                                      metric
=========== ===== ========================================================== ===========
polarity    1     the one sentiment word of the sentence (2 classes)         accuracy
negation    2     the clause's sentiment, flipped by ``not`` / ``never``         accuracy
contrast    3     as negation, but 60% of the sentences start with a        accuracy
                  distractor clause (``... but`` / ``... and``): the last
                  clause decides
overlap     2     sentence pair: 5 x the fraction of shared words (regression) pearson
binding     3     sentence pair: does the premise give the hypothesis' noun   accuracy
                  that colour (entailment), another colour (contradiction),
                  or not mention the noun (neutral) -- 3 classes, MNLI-like
=========== ===== ========================================================== ===========

:func:`make_task` draws train / eval examples (:class:`sortedjax.data.nlu.Example`) from a seed;
:func:`corpus` is unlabeled text from every task's generator, the masked-LM pre-training text of
:mod:`sortedjax.data.nlu.pretrain`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from sortedjax.data.nlu.glue import GLUE, Example, TaskSpec

_SYL = ("ka", "lo", "mi", "ta", "ve", "zu", "ro", "be", "do", "sa", "ni", "qu", "fe", "ga", "ti", "po")
POSITIVE = ("good", "great", "lovely", "fine", "superb", "pleasant", "brilliant", "excellent", "nice", "happy")
NEGATIVE = ("bad", "awful", "poor", "terrible", "dull", "horrible", "boring", "sad", "nasty", "weak")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
FILLERS = ("today", "again", "really", "quite", "very", "still", "here", "there", "indeed", "somehow")
VERBS = ("was", "is", "seemed", "looked", "felt")
NEGATORS = ("not", "never")


def nouns(n: int = 48, seed: int = 1234) -> tuple[str, ...]:
    """``n`` invented two-syllable nouns (fixed by ``seed``, shared by every task)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        w = rng.choice(_SYL) + rng.choice(_SYL)
        if w not in out:
            out.append(w)
    return tuple(out)


NOUNS = nouns()
WORDS = (*NOUNS, *POSITIVE, *NEGATIVE, *COLOURS, *FILLERS, *VERBS, *NEGATORS, "the", "but", "and", ",")


def _fill(rng: random.Random, k: int) -> list[str]:
    return [rng.choice(FILLERS) for _ in range(rng.randint(0, k))]


def _polarity(rng: random.Random) -> Example:
    label = rng.randint(0, 1)
    adj = rng.choice(POSITIVE if label else NEGATIVE)
    words = ["the", rng.choice(NOUNS), rng.choice(VERBS), *_fill(rng, 2), adj, *_fill(rng, 2)]
    return Example(" ".join(words), None, float(label))


def _clause(rng: random.Random) -> tuple[list[str], int]:
    """``the N verb [not] ADJ``: its sentiment after negation."""
    pos, neg = rng.random() < 0.5, rng.random() < 0.5
    words = ["the", rng.choice(NOUNS), rng.choice(VERBS), *(["not" if rng.random() < 0.5 else "never"] if neg else [])]
    words.append(rng.choice(POSITIVE if pos else NEGATIVE))
    return words, int(pos != neg)


def _negation(rng: random.Random, distractor: float = 0.0) -> Example:
    last, label = _clause(rng)
    if rng.random() < distractor:  # a distractor clause first
        first, _ = _clause(rng)
        last = [*first, rng.choice(("but", "and")), *last]
    return Example(" ".join([*last, *_fill(rng, 1)]), None, float(label))


def _contrast(rng: random.Random) -> Example:
    return _negation(rng, distractor=0.6)


def _overlap(rng: random.Random) -> Example:
    pool = [*NOUNS, *POSITIVE, *NEGATIVE, *COLOURS]
    a = rng.sample(pool, 6)
    shared = rng.randint(0, 6)
    rest = [w for w in pool if w not in a]
    b = rng.sample(a, shared) + rng.sample(rest, 6 - shared)
    rng.shuffle(b)
    return Example(" ".join(a), " ".join(b), 5.0 * shared / 6)


def _binding(rng: random.Random) -> Example:
    k = rng.randint(2, 3)
    ns, cs = rng.sample(NOUNS, k + 1), [rng.choice(COLOURS) for _ in range(k)]
    parts = [f"the {n} is {c}" for n, c in zip(ns, cs)]
    premise = " , ".join(parts[:-1]) + " and " + parts[-1]
    label = rng.randint(0, 2)  # 0 entailment, 1 neutral, 2 contradiction (MNLI's order)
    if label == 1:
        noun, colour = ns[k], rng.choice(COLOURS)
    else:
        i = rng.randrange(k)
        noun = ns[i]
        colour = cs[i] if label == 0 else rng.choice([c for c in COLOURS if c != cs[i]])
    return Example(premise, f"the {noun} is {colour}", float(label))


@dataclasses.dataclass(frozen=True)
class GeneratedTask:
    spec: TaskSpec
    level: int  # 1 easy .. 3 hard
    draw: Callable[[random.Random], Example]


TASKS: dict[str, GeneratedTask] = {
    "polarity": GeneratedTask(
        TaskSpec(name="polarity", text_keys=("sentence",), num_labels=2, metric="accuracy"), 1, _polarity
    ),
    "negation": GeneratedTask(
        TaskSpec(name="negation", text_keys=("sentence",), num_labels=2, metric="accuracy"), 2, _negation
    ),
    "contrast": GeneratedTask(
        TaskSpec(name="contrast", text_keys=("sentence",), num_labels=2, metric="accuracy"), 3, _contrast
    ),
    "overlap": GeneratedTask(
        TaskSpec(name="overlap", text_keys=("sentence1", "sentence2"), num_labels=1, metric="pearson"), 2, _overlap
    ),
    "binding": GeneratedTask(
        TaskSpec(name="binding", text_keys=("premise", "hypothesis"), num_labels=3, metric="accuracy"), 3, _binding
    ),
}


def make_task(
    name: str, *, n_train: int = 2000, n_eval: int = 500, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """``(train, eval)`` examples of generated task ``name`` (eval drawn from another stream)."""
    if name not in TASKS:
        raise ValueError(f"unknown generated task {name!r}; allowed: {tuple(TASKS)}")
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be >= 1, got {n_train}, {n_eval}")
    draw = TASKS[name].draw
    tr, ev = random.Random(f"{name}-train-{seed}"), random.Random(f"{name}-eval-{seed}")
    return [draw(tr) for _ in range(n_train)], [draw(ev) for _ in range(n_eval)]


def corpus(num_docs: int = 4000, *, seed: int = 0) -> list[str]:
    """Unlabeled pre-training text: one sentence (or sentence pair) from a random task's generator per document."""
    rng = random.Random(f"corpus-{seed}")
    draws = [t.draw for t in TASKS.values()]
    docs = []
    for _ in range(num_docs):
        e = rng.choice(draws)(rng)
        docs.append(e.text_a if e.text_b is None else f"{e.text_a} . {e.text_b}")
    return docs


def task_spec(name: str) -> TaskSpec:
    """The spec of GLUE config ``name`` or of generated task ``name``."""
    if name in GLUE:
        return GLUE[name]
    if name in TASKS:
        return TASKS[name].spec
    raise ValueError(f"unknown task {name!r}; allowed: GLUE configs {tuple(GLUE)} or generated {tuple(TASKS)}")
