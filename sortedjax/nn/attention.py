"""The one attention layer: kept-heads prefix, grouped-query heads, RoPE, KV cache.

:class:`Attention` projects ``x`` to ``H`` query heads and ``G`` key/value heads (``H`` a
multiple of ``G``; query head ``h`` reads kv head ``h // (H/G)``, the Hugging Face layout).
``heads=k`` keeps the first ``k`` query heads (the output projection sees zeros for the
rest), ``embed=w`` keeps the first ``w`` output features. Positions enter through
:class:`RoPE` (rotate-half layout, optional ``llama3`` frequency scaling) or not at all
(absolute position embeddings are the model's). ``causal`` adds the causal mask to a caller
mask; with a :class:`KVCache` the caller's mask (``cache.attention_mask``) is used as given.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from sortedjax.masks import trailing
from sortedjax.nn.linear import Linear

ROPE_TYPES = ("default", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class RoPE:
    """Rotary position embedding of ``head_dim`` with base ``theta``.

    ``scaling``: ``None`` or the ``llama3`` parameters as a sorted tuple of (key, value).
    """

    head_dim: int
    theta: float = 10000.0
    scaling: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self):
        if self.head_dim % 2:
            raise ValueError(f"RoPE head_dim must be even, got {self.head_dim}")
        if self.theta <= 0:
            raise ValueError(f"RoPE theta must be > 0, got {self.theta}")

    def inv_freq(self) -> np.ndarray:
        """Inverse frequencies ``(head_dim / 2,)``, with the ``llama3`` rescaling when configured."""
        dim = self.head_dim
        inv = (1.0 / (self.theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)
        if self.scaling is None:
            return inv
        rs = dict(self.scaling)
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def tables(self, positions_BxT, dtype):
        """``cos, sin`` of shape ``B x T x 1 x head_dim``."""
        pos = jnp.asarray(positions_BxT)[..., None].astype(jnp.float32)
        freqs = pos * trailing(jnp.asarray(self.inv_freq()), pos.ndim)
        emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
        return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)

    @staticmethod
    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer: ``N x B x S x G x K``; ``valid``: ``B x S`` real slots.

    A chunk of ``T`` tokens is written at slots ``start..start+T-1`` of a layer
    (:meth:`write`); a query at slot ``s`` attends to the valid slots ``<= s``
    (:meth:`attention_mask`).
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array

    @classmethod
    def create(cls, num_layers: int, batch: int, length: int, kv_heads: int, head_dim: int, dtype=jnp.float32):
        shape = (num_layers, batch, length, kv_heads, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.ones((batch, length), bool))

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def write(self, layer, start, k_BxTxGxK, v_BxTxGxK):
        """The cache with layer ``layer``'s new entries, and that layer's keys / values ``B x S x G x K``.

        ``start``: one slot for every row (scalar) or a slot per row (``B``; rows of a batch that
        accepted different numbers of speculative tokens). Entries past the last slot are dropped.
        """
        start = jnp.asarray(start)
        if start.ndim == 0:
            at = (layer, 0, start, 0, 0)
            k = lax.dynamic_update_slice(self.k, k_BxTxGxK[None].astype(self.k.dtype), at)
            v = lax.dynamic_update_slice(self.v, v_BxTxGxK[None].astype(self.v.dtype), at)
        else:
            B, T = k_BxTxGxK.shape[:2]
            rows, slots = jnp.arange(B)[:, None], start[:, None] + jnp.arange(T)[None, :]
            k = self.k.at[layer, rows, slots].set(k_BxTxGxK.astype(self.k.dtype), mode="drop")
            v = self.v.at[layer, rows, slots].set(v_BxTxGxK.astype(self.v.dtype), mode="drop")
        return dataclasses.replace(self, k=k, v=v), k[layer], v[layer]

    def attention_mask(self, start, length: int):
        """``B x T x S``: query ``t`` (at slot ``start + t``; ``start`` scalar or per row ``B``) sees
        valid slots up to its own."""
        start = jnp.asarray(start)
        q_slot = start[..., None] + trailing(jnp.arange(length), start.ndim + 1)  # T or B x T
        q_slot = q_slot[None] if q_slot.ndim == 1 else q_slot
        return (jnp.arange(self.length)[None, None, :] <= q_slot[..., None]) & self.valid[:, None, :]


class Attention(nnx.Module):
    def __init__(
        self,
        embed: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        use_bias: bool = False,
        rope: RoPE | None = None,
        causal: bool = True,
        dtype=jnp.float32,
        kernel_init=None,
        out_init=None,
        rngs: nnx.Rngs,
    ):
        G = num_heads if num_kv_heads is None else num_kv_heads
        K = embed // num_heads if head_dim is None else head_dim
        if num_heads % G:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({G})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, G, K
        self.rope, self.causal = rope, causal
        kw = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.q = Linear(embed, (num_heads, K), names=("embed", "heads", "head_dim"), kernel_init=kernel_init, **kw)
        self.k = Linear(embed, (G, K), names=("embed", "kv_heads", "head_dim"), kernel_init=kernel_init, **kw)
        self.v = Linear(embed, (G, K), names=("embed", "kv_heads", "head_dim"), kernel_init=kernel_init, **kw)
        self.o = Linear(
            (num_heads, K), embed, names=("heads", "head_dim", "embed"), kernel_init=out_init or kernel_init, **kw
        )

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def __call__(
        self,
        x_BxTxD,
        *,
        mask=None,
        positions=None,
        heads=None,
        embed=None,
        rank=None,
        cache: KVCache | None = None,
        layer=None,
        start=None,
        kv_only: bool = False,
    ):
        """Attention output ``B x T x D`` (and the updated cache when ``cache`` is given).

        ``mask``: bool, broadcastable to ``B x T x S`` (True = may attend). ``positions``:
        ``B x T`` (needed with RoPE). With ``cache``, this chunk's keys / values are written at
        ``layer``, slots ``start..``, and the queries attend to the whole cache. ``kv_only``
        (with a cache): only write the keys / values and return the cache (state copying for
        layers an early-exited token skips).
        """
        k = self.k(x_BxTxD, rank=rank)
        v = self.v(x_BxTxD, rank=rank)
        q = None if kv_only else self.q(x_BxTxD, rank=rank)
        if self.rope is not None:
            if positions is None:
                raise ValueError("Attention with RoPE needs positions (B x T)")
            cos, sin = self.rope.tables(positions, k.dtype)
            k = RoPE.rotate(k, cos, sin)
            q = None if kv_only else RoPE.rotate(q, cos, sin)
        if kv_only:
            if cache is None:
                raise ValueError("kv_only needs a cache to write to")
            return cache.write(layer, start, k, v)[0]
        if cache is not None:
            cache, k, v = cache.write(layer, start, k, v)
        elif self.causal:
            T = x_BxTxD.shape[1]
            causal = jnp.tril(jnp.ones((T, T), bool))[None]
            mask = causal if mask is None else mask & causal
        B, T, H, K = q.shape
        G = k.shape[2]
        qg = q.reshape(B, T, G, H // G, K)
        s = jnp.einsum("btgrk,bsgk->bgrts", qg, k).astype(jnp.float32) * K**-0.5
        if mask is not None:
            s = jnp.where(jnp.asarray(mask)[:, None, None], s, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(s, axis=-1).astype(q.dtype)
        o = jnp.einsum("bgrts,bsgk->btgrk", w, v).reshape(B, T, H, K)
        out = self.o(o, in_size=heads, out_size=embed, rank=rank)
        return out if cache is None else (out, cache)
