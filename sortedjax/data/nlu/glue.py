"""Sentence(-pair) classification and regression for encoders (thesis ch. 3, NLU): tasks, data,
metrics, loss and prediction.

* :data:`GLUE` -- the GLUE configurations the thesis uses (``sst2``, ``mrpc``, ``cola``, ``qnli``,
  ``rte``, ``stsb``, ``qqp``, ``mnli``) with their text fields, label count and the thesis' metric
  (Matthews correlation for CoLA, Pearson for STS-B, F1 for MRPC, accuracy elsewhere);
  :func:`load_glue` reads them through ``datasets.load_dataset("glue", config)`` or from a local
  file with the same fields.
* :func:`metric` -- accuracy, F1, Matthews and Pearson, in percent.
* :func:`encode` -- examples to ``ids`` / ``mask`` / ``types`` / ``label`` arrays with any Hugging
  Face tokenizer (the pair template comes from the tokenizer); :func:`task_loss` and
  :func:`predict` run an :class:`~sortedjax.models.encoder.Encoder` at any sub-model / rank.

The offline pieces (generated tasks, a small encoder pre-trained by masked LM and saved as a
Hugging Face checkpoint) live in :mod:`sortedjax.data.nlu.tasks` and :mod:`sortedjax.data.nlu.pretrain`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax

from sortedjax.data.instruct.loaders import load_records
from sortedjax.submodel import SubModel

METRICS = ("accuracy", "f1", "matthews", "pearson")


@dataclasses.dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: float  # class index (classification) or score (regression)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSpec:
    name: str
    text_keys: tuple[str, ...]  # one (single sentence) or two (pair) record fields
    num_labels: int  # 1: regression
    metric: str
    eval_split: str = "validation"
    label_key: str = "label"

    @property
    def regression(self) -> bool:
        return self.num_labels == 1


GLUE: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(name="sst2", text_keys=("sentence",), num_labels=2, metric="accuracy"),
        TaskSpec(name="mrpc", text_keys=("sentence1", "sentence2"), num_labels=2, metric="f1"),
        TaskSpec(name="cola", text_keys=("sentence",), num_labels=2, metric="matthews"),
        TaskSpec(name="qnli", text_keys=("question", "sentence"), num_labels=2, metric="accuracy"),
        TaskSpec(name="rte", text_keys=("sentence1", "sentence2"), num_labels=2, metric="accuracy"),
        TaskSpec(name="stsb", text_keys=("sentence1", "sentence2"), num_labels=1, metric="pearson"),
        TaskSpec(name="qqp", text_keys=("question1", "question2"), num_labels=2, metric="accuracy"),
        TaskSpec(
            name="mnli",
            text_keys=("premise", "hypothesis"),
            num_labels=3,
            metric="accuracy",
            eval_split="validation_matched",
        ),
    )
}


def glue_spec(config: str) -> TaskSpec:
    if config not in GLUE:
        raise ValueError(f"unknown GLUE config {config!r}; allowed: {tuple(GLUE)}")
    return GLUE[config]


def load_glue(config: str, split: str = "train", *, source: str = "glue", limit: int | None = None) -> list[Example]:
    """GLUE config ``config`` as :class:`Example` s: ``datasets.load_dataset(source, config, split=split)``,
    or ``source`` a local JSON / CSV / Parquet file with the config's fields. Test splits (label -1)
    cannot be scored: they raise ``ValueError``."""

    spec = glue_spec(config)
    records = load_records(source, config=config, split=split, limit=limit)
    out = []
    for i, r in enumerate(records):
        missing = [k for k in (*spec.text_keys, spec.label_key) if r.get(k) is None]
        if missing:
            raise ValueError(f"record {i} of {source!r} ({config}) is missing field {missing[0]!r}; it has {sorted(r)}")
        label = float(r[spec.label_key])
        if label < 0:
            raise ValueError(
                f"record {i} of {source!r} ({config}, split {split!r}) has no label ({label}): a test split"
            )
        if not spec.regression and not (label == int(label) and 0 <= label < spec.num_labels):
            raise ValueError(f"record {i} of {source!r}: label {label} outside 0..{spec.num_labels - 1} for {config}")
        b = str(r[spec.text_keys[1]]) if len(spec.text_keys) > 1 else None
        out.append(Example(str(r[spec.text_keys[0]]), b, label))
    if not out:
        raise ValueError(f"no records in {source!r} ({config}, split {split!r})")
    return out


# -- metrics (percent) ---------------------------------------------------------------------------
def _check_pair(pred, labels):
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 1 or not len(pred):
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} must be equal-length non-empty vectors")
    return pred, labels


def accuracy(pred, labels) -> float:
    pred, labels = _check_pair(pred, labels)
    return 100.0 * float(np.mean(pred == labels))


def f1(pred, labels, positive: int = 1) -> float:
    """Binary F1 of class ``positive`` (0 when it is never predicted nor present)."""
    pred, labels = _check_pair(pred, labels)
    tp = np.sum((pred == positive) & (labels == positive))
    fp, fn = np.sum((pred == positive) & (labels != positive)), np.sum((pred != positive) & (labels == positive))
    return 0.0 if tp == 0 else 100.0 * float(2 * tp / (2 * tp + fp + fn))


def matthews(pred, labels) -> float:
    """Binary Matthews correlation (0 when a row or column of the confusion matrix is empty, as sklearn)."""
    pred, labels = _check_pair(pred, labels)
    p, y = pred == 1, labels == 1
    tp, tn, fp, fn = (float(np.sum(a & b)) for a, b in ((p, y), (~p, ~y), (p, ~y), (~p, y)))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else 100.0 * (tp * tn - fp * fn) / den


def pearson(pred, labels) -> float:
    """Pearson correlation (0 for constant predictions or labels, where it is undefined)."""
    pred, labels = _check_pair(pred, labels)
    a, b = pred.astype(np.float64) - np.mean(pred), labels.astype(np.float64) - np.mean(labels)
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return 0.0 if den == 0 else 100.0 * float(np.sum(a * b) / den)


def metric(name: str, pred, labels) -> float:
    """Metric ``name`` (one of :data:`METRICS`) in percent."""
    fns = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson}
    if name not in fns:
        raise ValueError(f"unknown metric {name!r}; allowed: {METRICS}")
    return fns[name](pred, labels)


# -- arrays, loss, prediction --------------------------------------------------------------------
def encode(tok, examples: Sequence[Example], max_len: int) -> dict[str, np.ndarray]:
    """``ids`` / ``mask`` / ``types`` (``B x max_len`` int32, right-padded, truncated) and ``label``
    (float32) through the Hugging Face tokenizer ``tok`` (its own single / pair template)."""
    if not examples:
        raise ValueError("no examples to encode")
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples] if examples[0].text_b is not None else None
    if b is not None and any(x is None for x in b):
        raise ValueError("examples mix single sentences and sentence pairs")
    enc = tok(a, b, truncation=True, max_length=max_len, padding="max_length", return_token_type_ids=True)
    out = {
        "ids": np.asarray(enc["input_ids"], np.int32),
        "mask": np.asarray(enc["attention_mask"], np.int32),
        "types": np.asarray(enc["token_type_ids"], np.int32),
        "label": np.asarray([e.label for e in examples], np.float32),
    }
    return out


def task_loss(model, batch: dict, sub: SubModel):
    """Cross-entropy (or squared error for ``num_labels == 1``) of sub-model ``sub`` on ``batch``,
    with its accuracy. The ``loss_of(sub)`` of :mod:`sortedjax.methods.objectives` once ``model, batch`` are fixed."""
    logits = model(batch["ids"], attention_mask=batch["mask"], token_type_ids=batch["types"], sub=sub)
    if logits.shape[-1] == 1:
        loss = jnp.mean((logits[:, 0] - batch["label"]) ** 2)
        return loss, {}
    labels = batch["label"].astype(jnp.int32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def predict(model, arrays: dict, sub: SubModel | None = None, batch_size: int = 256) -> np.ndarray:
    """Class indices (or regression values) of ``model`` at ``sub`` for every row of ``arrays``.
    Every batch has one shape (the last is padded), so one compiled program serves every rank."""
    n = len(arrays["ids"])
    if n == 0:
        raise ValueError("no rows to predict")
    bs = min(batch_size, n)
    out = []
    for i in range(0, n, bs):
        part = {k: arrays[k][i : i + bs] for k in ("ids", "mask", "types")}
        pad = bs - len(part["ids"])
        if pad:
            part = {k: np.concatenate([v, np.repeat(v[:1], pad, 0)]) for k, v in part.items()}
        logits = np.asarray(model(part["ids"], attention_mask=part["mask"], token_type_ids=part["types"], sub=sub))
        out.append(logits[: bs - pad])
    logits = np.concatenate(out)
    return logits[:, 0] if logits.shape[-1] == 1 else np.argmax(logits, -1)


def evaluate(model, arrays: dict, spec: TaskSpec, sub: SubModel | None = None) -> float:
    """``spec.metric`` (percent) of ``model`` at ``sub`` on the encoded examples ``arrays``."""
    pred = predict(model, arrays, sub)
    labels = arrays["label"] if spec.regression else arrays["label"].astype(np.int64)
    return metric(spec.metric, pred, labels)
