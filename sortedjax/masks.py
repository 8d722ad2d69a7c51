"""Static-shape truncation: prefix masks from iota with traced sizes, and depth gating.

Every SortedNet sub-model is an *origin-tied* truncation: the first ``k`` neurons,
channels, heads or LoRA ranks, and the first ``n`` layers. Shapes never change: a
truncation is a mask ``arange(size) < k`` with ``k`` a (possibly traced) int32 scalar,
so a single compiled program serves every sub-model.

Depth gating (:func:`depth_scan`) runs a stack of layers with ``lax.scan`` and wraps each
layer in ``lax.cond(i < depth, layer, identity)``: on an unbatched scalar predicate XLA
executes only the taken branch, so layers past the sampled depth cost (almost) nothing.
(Under ``vmap`` over different depths ``cond`` becomes ``select`` and both run.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def prefix_mask(size: int, k, dtype=jnp.float32) -> jax.Array:
    """``[1]*k + [0]*(size-k)`` as ``dtype``; ``k`` may be traced. ``k=None`` keeps all."""
    if k is None:
        return jnp.ones((size,), dtype)
    return (jnp.arange(size, dtype=jnp.int32) < jnp.asarray(k, jnp.int32)).astype(dtype)


def width_mask(width: int, k, dtype=jnp.float32) -> jax.Array:
    """Mask keeping the first ``k`` of ``width`` neurons / channels."""
    return prefix_mask(width, k, dtype)


def head_mask(num_heads: int, head_dim: int, k, dtype=jnp.float32) -> jax.Array:
    """Mask of length ``num_heads * head_dim`` keeping the first ``k`` heads."""
    return jnp.repeat(prefix_mask(num_heads, k, dtype), head_dim)


def rank_mask(r_max: int, b, dtype=jnp.float32) -> jax.Array:
    """Mask keeping LoRA ranks ``0..b-1`` of ``r_max``."""
    return prefix_mask(r_max, b, dtype)


def apply_width(x: jax.Array, k, axis: int = -1) -> jax.Array:
    """Zero all but the first ``k`` entries of ``x`` along ``axis``."""
    m = prefix_mask(x.shape[axis], k, x.dtype)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return x * m.reshape(shape)


def depth_scan(
    layer_fn: Callable[[Any, jax.Array], jax.Array],
    stacked_params: Any,
    x: jax.Array,
    depth=None,
    exits: Sequence[int] | jax.Array | None = None,
    *,
    remat: bool = False,
):
    """Run ``x = layer_fn(params_i, x)`` for layers ``i < depth`` of a stacked layer pytree.

    Args:
      layer_fn: ``(params_of_one_layer, x) -> x`` (shape preserving).
      stacked_params: pytree whose leaves have a leading layer axis ``L``.
      x: input activations.
      depth: int32 scalar (may be traced) in ``1..L``; ``None`` runs all layers. Layers
        ``i >= depth`` are skipped with ``lax.cond`` (their compute is not executed).
      exits: distinct 1-based layer counts whose outputs to collect (static ints or an int32
        array). Exit ``e`` is the hidden state after layer ``e`` (an exit past ``depth``
        holds the state after ``depth`` layers, since skipped layers are the identity).
      remat: rematerialize each layer in the backward pass (saves activation memory).

    Returns:
      ``x_out`` (after ``depth`` layers), or ``(x_out, states_E)`` when ``exits`` is
      given, with ``states_E[j]`` the hidden state after ``exits[j]`` layers.
    """
    leaves = jax.tree.leaves(stacked_params)
    if not leaves:
        raise ValueError("depth_scan needs at least one stacked parameter")
    num_layers = leaves[0].shape[0]
    if depth is not None and not isinstance(depth, jax.core.Tracer):
        d = int(depth)
        if not 1 <= d <= num_layers:
            raise ValueError(f"depth {d} outside the allowed range 1..{num_layers}")
    depth_ = jnp.asarray(num_layers if depth is None else depth, jnp.int32)
    fn = jax.checkpoint(layer_fn) if remat else layer_fn

    collect = exits is not None
    if collect:
        if not isinstance(exits, jax.Array):
            bad = [e for e in exits if not 1 <= int(e) <= num_layers]
            if bad:
                raise ValueError(f"exit {bad[0]} outside the allowed range 1..{num_layers}")
        exits_E = jnp.asarray(exits, jnp.int32)
        buf = jnp.zeros((exits_E.shape[0],) + x.shape, x.dtype)
    else:
        exits_E, buf = None, None

    def body(carry, inp):
        h, buf = carry
        i, p = inp
        h = lax.cond(i < depth_, lambda h: fn(p, h), lambda h: h, h)
        if collect:  # write only the slot of a hit exit (no E x ... broadcast mask per layer)
            hit = exits_E == i + 1
            buf = lax.cond(
                hit.any(), lambda b: lax.dynamic_update_index_in_dim(b, h, jnp.argmax(hit), 0), lambda b: b, buf
            )
        return (h, buf), None

    idx = jnp.arange(num_layers, dtype=jnp.int32)
    (h, buf), _ = lax.scan(body, (x, buf), (idx, stacked_params))
    return (h, buf) if collect else h
