"""What the sorted CNNs (cPreResNet20, MobileNetV2) share: width levels, norms, extraction.

**Width.** A CNN's layers have different channel counts, so its sub-model ``width`` is a
*level* ``k`` in ``1..width_levels``: every layer of ``C`` channels keeps its first
:func:`kept` ``(C, k, L) = ceil(C k / L)`` channels (an int32 expression, so ``k`` may be traced).
``width_levels=4`` gives the 25/50/75/100 % widths of Table 4.2, ``10`` the ten widths of
Fig 4.2. Parameters carry the logical axis name ``f"c{C}"`` for a ``C``-channel axis, so
:func:`sortedjax.extract.extract` slices every axis to its kept prefix from the names alone.

**Norms.** ``"instance"`` (InstanceNorm), ``"batch"`` (one shared BatchNorm for every
sub-model) or ``"batch_private"`` (one BatchNorm per width level: switchable BN of slimmable
networks). BatchNorm statistics are not parameters; :func:`extract_cnn` copies them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax import nn
from sortedjax.extract import concrete_sizes, extract

NORMS = ("instance", "batch", "batch_private")


def axis(c: int) -> str:
    """The logical axis name of a ``c``-channel axis."""
    return f"c{int(c)}"


def kept(c: int, level, levels: int):
    """Channels of a ``c``-channel layer kept at width level ``level`` of ``levels`` (traced ok)."""
    if level is None:
        return None
    if isinstance(level, int):
        return max(1, math.ceil(c * level / levels))
    return jnp.maximum(1, (c * jnp.asarray(level, jnp.int32) + levels - 1) // levels)


def check_norm(norm: str, field: str = "norm") -> None:
    if norm not in NORMS:
        raise ValueError(f"{field} {norm!r} unknown; allowed: {NORMS}")


def make_norm(norm: str, c: int, levels: int):
    """A norm over ``c`` channels; private BatchNorm gets one entry per distinct kept width."""
    if norm == "instance":
        return nn.InstanceNorm(c, names=(axis(c),))
    if norm == "batch":
        return nn.BatchNorm(c, names=(axis(c),))
    widths = tuple(sorted({kept(c, k, levels) for k in range(1, levels + 1)}))
    return nn.BatchNorm(c, mode="private", widths=widths, names=(axis(c),))


def conv(cin: int, cout: int, k: int, *, stride: int = 1, groups: int = 1, rngs: nnx.Rngs) -> nn.Conv:
    """An ``nn.Conv`` (no bias) whose channel axes are named by their sizes."""
    names = (None, None, None if groups > 1 else axis(cin), axis(cout))
    return nn.Conv(cin, cout, k, strides=stride, groups=groups, names=names, rngs=rngs)


def pad_shortcut(x, cout: int, stride: int):
    """The parameter-free shortcut (He et al. 2016, option A): spatial stride, zero channels
    appended up to ``cout``. A kept channel prefix stays a prefix."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = cout - x.shape[-1]
    if extra < 0:
        raise ValueError(f"pad shortcut cannot shrink {x.shape[-1]} channels to {cout}")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))) if extra else x


def set_eval(model: nnx.Module, eval_mode: bool = True) -> nnx.Module:
    """BatchNorms use their running statistics (``eval_mode``) or batch statistics."""
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nn.BatchNorm):
            m.use_running_average = eval_mode
    return model


def extract_cnn(model: nnx.Module, sizes: Mapping[str, int]) -> nnx.Module:
    """:func:`sortedjax.extract.extract` plus the BatchNorm statistics (sliced; a private
    BatchNorm's entry for the chosen width), so the small model matches in eval mode too."""
    sizes = concrete_sizes(sizes, model.limits)
    small = extract(model, sizes)
    big_bns = {path: m for path, m in nnx.iter_modules(model) if isinstance(m, nn.BatchNorm)}
    for path, bn in nnx.iter_modules(small):
        if not isinstance(bn, nn.BatchNorm):
            continue
        src = big_bns[path]
        c = bn.features
        i = None if src.mode == "shared" else src.widths.index(c)
        mean, var, count = (v[...] if i is None else v[...][i] for v in (src.mean, src.var, src.count))
        bn.mean = nnx.BatchStat(jnp.asarray(mean)[..., :c])
        bn.var = nnx.BatchStat(jnp.asarray(var)[..., :c])
        bn.count = nnx.BatchStat(jnp.asarray(count))
        bn.use_running_average = src.use_running_average
    return small


def private_rows(params: dict, model: nnx.Module, sizes: Mapping[str, int]) -> dict:
    """Extraction hook: a private BatchNorm's scale / bias keep the chosen width's row only
    (the small model's BatchNorms are shared)."""
    for path, m in nnx.iter_modules(model):
        if isinstance(m, nn.BatchNorm) and m.mode == "private":
            node = params
            for p in path:
                node = node[p]
            c = kept(m.features, sizes.get("width", model.cfg.width_levels), model.cfg.width_levels)
            i = m.widths.index(c)
            node["scale"], node["bias"] = node["scale"][i], node["bias"][i]
    return params


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
