"""Dense maps and embeddings whose input / output widths are origin-tied prefixes.

:class:`Linear` maps ``in_shape -> out_shape`` (each an int or a tuple, e.g. ``(heads,
head_dim)``) with one einsum. ``in_size`` / ``out_size`` keep the first ``k`` entries of the
*first* input / output axis (neurons, channels or heads) and zero the rest, so the masked
layer equals the small layer built from the sliced weights. A DyLoRA adapter added by
:func:`sortedjax.peft.apply_dylora` (``self.lora``) is evaluated at ``rank``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax.masks import along, prefix_mask, trailing
from sortedjax.sharding import param


def _shape(s) -> tuple[int, ...]:
    return (int(s),) if isinstance(s, int) else tuple(int(d) for d in s)


def default_kernel_init(key, shape, dtype, fan_in: int):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype) * (fan_in**-0.5)


class Linear(nnx.Module):
    """``y = x W + b`` over ``in_shape`` (contracted) to ``out_shape``.

    ``names`` are the logical axis names of the kernel (``in`` axes then ``out`` axes), the
    bias takes the ``out`` names. ``kernel_init(key, shape, dtype)`` defaults to
    ``normal / sqrt(fan_in)``.
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        out_shape: int | Sequence[int],
        *,
        names: Sequence[str | None],
        use_bias: bool = True,
        dtype=jnp.float32,
        kernel_init=None,
        bias_init=None,
        rngs: nnx.Rngs,
    ):
        self.in_shape, self.out_shape = _shape(in_shape), _shape(out_shape)
        if len(names) != len(self.in_shape) + len(self.out_shape):
            raise ValueError(f"Linear names {tuple(names)} do not match {self.in_shape} -> {self.out_shape}")
        shape = self.in_shape + self.out_shape
        fan_in = math.prod(self.in_shape)
        init = kernel_init or (lambda k, s, d: default_kernel_init(k, s, d, fan_in))
        self.kernel = param(init(rngs.params(), shape, dtype), names)
        bias = (
            jnp.zeros(self.out_shape, dtype) if bias_init is None else bias_init(rngs.params(), self.out_shape, dtype)
        )
        self.bias = param(bias, names[len(self.in_shape) :]) if use_bias else None
        self.lora = None  # a sortedjax.peft.LoRA adapter, when one is applied

    @property
    def n_in(self) -> int:
        return len(self.in_shape)

    def __call__(self, x, *, in_size=None, out_size=None, rank=None):
        """``x``: ``... x in_shape`` -> ``... x out_shape``."""
        n_in, n_out = self.n_in, len(self.out_shape)
        if in_size is not None:
            x = x * along(prefix_mask(self.in_shape[0], in_size, x.dtype), x.ndim, x.ndim - n_in)
        lead = "abcdefgh"[: x.ndim - n_in]
        ins, outs = "ijkl"[:n_in], "mnop"[:n_out]
        y = jnp.einsum(f"{lead}{ins},{ins}{outs}->{lead}{outs}", x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + trailing(self.bias[...].astype(y.dtype), y.ndim)
        if self.lora is not None:
            y = y + self.lora(x.reshape(x.shape[: x.ndim - n_in] + (-1,)), rank).reshape(y.shape)
        if out_size is not None:
            y = y * along(prefix_mask(self.out_shape[0], out_size, y.dtype), y.ndim, y.ndim - n_out)
        return y


class Embed(nnx.Module):
    """Token (or position) embedding ``num x features``; ``size`` keeps the first features."""

    def __init__(
        self,
        num: int,
        features: int,
        *,
        names=("vocab", "embed"),
        dtype=jnp.float32,
        init_std: float = 0.02,
        rngs: nnx.Rngs,
    ):
        self.num, self.features = num, features
        self.embedding = param(
            jax.random.normal(rngs.params(), (num, features), jnp.float32).astype(dtype) * init_std, names
        )

    def __call__(self, ids, *, size=None):
        x = jnp.take(self.embedding[...], ids, axis=0)
        return x if size is None else x * trailing(prefix_mask(self.features, size, x.dtype), x.ndim)

    def attend(self, x):
        """Logits against the embedding matrix (a tied output head)."""
        return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype))
