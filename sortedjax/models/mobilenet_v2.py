"""MobileNetV2 (CIFAR variant) with a width multiplier, sorted in depth and width (Fig 4.2).

A 3x3 stem, the 17 inverted-residual blocks of MobileNetV2 (``expand 1x1 -> depthwise 3x3 ->
project 1x1``, residual where the shape is kept), a 1x1 head convolution, global average
pooling and a linear classifier; ReLU6 and BatchNorm (or InstanceNorm). The CIFAR variant
keeps stride 1 in the stem and the second stage (32x32 inputs). ``width_mult=1.4`` is the
thesis' network; channels are rounded to multiples of 8 as in the original.

Sub-models (a :class:`SubModel`, sizes may be traced, one compiled program serves all):

* ``width`` = level ``k`` in ``1..width_levels``: every layer of ``C`` channels keeps its first
  ``ceil(C k / width_levels)`` (:mod:`sortedjax.models.cnn_common`);
* ``depth`` = the number of blocks run, ``1..17``. A block past the depth is replaced by the
  parameter-free shortcut (identity, or stride + zero channels where the block changes the
  shape: He et al.'s option A, the block's ``skip``). The blocks run in :class:`sortedjax.nn.LayerStack`
  (``LayerStack.of``: unrolled, as their shapes differ). ``depth_skip="cond"`` gates each block by
  a ``lax.cond`` on the traced depth, so XLA executes only the taken branch; ``"select"`` runs the
  block and keeps its output or the shortcut with ``jnp.where`` (the default: no work skipped, yet
  the sampled training step is faster than with the conds on the CPU and on an H200, see
  :data:`DEPTH_SKIP`). Fig 4.2 uses the 16 depths 2..17 (the first block, the only one without
  expansion, always runs).

:func:`sortedjax.models.cnn_common.extract_cnn` cuts any sub-model out as a smaller
``MobileNetV2`` (fewer blocks, fewer channels) that computes the same logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

import sortedjax.models.cnn_common as cc
from sortedjax import nn
from sortedjax.submodel import SubModel, check_sizes

# (expansion t, channels c, repeats n, first stride s) of the CIFAR MobileNetV2
CIFAR_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


# How blocks past a traced depth are skipped. "cond": lax.cond per block, XLA runs only the taken
# branch; "select": every block runs and jnp.where keeps the block's output or the shortcut (no work
# skipped). Measured train steps (benchmarks/submodel_step.py --model cnn, results/submodel_step_cnn*.json),
# step time over a plain full-model step, sampled sub-model (depth 2..17, width 1..10) / depth 2:
#   2-core CPU, width 0.25, 16x16, batch 32:  cond 4.69x / 1.92x, select 1.02x / 1.01x
#   H200 (jax 0.11.2), width 1.4, 32x32, batch 128:  cond 1.37x / 0.80x, select 1.23x / 0.95x
# The sampled step, the one training runs, is faster with select on both, so it is the default.
DEPTH_SKIP = ("select", "cond")


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


@dataclasses.dataclass(frozen=True, kw_only=True)
class MobileNetV2Config:
    """``blocks``: ``(hidden, out, stride, expand, residual)`` per block (see :func:`config`)."""

    num_classes: int = 10
    in_channels: int = 3
    stem: int = 32
    blocks: tuple[tuple[int, int, int, bool, bool], ...] = ()
    last: int = 1280
    norm: str = "batch"
    width_levels: int = 10
    tail_stride: int = 1  # subsampling before the head (an extracted shallow sub-model's skipped strides)
    depth_skip: str = "select"  # how a traced depth skips blocks: "select" or "cond" (see DEPTH_SKIP)

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(tuple(b) for b in self.blocks))
        for f in ("num_classes", "in_channels", "stem", "last", "width_levels", "tail_stride"):
            if getattr(self, f) < 1:
                raise ValueError(f"MobileNetV2Config.{f} must be >= 1, got {getattr(self, f)}")
        if not self.blocks:
            raise ValueError("MobileNetV2Config.blocks is empty; build the config with mobilenet_v2.config(...)")
        cin = self.stem
        for i, (hidden, cout, stride, expand, residual) in enumerate(self.blocks):
            if min(hidden, cout) < 1 or stride not in (1, 2) or (not expand and hidden != cin):
                raise ValueError(f"MobileNetV2Config.blocks[{i}]={self.blocks[i]} is not a valid block after {cin} ch")
            if residual and (stride != 1 or cin != cout):
                raise ValueError(f"MobileNetV2Config.blocks[{i}] cannot be residual: {cin}->{cout} ch, stride {stride}")
            if i > 0 and cout < cin:
                raise ValueError(
                    f"MobileNetV2Config.blocks[{i}] shrinks {cin}->{cout} ch: a skipped block could not pad"
                )
            cin = cout
        cc.check_norm(self.norm, "MobileNetV2Config.norm")
        if self.depth_skip not in DEPTH_SKIP:
            raise ValueError(f"MobileNetV2Config.depth_skip must be one of {DEPTH_SKIP}, got {self.depth_skip!r}")


def config(
    width_mult: float = 1.4,
    *,
    num_classes: int = 10,
    stages=CIFAR_STAGES,
    norm: str = "batch",
    width_levels: int = 10,
    last: int = 1280,
    in_channels: int = 3,
    depth_skip: str = "select",
) -> MobileNetV2Config:
    """The config of MobileNetV2 with ``width_mult`` (1.4 in the thesis) over ``stages``."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    stem = make_divisible(32 * width_mult)
    blocks, cin = [], stem
    for t, c, n, s in stages:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            blocks.append((cin * t, cout, stride, t != 1, stride == 1 and cin == cout))
            cin = cout
    return MobileNetV2Config(
        num_classes=num_classes,
        in_channels=in_channels,
        stem=stem,
        blocks=tuple(blocks),
        last=make_divisible(last * max(1.0, width_mult)),
        norm=norm,
        width_levels=width_levels,
        depth_skip=depth_skip,
    )


