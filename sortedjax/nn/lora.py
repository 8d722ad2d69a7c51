"""The LoRA adapter layer a :class:`~sortedjax.nn.Linear` carries (``linear.lora``), its parameter
types, and finding the adapters of a model.

A :class:`LoRA` adds ``(alpha / b) * (x W_dw[:b]^T) W_up[:, :b]^T`` at rank ``b`` through a static-shape
mask ``arange(r_max) < b`` (``b`` may be traced). Adapter weights are :class:`LoRAParam`, so
``train(..., trainable=LoRAParam)`` trains them only. Applying adapters to a model, merging and
PEFT files live in :mod:`sortedjax.peft`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from sortedjax.masks import prefix_mask, trailing
from sortedjax.nn.linear import Linear

DROPOUT_STREAM = "lora_dropout"


class LoRAParam(nnx.Param):
    """A DyLoRA adapter weight (``train(..., trainable=LoRAParam)`` trains only these)."""


class LoRADown(LoRAParam):
    """``W_dw``: ``... x r_max x in`` (PEFT ``lora_A``)."""


class LoRAUp(LoRAParam):
    """``W_up``: ``... x out x r_max`` (PEFT ``lora_B``)."""


def check_rank(rank, r_max: int) -> None:
    """Raise for a concrete rank outside ``1..r_max`` (traced ranks pass)."""
    if rank is None or isinstance(rank, jax.core.Tracer):
        return
    if np.ndim(rank) != 0:
        raise ValueError(f"rank must be a scalar, got shape {np.shape(rank)}")
    if not 1 <= int(rank) <= r_max:
        raise ValueError(f"rank {int(rank)} outside the allowed range 1..{r_max}")


def _kaiming_uniform(key, shape, fan_in: int):
    """PEFT's ``lora_A`` init (``kaiming_uniform_(a=sqrt(5))``): ``U(-1/sqrt(in), 1/sqrt(in))``."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class LoRA(nnx.Module):
    """The DyLoRA adapter of one (possibly stacked) Linear: ``down`` / ``up`` over flattened in / out.

    ``batch_shape`` / ``batch_names``: leading stacked axes (a LayerStack's ``"layers"``); the
    adapter is then called on one slice at a time, as the layer it belongs to.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        r: int,
        alpha: float,
        r_min: int = 1,
        frozen: bool = False,
        dropout: float = 0.0,
        batch_shape: Sequence[int] = (),
        batch_names: Sequence[str | None] = (),
        in_name: str | None = None,
        out_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        if r < 1:
            raise ValueError(f"LoRA r must be >= 1, got {r}")
        if not 1 <= r_min <= r:
            raise ValueError(f"LoRA r_min must be in 1..r={r}, got {r_min}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        batch_shape, batch_names = tuple(int(d) for d in batch_shape), tuple(batch_names)
        if len(batch_names) != len(batch_shape):
            raise ValueError(f"batch_names {batch_names} do not match batch_shape {batch_shape}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.r_max, self.r_min, self.alpha = int(r), int(r_min), float(alpha)
        self.frozen, self.dropout, self.deterministic = bool(frozen), float(dropout), False
        self.batch_shape = batch_shape
        meta = dict(eager_sharding=False)
        self.down = LoRADown(
            _kaiming_uniform(rngs.params(), batch_shape + (r, in_features), in_features),
            out_sharding=batch_names + ("rank", in_name),
            **meta,
        )
        self.up = LoRAUp(
            jnp.zeros(batch_shape + (out_features, r), jnp.float32),
            out_sharding=batch_names + (out_name, "rank"),
            **meta,
        )
        key = rngs.params()
        self.rng = (
            nnx.RngStream(jax.random.split(key, batch_shape) if batch_shape else key, tag=DROPOUT_STREAM)
            if dropout > 0
            else None
        )

    def rank_or_max(self, rank):
        check_rank(rank, self.r_max)
        return self.r_max if rank is None else rank

    def _factors(self, b):
        down, up = self.down[...], self.up[...]
        if self.frozen:  # only the b-th rank (row b-1 of down, column b-1 of up) gets gradient
            hot = jnp.arange(self.r_max) == jnp.asarray(b, jnp.int32) - 1
            down = jnp.where(hot[:, None], down, lax.stop_gradient(down))
            up = jnp.where(hot[None, :], up, lax.stop_gradient(up))
        return down, up

    def __call__(self, x_flat, rank=None):
        """``x_flat``: ``... x in`` -> the adapter's ``... x out`` at ``rank`` (None: ``r_max``)."""
        b = self.rank_or_max(rank)
        down, up = self._factors(b)
        if self.rng is not None and not self.deterministic:
            keep = jax.random.bernoulli(self.rng(), 1.0 - self.dropout, x_flat.shape)
            x_flat = jnp.where(keep, x_flat / (1.0 - self.dropout), jnp.zeros_like(x_flat))
        h = jnp.einsum("...i,ri->...r", x_flat, down.astype(x_flat.dtype))
        h = h * trailing(prefix_mask(self.r_max, b, x_flat.dtype), h.ndim)
        scale = self.alpha / jnp.asarray(b, x_flat.dtype)
        return scale * jnp.einsum("...r,or->...o", h, up.astype(x_flat.dtype))

    def delta(self, rank=None) -> jax.Array:
        """``alpha/b * (W_up[:, :b] W_dw[:b])^T``: ``batch_shape x in x out`` (float32)."""
        b = self.rank_or_max(rank)
        up = self.up[...]
        up = up * trailing(prefix_mask(self.r_max, b, jnp.float32), up.ndim)
        return (self.alpha / jnp.asarray(b, jnp.float32)) * jnp.einsum("...or,...ri->...io", up, self.down[...])


# -- finding the adapters of a model ---------------------------------------------------------------
def dotted(path) -> str:
    return ".".join(str(p) for p in path)


def linear_paths(model: nnx.Module) -> dict[str, Linear]:
    """Every :class:`~sortedjax.nn.Linear` of ``model`` by dotted path (``"layers.layers.attn.q"``)."""
    return {dotted(p): m for p, m in nnx.iter_modules(model) if isinstance(m, Linear)}


def adapters(model: nnx.Module) -> dict[str, LoRA]:
    """The adapters of ``model`` by the dotted path of their Linear."""
    return {k: m.lora for k, m in linear_paths(model).items() if m.lora is not None}
