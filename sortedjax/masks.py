"""Static-shape truncation: prefix masks from iota with traced sizes.

Every SortedNet sub-model is an *origin-tied* truncation: the first ``k`` neurons, channels,
heads or LoRA ranks, and the first ``n`` layers. Shapes never change: a truncation is a mask
``arange(size) < k`` with ``k`` a (possibly traced) int32 scalar, so one compiled program
serves every sub-model. The layers of :mod:`sortedjax.nn` use these masks; depth is gated by
:class:`sortedjax.nn.LayerStack`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def prefix_mask(size: int, k, dtype=jnp.float32) -> jax.Array:
    """``[1]*k + [0]*(size-k)`` as ``dtype``; ``k`` may be traced. ``k=None`` keeps all."""
    if k is None:
        return jnp.ones((size,), dtype)
    return (jnp.arange(size, dtype=jnp.int32) < jnp.asarray(k, jnp.int32)).astype(dtype)


def along(mask: jax.Array, ndim: int, axis: int) -> jax.Array:
    """Reshape a 1-D ``mask`` to broadcast along ``axis`` of an ``ndim``-dimensional array."""
    shape = [1] * ndim
    shape[axis] = mask.shape[0]
    return mask.reshape(shape)


def trailing(a: jax.Array, ndim: int) -> jax.Array:
    """Prepend unit axes to ``a`` so it broadcasts against the last axes of an ``ndim``-D array.

    The explicit form of NumPy's rank promotion (the tests make implicit promotion an error).
    """
    a = jnp.asarray(a)
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)
