"""Normalisation over the kept width only, and the BatchNorm variants SortedNet compares.

``size`` keeps the first ``k`` features (a traced int is fine). :class:`LayerNorm` and
:class:`RMSNorm` compute their statistics over those ``k`` features only, so a masked norm
equals the norm of a ``k``-wide model built from the sliced scale / bias.

:class:`BatchNorm` (channels last) has the statistics modes the SortedNet chapter compares:

* ``"shared"``: one set of running statistics and affine parameters for every sub-model;
* ``"private"``: one set per width in ``widths`` (switchable BN of slimmable networks), picked
  by the call's ``size``;
* after training, :func:`recalibrate` recomputes the running statistics for one chosen
  sub-model (exact averages over the given batches).

:class:`InstanceNorm` normalises each sample and channel over the spatial axes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax.masks import prefix_mask, trailing
from sortedjax.sharding import param

BN_MODES = ("shared", "private")


def _masked_mean(x, m, k):
    return jnp.sum(x * trailing(m, x.ndim), axis=-1, keepdims=True) / k


def _kept(features: int, size, dtype):
    m = prefix_mask(features, size, dtype)
    k = jnp.asarray(features if size is None else size, dtype)
    return m, k


class LayerNorm(nnx.Module):
    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-5,
        use_bias: bool = True,
        names=("embed",),
        dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.features, self.eps = features, eps
        self.scale = param(jnp.ones((features,), dtype), names)
        self.bias = param(jnp.zeros((features,), dtype), names) if use_bias else None

    def __call__(self, x, *, size=None):
        xf = x.astype(jnp.float32)
        m, k = _kept(self.features, size, jnp.float32)
        mean = _masked_mean(xf, m, k)
        var = _masked_mean(jnp.square(xf - mean), m, k)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * trailing(self.scale[...], x.ndim)
        if self.bias is not None:
            y = y + trailing(self.bias[...], x.ndim)
        return (y * trailing(m, x.ndim)).astype(x.dtype)


def rms_normalize(x, eps: float, m=None, k=None):
    """``x / rms(x)`` in float32, cast back to ``x.dtype``; the mean runs over mask ``m`` (``k`` kept)."""
    xf = x.astype(jnp.float32)
    ms = jnp.mean(xf * xf, axis=-1, keepdims=True) if m is None else _masked_mean(xf * xf, m, k)
    return (xf * jax.lax.rsqrt(ms + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """``w * x / rms(x)`` (LLaMA); the scale multiplies after the cast back, as transformers does."""

    def __init__(
        self, features: int, *, eps: float = 1e-6, names=("embed",), dtype=jnp.float32, rngs: nnx.Rngs | None = None
    ):
        del rngs
        self.features, self.eps = features, eps
        self.scale = param(jnp.ones((features,), dtype), names)

    def __call__(self, x, *, size=None):
        scale = trailing(self.scale[...], x.ndim)
        if size is None:
            return scale * rms_normalize(x, self.eps)
        m, k = _kept(self.features, size, jnp.float32)
        return scale * rms_normalize(x, self.eps, m, k) * trailing(m.astype(x.dtype), x.ndim)


class BatchNorm(nnx.Module):
    """Batch normalisation over every axis but the last (channels).

    ``use_running_average`` (attribute, or the call argument) switches between batch
    statistics (training; running averages updated with ``momentum``) and the stored ones.
    While ``cumulative`` is True (set by :func:`recalibrate`), the running statistics become
    the exact mean of the batch statistics seen since they were reset.
    """

    def __init__(
        self,
        features: int,
        *,
        mode: str = "shared",
        widths: Sequence[int] | None = None,
        momentum: float = 0.9,
        eps: float = 1e-5,
        names=("channels",),
        dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        if mode not in BN_MODES:
            raise ValueError(f"BatchNorm mode {mode!r} unknown; allowed: {BN_MODES}")
        if mode == "private":
            widths = tuple(int(w) for w in (widths or ()))
            if not widths or any(not 1 <= w <= features for w in widths) or len(set(widths)) != len(widths):
                raise ValueError(f"private BatchNorm needs distinct widths in 1..{features}, got {widths}")
        self.features, self.mode, self.widths = features, mode, widths
        self.momentum, self.eps = momentum, eps
        self.use_running_average, self.cumulative = False, False
        lead = (len(widths),) if mode == "private" else ()
        lnames = ((None,) if lead else ()) + tuple(names)
        self.scale = param(jnp.ones(lead + (features,), dtype), lnames)
        self.bias = param(jnp.zeros(lead + (features,), dtype), lnames)
        self.mean = nnx.BatchStat(jnp.zeros(lead + (features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(lead + (features,), jnp.float32))
        self.count = nnx.BatchStat(jnp.zeros(lead, jnp.float32))

    def _index(self, size):
        if self.mode == "shared":
            return None
        if size is None:
            size = self.features
        if not isinstance(size, jax.core.Tracer) and int(size) not in self.widths:
            raise ValueError(f"private BatchNorm has statistics for widths {self.widths}, not {int(size)}")
        return jnp.argmax(jnp.asarray(self.widths) == jnp.asarray(size))

    def __call__(self, x, *, size=None, use_running_average: bool | None = None):
        ura = self.use_running_average if use_running_average is None else use_running_average
        i = self._index(size)
        pick = (lambda v: v) if i is None else (lambda v: v[i])
        xf = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        if ura:
            mean, var = pick(self.mean[...]), pick(self.var[...])
        else:
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - trailing(mean, x.ndim)), axes)
            count = pick(self.count[...])
            w = jnp.where(self.cumulative, 1.0 / (count + 1.0), 1.0 - self.momentum)
            new_mean = pick(self.mean[...]) * (1 - w) + mean * w
            new_var = pick(self.var[...]) * (1 - w) + var * w
            if i is None:
                self.mean[...], self.var[...], self.count[...] = new_mean, new_var, count + 1
            else:
                self.mean[...] = self.mean[...].at[i].set(new_mean)
                self.var[...] = self.var[...].at[i].set(new_var)
                self.count[...] = self.count[...].at[i].set(count + 1)
        scale, bias = pick(self.scale[...]), pick(self.bias[...])
        mean, var, scale, bias = (trailing(v, x.ndim) for v in (mean, var, scale, bias))
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return (y * trailing(prefix_mask(self.features, size, jnp.float32), x.ndim)).astype(x.dtype)


class InstanceNorm(nnx.Module):
    """Per-sample, per-channel normalisation over the spatial axes (channels last), affine."""

    def __init__(
        self, features: int, *, eps: float = 1e-5, names=("channels",), dtype=jnp.float32, rngs: nnx.Rngs | None = None
    ):
        del rngs
        self.features, self.eps = features, eps
        self.scale = param(jnp.ones((features,), dtype), names)
        self.bias = param(jnp.zeros((features,), dtype), names)

    def __call__(self, x, *, size=None):
        xf = x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim - 1))
        mean = jnp.mean(xf, axes, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axes, keepdims=True)
        scale, bias = trailing(self.scale[...], x.ndim), trailing(self.bias[...], x.ndim)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return (y * trailing(prefix_mask(self.features, size, jnp.float32), x.ndim)).astype(x.dtype)


def recalibrate(model: nnx.Module, forward: Callable[[nnx.Module, object], object], batches: Iterable) -> nnx.Module:
    """Recompute every BatchNorm's running statistics as the exact mean over ``batches``.

    ``forward(model, batch)`` runs the model on one batch at the chosen sub-model (for
    private statistics, only that width's entry changes). Statistics are reset first (the
    chosen width's entry only, in private mode, is overwritten by the averages). Returns
    ``model`` (updated in place) with ``use_running_average`` set for evaluation.
    """
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)]
    if not bns:
        raise ValueError("recalibrate: the model has no BatchNorm layer")
    for bn in bns:
        bn.count[...] = jnp.zeros_like(bn.count[...])
        bn.use_running_average, bn.cumulative = False, True
    step = nnx.jit(lambda m, b: forward(m, b))
    n = 0
    for batch in batches:
        step(model, batch)
        n += 1
    for bn in bns:
        bn.use_running_average, bn.cumulative = True, False
    if n == 0:
        raise ValueError("recalibrate: no batches given")
    return model
