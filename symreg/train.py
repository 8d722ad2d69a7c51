"""SymbolicGPT training helpers: instances -> arrays, the masked next-token loss, a train call.

    arrays, kept = make_arrays(instances, tokenizer, max_len=64, max_vars=1)
    model = train_symbolicgpt(model_cfg, arrays, TrainConfig(...), batch_size=64)

Training uses the shared loop :func:`sortedjax.train.train` (AdamW, warmup + cosine,
orbax checkpoints and resume, ``metrics.jsonl``, progress bar). Targets equal to the pad
id are masked out of the loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sortedjax.train import array_fingerprint, train
from symreg.model import ModelConfig, SymbolicGPT, make_points


def make_arrays(instances, tokenizer, *, max_len: int, max_vars: int, n_points: int | None = None):
    """``{"points", "mask", "tokens"}`` numpy arrays and the indices of the kept instances.

    Instances whose skeleton needs more than ``max_len`` tokens or more than ``max_vars``
    variables are skipped (their count is ``len(instances) - len(kept)``).
    """
    kept, tokens = [], []
    for i, inst in enumerate(instances):
        if int(inst.get("n_vars", np.shape(inst["X"])[-1])) > max_vars:
            continue
        try:
            tokens.append(tokenizer.encode(inst["skeleton"], max_len=max_len))
        except ValueError:
            continue
        kept.append(i)
    if not kept:
        raise ValueError(f"no instance fits max_len={max_len}, max_vars={max_vars}")
    points, mask = make_points([instances[i] for i in kept], max_vars, n_points)
    return {"points": points, "mask": mask, "tokens": np.asarray(tokens, np.int32)}, kept


class LengthBuckets:
    """Batches of similar-length skeletons, token arrays cut to the bucket's length.

    Step ``s`` draws a bucket with probability proportional to its size, then ``batch_size``
    distinct instances of it, from ``numpy.random.default_rng([seed, s])``: a pure function
    of the step (exact resume). Short skeletons dominate the generator's output, so cutting
    ``max_len`` tokens to e.g. 24 / 40 for most batches roughly halves the decoder's work;
    each bucket length compiles once.
    """

    def __init__(self, arrays: dict, batch_size: int, seed: int = 0, bounds=(24, 40), pad_id: int = 0):
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        max_len = arrays["tokens"].shape[1]
        lengths = (arrays["tokens"] != pad_id).sum(1)
        edges = sorted({b for b in bounds if b < max_len}) + [max_len]
        self.buckets, lo = [], 0
        for b in edges:
            idx = np.flatnonzero((lengths > lo) & (lengths <= b))
            if len(idx):
                self.buckets.append((b, idx))
            lo = b
        sizes = np.array([len(i) for _, i in self.buckets], float)
        self.probs = sizes / sizes.sum()

    def __call__(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, step])
        length, idx = self.buckets[rng.choice(len(self.buckets), p=self.probs)]
        pick = rng.choice(idx, self.batch_size, replace=len(idx) < self.batch_size)
        batch = {k: v[pick] for k, v in self.arrays.items()}
        batch["tokens"] = batch["tokens"][:, :length]
        return batch


def make_loss_fn(pad_id: int = 0, extra_inputs: Callable | None = None):
    """The masked next-token loss (targets equal to ``pad_id`` do not count) and its
    ``token_acc`` / ``seq_acc``.

    ``extra_inputs(batch, key) -> tuple``: more positional model inputs after the tokens (the
    conditional model's controls, :func:`symreg.conditional.make_conditional_loss_fn`)."""

    def loss_fn(model: SymbolicGPT, batch, key):
        tokens = batch["tokens"]
        extra = () if extra_inputs is None else tuple(extra_inputs(batch, key))
        logits = model(batch["points"], batch["mask"], tokens[:, :-1], *extra).astype(jnp.float32)
        targets = tokens[:, 1:]
        weight = (targets != pad_id).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        n = jnp.maximum(weight.sum(), 1.0)
        loss = (nll * weight).sum() / n
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weight
        seq_ok = jnp.all((jnp.argmax(logits, -1) == targets) | (weight == 0), axis=-1)
        return loss, {"token_acc": correct.sum() / n, "seq_acc": seq_ok.mean()}

    return loss_fn


def train_symbolicgpt(
    model_cfg: ModelConfig,
    arrays: dict,
    train_cfg,
    *,
    batch_size: int,
    mesh=None,
    restart: bool = False,
    model_type: type = SymbolicGPT,
    loss_fn: Callable | None = None,
    run_extra: dict | None = None,
):
    """Train a fresh model (or resume the run in ``train_cfg.workdir``; ``restart``: start it over,
    moving the old run aside); returns the TrainResult.

    ``model_type`` (built as ``model_type(model_cfg, rngs=nnx.Rngs(seed))``), ``loss_fn``
    (default :func:`make_loss_fn`) and ``run_extra`` (more ``run_config`` entries) let
    :func:`symreg.conditional.train_conditional` train C-SymbolicGPT with this same loop."""

    model = model_type(model_cfg, rngs=nnx.Rngs(train_cfg.seed))
    data = LengthBuckets(arrays, batch_size, seed=train_cfg.seed, pad_id=model_cfg.pad_id)
    run = {
        "model": dataclasses.asdict(model_cfg),
        **(run_extra or {}),
        "batch_size": batch_size,
        "arrays": array_fingerprint(arrays),
    }
    loss_fn = make_loss_fn(model_cfg.pad_id) if loss_fn is None else loss_fn
    return train(model, loss_fn, data, train_cfg, mesh=mesh, run_config=run, restart=restart)