class InvertedResidual(nnx.Module):
    def __init__(self, cin: int, spec, cfg: MobileNetV2Config, *, rngs: nnx.Rngs):
        hidden, cout, stride, expand, residual = spec
        self.cin, self.hidden, self.cout, self.stride, self.residual = cin, hidden, cout, stride, residual
        self.levels = cfg.width_levels
        self.expand = cc.conv(cin, hidden, 1, rngs=rngs) if expand else None
        self.norm0 = cc.make_norm(cfg.norm, hidden, cfg.width_levels) if expand else None
        self.dw = cc.conv(hidden, hidden, 3, stride=stride, groups=hidden, rngs=rngs)
        self.norm1 = cc.make_norm(cfg.norm, hidden, cfg.width_levels)
        self.project = cc.conv(hidden, cout, 1, rngs=rngs)
        self.norm2 = cc.make_norm(cfg.norm, cout, cfg.width_levels)

    def __call__(self, x, *, width=None):
        kh, ko = cc.kept(self.hidden, width, self.levels), cc.kept(self.cout, width, self.levels)
        h = x
        if self.expand is not None:
            h = jax.nn.relu6(self.norm0(self.expand(h, out_size=kh), size=kh))
        h = jax.nn.relu6(self.norm1(self.dw(h, out_size=kh), size=kh))
        h = self.norm2(self.project(h, out_size=ko), size=ko)
        return x + h if self.residual else h

    def skip(self, x, *, width=None):
        del width
        return cc.pad_shortcut(x, self.cout, self.stride)


