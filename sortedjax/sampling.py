"""The one sampler: greedy, temperature, top-k and top-p (nucleus), all traced.

``sample(logits_BxV, key, temperature, top_k, top_p)``: greedy when ``temperature == 0``;
otherwise the logits are divided by the temperature, cut to the ``top_k`` largest
(0 = off), then to the smallest prefix of the sorted distribution whose mass reaches
``top_p`` (the most likely token is always kept), and one token is drawn per row. All three
controls may be traced arrays, so changing them never recompiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample(logits_BxV: jax.Array, key: jax.Array, temperature=0.0, top_k=0, top_p=1.0) -> jax.Array:
    logits = logits_BxV.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
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
    x = jnp.where(x < cutoff, -jnp.inf, x)
    drawn = jax.random.categorical(key, x, axis=-1)
    return jnp.where(t > 0, drawn, greedy).astype(jnp.int32)
