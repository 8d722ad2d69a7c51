"""SortedNet objectives (thesis Algorithm 2) over any ``loss_of(sub) -> (loss, metrics)``.

* :func:`stochastic` -- one sub-model sampled per step (shared by the batch);
* :func:`stochastic_summation` -- the sampled sub-model theta*_t plus its targeted sub-models
  Theta-perp(theta*_t) (:meth:`Pool.targeted`: its truncations along each dimension), losses summed;
* :func:`summation` -- every sub-model of the pool, summed or averaged (SoFT averages its exits);
* g_acc (Algorithm 2's update every ``g_acc``-th iteration, each iteration with its own
  mini-batch and its own sampled sub-model): ``TrainConfig(grad_accum=g_acc)`` in
  :func:`sortedjax.train.train`, or :func:`accumulated` for a hand-written step.

Each dimension's sampling distribution P_Bj is its :class:`~sortedjax.submodel.Dim`'s (uniform by
default). Every sub-model shares the model's one classifier; :mod:`sortedjax.methods.retune` re-tunes a
private classifier per sub-model after training (thesis C.4.4).

All run inside the jitted train step; sub-model sizes are traced, so nothing recompiles.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sortedjax.submodel import Pool, SubModel

LossOfSub = Callable[[SubModel], tuple[jax.Array, dict]]
OBJECTIVES = ("stochastic", "stochastic_summation", "summation", "mean")


def _with_sizes(metrics: dict, sub: SubModel) -> dict:
    out = dict(metrics)
    for name in ("depth", "width", "heads", "rank"):
        v = getattr(sub, name)
        if v is not None:
            out[f"sub_{name}"] = v.astype(jnp.float32)
    return out


def stochastic(loss_of: LossOfSub, pool: Pool, key: jax.Array):
    sub = pool.sample(key)
    loss, metrics = loss_of(sub)
    return loss, _with_sizes(metrics, sub)


def stochastic_summation(loss_of: LossOfSub, pool: Pool, key: jax.Array):
    """Loss of the sampled sub-model theta*_t plus the losses of its targeted sub-models
    Theta-perp(theta*_t) (:meth:`Pool.targeted`: its truncations along each dimension, the
    other dimensions kept at theta*_t's sizes), summed. The candidates run one after another
    (``lax.map``) and a candidate that is not a truncation is skipped (``lax.cond``), so the
    work is the sampled sub-model's truncations only, in one compiled program."""
    sub = pool.sample(key)
    total, metrics = loss_of(sub)
    cands, valid = pool.targeted(sub)

    def one(args):
        t, ok = args
        return jax.lax.cond(ok, lambda: loss_of(t)[0].astype(jnp.float32), lambda: jnp.zeros((), jnp.float32))

    losses = jax.lax.map(one, (cands, valid))
    out = _with_sizes(metrics, sub)
    out["n_targeted"] = jnp.sum(valid).astype(jnp.float32)
    return total + jnp.sum(losses).astype(total.dtype), out


def summation(loss_of: LossOfSub, pool: Pool, *, reduce: str = "sum"):
    """Sum (or mean) of the losses of every sub-model in ``pool``, run sequentially (``lax.map``)."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    losses, metrics = jax.lax.map(loss_of, pool.stacked())
    agg = jnp.sum if reduce == "sum" else jnp.mean
    return agg(losses), jax.tree.map(jnp.mean, metrics)


def accumulated(
    objective: Callable[[dict, jax.Array], tuple[jax.Array, dict]], batch: dict, key: jax.Array, g_acc: int
):
    """Algorithm 2's gradient accumulation inside one loss: ``batch`` holds ``g_acc`` mini-batches
    (its leading axis is split into ``g_acc`` equal parts) and iteration ``i`` runs
    ``objective(mini_batch_i, key_i)``: its own data and its own sampled sub-model. The mean loss's
    gradient is the average of the ``g_acc`` gradients. :func:`sortedjax.train.train` does the same
    with ``TrainConfig(grad_accum=g_acc)`` while holding one mini-batch's activations at a time; use
    this where the step is not ``train``'s."""
    if g_acc < 1:
        raise ValueError(f"g_acc must be >= 1, got {g_acc}")

    def split(x):
        if x.shape[0] % g_acc:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by g_acc={g_acc}")
        return x.reshape((g_acc, x.shape[0] // g_acc) + x.shape[1:])

    losses, metrics = jax.lax.map(lambda a: objective(*a), (jax.tree.map(split, batch), jax.random.split(key, g_acc)))
    return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)


def make(name: str, loss_of: LossOfSub, pool: Pool, *, g_acc: int = 1):
    """``key -> (loss, metrics)`` for objective ``name`` in :data:`OBJECTIVES`.

    ``loss_of`` is bound to one mini-batch, so ``g_acc`` must be 1 here: Algorithm 2 gives each of
    the ``g_acc`` accumulated iterations its own mini-batch; use ``TrainConfig(grad_accum=g_acc)``
    (or :func:`accumulated`, which takes the batch)."""
    if g_acc != 1:
        raise ValueError(
            f"g_acc={g_acc}: objectives.make binds one mini-batch, and each accumulated iteration needs its "
            "own; set TrainConfig(grad_accum=g_acc) or use objectives.accumulated(objective, batch, key, g_acc)"
        )
    if name == "stochastic":
        return lambda k: stochastic(loss_of, pool, k)
    if name == "stochastic_summation":
        return lambda k: stochastic_summation(loss_of, pool, k)
    if name in ("summation", "mean"):
        red = "sum" if name == "summation" else "mean"
        return lambda k: summation(loss_of, pool, reduce=red)
    raise ValueError(f"unknown objective {name!r}; allowed: {OBJECTIVES}")