class MobileNetV2(nnx.Module):
    def __init__(self, cfg: MobileNetV2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.stem = nn.Conv(cfg.in_channels, cfg.stem, 3, names=(None, None, "in", cc.axis(cfg.stem)), rngs=rngs)
        self.stem_norm = cc.make_norm(cfg.norm, cfg.stem, cfg.width_levels)
        blocks, cin = [], cfg.stem
        for spec in cfg.blocks:
            blocks.append(InvertedResidual(cin, spec, cfg, rngs=rngs))
            cin = spec[1]
        self.blocks = nn.LayerStack.of(blocks)
        self.head = cc.conv(cin, cfg.last, 1, rngs=rngs)
        self.head_norm = cc.make_norm(cfg.norm, cfg.last, cfg.width_levels)
        self.classifier = nn.Linear(cfg.last, cfg.num_classes, names=(cc.axis(cfg.last), "classes"), rngs=rngs)

    @property
    def limits(self) -> dict[str, int]:
        return {"depth": len(self.cfg.blocks), "width": self.cfg.width_levels}

    def __call__(self, x_BxHxWxC: jax.Array, sub: SubModel | None = None) -> jax.Array:
        """Logits ``B x classes`` of sub-model ``sub`` (``None``: the full model)."""
        sub = sub or SubModel()
        check_sizes(sub, self.limits)
        if x_BxHxWxC.ndim != 4 or x_BxHxWxC.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"MobileNetV2 expects B x H x W x {self.cfg.in_channels} images, got {x_BxHxWxC.shape}")
        w, levels = sub.width, self.cfg.width_levels
        ks = cc.kept(self.cfg.stem, w, levels)
        h = jax.nn.relu6(self.stem_norm(self.stem(x_BxHxWxC, out_size=ks), size=ks))
        h = self.blocks(h, depth=sub.depth, gate=self.cfg.depth_skip, width=w).hidden  # depth >= 1: block 1 runs
        if self.cfg.tail_stride > 1:
            h = h[:, :: self.cfg.tail_stride, :: self.cfg.tail_stride, :]
        kl = cc.kept(self.cfg.last, w, levels)
        h = jax.nn.relu6(self.head_norm(self.head(h, out_size=kl), size=kl))
        return self.classifier(jnp.mean(h, axis=(1, 2)))

    def conv_specs(self, sizes: dict | None = None, image: tuple[int, int] = (32, 32)) -> list[tuple]:
        """``(h_out, w_out, kh, kw, cin_per_group, cout)`` of every convolution / linear layer the
        sub-model ``sizes`` runs (for :mod:`sortedjax.flops`); skipped blocks cost nothing."""
        sizes = sizes or {}
        k, levels = sizes.get("width", self.cfg.width_levels), self.cfg.width_levels
        depth = sizes.get("depth", len(self.cfg.blocks))
        kp = lambda c: cc.kept(c, k, levels)  # noqa: E731
        hh, ww = image
        out = [(hh, ww, 3, 3, self.cfg.in_channels, kp(self.cfg.stem))]
        for i, b in enumerate(self.blocks.layers):
            s = b.stride
            if i >= depth:
                hh, ww = -(-hh // s), -(-ww // s)
                continue
            if b.expand is not None:
                out.append((hh, ww, 1, 1, kp(b.cin), kp(b.hidden)))
            hh, ww = -(-hh // s), -(-ww // s)
            out.append((hh, ww, 3, 3, 1, kp(b.hidden)))
            out.append((hh, ww, 1, 1, kp(b.hidden), kp(b.cout)))
        hh, ww = -(-hh // self.cfg.tail_stride), -(-ww // self.cfg.tail_stride)
        cin = self.blocks.layers[min(depth, self.blocks.num_layers) - 1].cout
        out.append((hh, ww, 1, 1, kp(cin), kp(self.cfg.last)))
        out.append((1, 1, 1, 1, kp(self.cfg.last), self.cfg.num_classes))
        return out

    # -- extraction (sortedjax.extract / cnn_common.extract_cnn) --------------------------------
    def sub_config(self, sizes) -> MobileNetV2Config:
        k, levels = sizes.get("width", self.cfg.width_levels), self.cfg.width_levels
        depth = sizes.get("depth", len(self.cfg.blocks))
        kp = lambda c: cc.kept(c, k, levels)  # noqa: E731
        blocks, tail = [], self.cfg.tail_stride
        for i, (hidden, cout, stride, expand, residual) in enumerate(self.cfg.blocks):
            if i < depth:
                blocks.append((kp(hidden), kp(cout), stride, expand, residual))
            else:  # skipped blocks leave their strides (the shortcut); their zero channels are
                tail *= stride  # dropped, and the head reads the rows of the kept ones (extract_params)
        norm = "batch" if self.cfg.norm == "batch_private" else self.cfg.norm
        return dataclasses.replace(
            self.cfg,
            stem=kp(self.cfg.stem),
            blocks=tuple(blocks),
            last=kp(self.cfg.last),
            norm=norm,
            width_levels=1,
            tail_stride=tail,
        )

    def axis_sizes(self, sizes) -> dict[str, int]:
        k, levels = sizes.get("width", self.cfg.width_levels), self.cfg.width_levels
        chans = {self.cfg.stem, self.cfg.last} | {c for b in self.cfg.blocks for c in b[:2]}
        return {cc.axis(c): cc.kept(c, k, levels) for c in chans}

    def extract_params(self, params, sizes):
        params = cc.private_rows(params, self, sizes)
        depth = sizes.get("depth", len(self.cfg.blocks))
        layers = params["blocks"]["layers"]
        params["blocks"]["layers"] = {i: p for i, p in layers.items() if int(i) < depth}
        cin = cc.kept(self.cfg.blocks[depth - 1][1], sizes.get("width", self.cfg.width_levels), self.cfg.width_levels)
        params["head"]["kernel"] = params["head"]["kernel"][:, :, :cin, :]
        return params
