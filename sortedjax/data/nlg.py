"""Data-to-text for DyLoRA's NLG experiment (thesis Table 3.6): E2E NLG and an offline generated task.

A :class:`D2T` record is a meaning representation (``name[Kalo], food[Italian], ...``) with every
human reference for it; ``prompt`` / ``output`` make it usable by
:func:`sortedjax.data.instruct.encode.encode_sft` (``BOS mr = reference EOS``, loss on the reference).

* :func:`load_e2e` -- ``datasets.load_dataset("e2e_nlg")`` (fields ``meaning_representation`` /
  ``human_reference``) or a local file in that format or the original E2E CSV (``mr`` / ``ref``);
  references are grouped by meaning representation.
* :func:`generated` -- restaurant meaning representations over invented names, each verbalised by
  several templates (multi-reference, like E2E); eval names never occur in training.
* :func:`lm_loss` -- next-token cross-entropy on the reference tokens of a causal LM at a sub-model.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import jax.numpy as jnp
import optax

from sortedjax.data.instruct.loaders import load_records

FOODS = ("italian", "french", "chinese", "indian", "japanese", "english")
AREAS = ("riverside", "city centre")
PRICES = ("cheap", "moderate", "high")
RATINGS = ("low", "average", "high")


@dataclasses.dataclass(frozen=True)
class D2T:
    mr: str
    references: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return f"{self.mr} ="

    @property
    def output(self) -> str:  # the first reference is the training target of this record
        return self.references[0]


def load_e2e(source: str = "e2e_nlg", split: str = "train", *, limit: int | None = None) -> list[D2T]:
    """E2E NLG records through ``datasets`` (hub name or local JSON / CSV file), grouped by MR."""

    rows = load_records(source, split=split)
    grouped: dict[str, list[str]] = {}
    for i, r in enumerate(rows):
        mr = r.get("meaning_representation", r.get("mr"))
        ref = r.get("human_reference", r.get("ref"))
        if mr is None or ref is None:
            raise ValueError(
                f"record {i} of {source!r} needs fields 'meaning_representation' and 'human_reference' "
                f"(or 'mr' and 'ref'); it has {sorted(r)}"
            )
        grouped.setdefault(str(mr), []).append(str(ref))
    out = [D2T(mr, tuple(refs)) for mr, refs in grouped.items()]
    if not out:
        raise ValueError(f"no records in {source!r} (split {split!r})")
    return out[:limit]


def _name(rng: random.Random) -> str:
    syl = ("ka", "lo", "mi", "ta", "ve", "zu", "ro", "be", "do", "sa", "ni", "fe", "ga", "ti", "po", "ri")
    return (rng.choice(syl) + rng.choice(syl) + rng.choice(syl)).capitalize()


def _verbalise(f: dict, style: int) -> str:
    n, food, area, price = f["name"], f["food"], f["area"], f["price"]
    rating = f.get("rating")
    tail = f" with a {rating} customer rating" if rating else ""
    if style == 0:
        return f"{n} is a {price} priced {food} restaurant in the {area}{tail} ."
    if style == 1:
        return f"in the {area} there is a {food} place called {n} , its prices are {price}{tail} ."
    return f"{n} serves {food} food at {price} prices in the {area}{tail} ."


def generated(n_train: int = 1500, n_eval: int = 100, *, seed: int = 0) -> tuple[list[D2T], list[D2T]]:
    """``(train, eval)``: random restaurants; train records carry one template each (3 per MR in
    all, as separate records), eval records all three as references."""
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be >= 1, got {n_train}, {n_eval}")
    rng = random.Random(f"d2t-{seed}")
    names: list[str] = []
    while len(names) < n_train + n_eval:
        w = _name(rng)
        if w not in names:
            names.append(w)

    def record(name: str) -> tuple[str, list[str]]:
        f = {"name": name, "food": rng.choice(FOODS), "area": rng.choice(AREAS), "price": rng.choice(PRICES)}
        if rng.random() < 0.5:
            f["rating"] = rng.choice(RATINGS)
        keys = ("name", "food", "area", "price", "rating")
        mr = " , ".join(f"{k} [ {f[k]} ]" for k in keys if k in f)
        return mr, [_verbalise(f, s) for s in range(3)]

    train = []
    for name in names[:n_train]:
        mr, refs = record(name)
        s = rng.randrange(3)
        train.append(D2T(mr, (refs[s], *refs[:s], *refs[s + 1 :])))
    ev = [D2T(*(lambda m, r: (m, tuple(r)))(*record(name))) for name in names[n_train:]]
    return train, ev


def lm_loss(model, batch: dict, sub):
    """Mean next-token cross-entropy over the reference tokens (``batch["mask"]``) at ``sub``."""
    logits = model(batch["inputs"], sub=sub)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    w = batch["mask"]
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0), {}


def texts_for_pretraining(records: Sequence[D2T]) -> list[str]:
    """LM pre-training text of the offline GPT-2: every reference sentence, without its MR."""
    return [r for rec in records for r in rec.references]
