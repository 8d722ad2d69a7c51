"""SortedNet objectives (thesis Algorithm 2) over any ``loss_of(sub) -> (loss, metrics)``.

* :func:`stochastic` -- one sub-model sampled per step (shared by the batch);
* :func:`stochastic_summation` -- the sampled sub-model plus its targeted sub-models along
  each dimension (:meth:`Pool.targeted`), losses summed;
* :func:`summation` -- every sub-model of the pool, summed or averaged (SoFT averages its exits);
* :func:`accumulated` -- ``g_acc`` independently sampled sub-models per update: the gradient
  of their mean loss equals the accumulated (averaged) gradients.

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
    sub = pool.sample(key)
    total, metrics = loss_of(sub)
    for t in pool.targeted(sub):
        loss_t, _ = loss_of(t)
        total = total + loss_t
    return total, _with_sizes(metrics, sub)


def summation(loss_of: LossOfSub, pool: Pool, *, reduce: str = "sum"):
    """Sum (or mean) of the losses of every sub-model in ``pool``, run sequentially (``lax.map``)."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    losses, metrics = jax.lax.map(loss_of, pool.stacked())
    agg = jnp.sum if reduce == "sum" else jnp.mean
    return agg(losses), jax.tree.map(jnp.mean, metrics)


def accumulated(objective: Callable[[jax.Array], tuple[jax.Array, dict]], key: jax.Array, g_acc: int):
    """Mean of ``objective(key_i)`` over ``g_acc`` keys (sequential, so memory stays one sub-model)."""
    if g_acc < 1:
        raise ValueError(f"g_acc must be >= 1, got {g_acc}")
    losses, metrics = jax.lax.map(objective, jax.random.split(key, g_acc))
    return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)


def make(name: str, loss_of: LossOfSub, pool: Pool, *, g_acc: int = 1):
    """``key -> (loss, metrics)`` for objective ``name`` in :data:`OBJECTIVES`."""
    if name == "stochastic":
        one = lambda k: stochastic(loss_of, pool, k)  # noqa: E731
    elif name == "stochastic_summation":
        one = lambda k: stochastic_summation(loss_of, pool, k)  # noqa: E731
    elif name in ("summation", "mean"):
        red = "sum" if name == "summation" else "mean"
        return lambda k: summation(loss_of, pool, reduce=red)
    else:
        raise ValueError(f"unknown objective {name!r}; allowed: {OBJECTIVES}")
    if g_acc == 1:
        return one
    return lambda k: accumulated(one, k, g_acc)
