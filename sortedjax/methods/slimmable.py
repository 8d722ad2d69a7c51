"""The many-in-one training rules Table 4.2 compares, as losses on the same model code.

Each rule is a ``loss_fn(model, batch, key) -> (loss, metrics)`` for
:func:`sortedjax.train.make_train_step` (one optimizer update per step, so every rule gets
the same number of gradient updates), over a model called as ``model(x, sub)``:

* ``"sortednet"``: SortedNet's stochastic rule (:func:`sortedjax.methods.objectives.make`): one
  sub-model drawn from the pool per step;
* ``"ns"``: slimmable networks (Yu et al. 2019): the fixed widths of the pool, losses summed
  every step; build the model with ``norm="batch_private"`` for their switchable (private per
  width) BatchNorm;
* ``"us"``: universally slimmable networks' sandwich rule, as LCS-p trains its line of
  widths: the largest and the smallest width plus ``n_random`` widths drawn from the pool,
  losses summed;
* ``"plain"``: the full model only (sub-models are cut out afterwards, untrained).

The train step carries BatchNorm statistics, but shared statistics mix every sampled width: evaluate
BatchNorm models with :func:`sortedjax.nn.recalibrate` per sub-model (what slimmable / US networks do
after training).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

import sortedjax.methods.objectives as objectives
from sortedjax.submodel import Pool, SubModel

METHODS = ("sortednet", "ns", "us", "plain")


def cross_entropy(logits_BxC, labels_B):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_BxC), labels_B[:, None], 1))


def _loss_of(model, batch) -> Callable[[SubModel], tuple[jax.Array, dict]]:
    def loss_of(sub):
        logits = model(batch["x"], sub)
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
        return cross_entropy(logits, batch["y"]), {"accuracy": acc}

    return loss_of


def _extremes(pool: Pool) -> tuple[SubModel, SubModel]:
    cfgs = pool.configs()
    size = lambda c: tuple(c[n] for n in pool.names)  # noqa: E731
    return SubModel.of(**max(cfgs, key=size)), SubModel.of(**min(cfgs, key=size))


def make_loss(method: str, pool: Pool, *, n_random: int = 2, objective: str = "stochastic"):
    """The ``loss_fn(model, batch, key)`` of training rule ``method`` (:data:`METHODS`) over ``pool``."""
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; allowed: {METHODS}")
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    largest, smallest = _extremes(pool)
    configs = [SubModel.of(**c) for c in pool.configs()]

    def loss_fn(model, batch, key):
        loss_of = _loss_of(model, batch)
        if method == "sortednet":
            return objectives.make(objective, loss_of, pool)(key)
        if method == "plain":
            return loss_of(largest)
        if method == "ns":  # every fixed width, unrolled (private BatchNorm state per width)
            subs = configs
        else:
            subs = [largest, smallest] + [pool.sample(k) for k in jax.random.split(key, n_random)]
        total, metrics = 0.0, None
        for sub in subs:
            loss, m = loss_of(sub)
            total, metrics = total + loss, metrics or m
        return total, metrics

    return loss_fn


def sandwich_passes(method: str, pool: Pool, n_random: int = 2) -> int:
    """Forward / backward passes per update of ``method`` (the cost Table 4.2's equal updates hide)."""
    return {"sortednet": 1, "plain": 1, "ns": len(pool.configs()), "us": 2 + n_random}[method]
