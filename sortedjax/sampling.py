"""The one sampler: greedy, temperature, top-k and top-p (nucleus), all traced.

``sample(logits_BxV, key, temperature, top_k, top_p)``: greedy when ``temperature == 0``;
otherwise the logits are divided by the temperature, cut to the ``top_k`` largest
(0 = off), then to the smallest prefix of the sorted distribution whose mass reaches
``top_p`` (the most likely token is always kept), and one token is drawn per row. All three
controls may be traced arrays, so changing them never recompiles. ``distribution`` gives the
same distribution as probabilities (speculative decoding's acceptance rule needs them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits_BxV: jax.Array, temperature=0.0, top_k=0, top_p=1.0) -> jax.Array:
    """The logits ``sample`` draws from when ``temperature > 0``: scaled, cut to top-k and top-p
    (``-inf`` outside); ``softmax`` of them is the sampling distribution."""
    logits = logits_BxV.astype(jnp.float32)
    V = logits.shape[-1]
    t = jnp.asarray(temperature, jnp.float32)
    x = logits / jnp.maximum(t, 1e-6)
    top_k = jnp.asarray(top_k, jnp.int32)
    desc = -jnp.sort(-x, axis=-1)
    kth = jnp.take_along_axis(desc, jnp.broadcast_to(jnp.clip(top_k - 1, 0, V - 1), x.shape[:-1])[..., None], -1)
    x = jnp.where((top_k > 0) & (x < kth), -jnp.inf, x)
    desc = -jnp.sort(-x, axis=-1)
    p = jax.nn.softmax(desc, axis=-1)
    keep = (jnp.cumsum(p, axis=-1) - p) < jnp.asarray(top_p, jnp.float32)  # the first is always kept
    cutoff = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(x < cutoff, -jnp.inf, x)


def sample(logits_BxV: jax.Array, key: jax.Array, temperature=0.0, top_k=0, top_p=1.0) -> jax.Array:
    greedy = jnp.argmax(logits_BxV.astype(jnp.float32), axis=-1).astype(jnp.int32)
    return jax.lax.cond(  # greedy skips the sorts of the top-k / top-p filter
        jnp.asarray(temperature, jnp.float32) > 0,
        lambda: jax.random.categorical(key, filter_logits(logits_BxV, temperature, top_k, top_p), axis=-1).astype(
            jnp.int32
        ),
        lambda: greedy,
    )


def distribution(logits_BxV: jax.Array, temperature=0.0, top_k=0, top_p=1.0) -> jax.Array:
    """The probabilities ``sample`` draws from (one-hot on the argmax when greedy), for
    speculative decoding's acceptance rule."""
    greedy = jax.nn.one_hot(jnp.argmax(logits_BxV, axis=-1), logits_BxV.shape[-1], dtype=jnp.float32)
    return jax.lax.cond(
        jnp.asarray(temperature, jnp.float32) > 0,
        lambda: jax.nn.softmax(filter_logits(logits_BxV, temperature, top_k, top_p), axis=-1),
        lambda: greedy,
    )
