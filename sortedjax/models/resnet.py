"""cPreResNet20: the pre-activation CIFAR ResNet-20 of Table 4.2, width-sorted.

A 3x3 stem convolution, three stages of ``blocks_per_stage`` pre-activation basic blocks
(``norm -> relu -> conv3x3 -> norm -> relu -> conv3x3`` plus the shortcut; a 1x1 convolution
of the pre-activated input where the shape changes), then ``norm -> relu -> global average
pool -> linear``. ResNet-20 is ``channels=(16, 32, 64)``, ``blocks_per_stage=3``
(1 + 3*3*2 + 1 = 20 weight layers). ``norm`` is ``"instance"``, ``"batch"`` (shared) or
``"batch_private"`` (switchable BN of slimmable networks, one per width level).

The sub-model ``width`` is a level ``k`` in ``1..width_levels``: every layer keeps its first
``ceil(C k / width_levels)`` channels (:mod:`sortedjax.models.cnn_common`). Shapes never
change, so one compiled program serves every width, and
:func:`sortedjax.models.cnn_common.extract_cnn` cuts any width out as a smaller model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

import sortedjax.models.cnn_common as cc
from sortedjax import nn
from sortedjax.submodel import SubModel, check_sizes


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    num_classes: int = 10
    in_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 3
    norm: str = "instance"
    width_levels: int = 4

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for f in ("num_classes", "in_channels", "blocks_per_stage", "width_levels"):
            if getattr(self, f) < 1:
                raise ValueError(f"ResNetConfig.{f} must be >= 1, got {getattr(self, f)}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"ResNetConfig.channels must be positive channel counts, got {self.channels}")
        cc.check_norm(self.norm, "ResNetConfig.norm")


class PreActBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, cfg: ResNetConfig, *, rngs: nnx.Rngs):
        self.cin, self.cout, self.levels = cin, cout, cfg.width_levels
        self.norm1 = cc.make_norm(cfg.norm, cin, cfg.width_levels)
        self.conv1 = cc.conv(cin, cout, 3, stride=stride, rngs=rngs)
        self.norm2 = cc.make_norm(cfg.norm, cout, cfg.width_levels)
        self.conv2 = cc.conv(cout, cout, 3, rngs=rngs)
        self.proj = cc.conv(cin, cout, 1, stride=stride, rngs=rngs) if stride != 1 or cin != cout else None

    def __call__(self, x, *, width=None):
        kin, kout = cc.kept(self.cin, width, self.levels), cc.kept(self.cout, width, self.levels)
        o = jax.nn.relu(self.norm1(x, size=kin))
        short = x if self.proj is None else self.proj(o, out_size=kout)
        h = self.conv1(o, out_size=kout)
        h = self.conv2(jax.nn.relu(self.norm2(h, size=kout)), out_size=kout)
        return h + short


class PreResNet(nnx.Module):
    def __init__(self, cfg: ResNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c0 = cfg.channels[0]
        self.stem = nn.Conv(cfg.in_channels, c0, 3, names=(None, None, "in", cc.axis(c0)), rngs=rngs)
        blocks, cin = [], c0
        for s, c in enumerate(cfg.channels):
            for b in range(cfg.blocks_per_stage):
                blocks.append(PreActBlock(cin, c, 2 if (s > 0 and b == 0) else 1, cfg, rngs=rngs))
                cin = c
        self.blocks = nnx.List(blocks)
        self.norm = cc.make_norm(cfg.norm, cin, cfg.width_levels)
        self.head = nn.Linear(cin, cfg.num_classes, names=(cc.axis(cin), "classes"), rngs=rngs)

    @property
    def limits(self) -> dict[str, int]:
        return {"width": self.cfg.width_levels}

    def __call__(self, x_BxHxWxC: jax.Array, sub: SubModel | None = None) -> jax.Array:
        """Logits ``B x classes`` of sub-model ``sub`` (``None``: the full model)."""
        sub = sub or SubModel()
        check_sizes(sub, self.limits)
        if x_BxHxWxC.ndim != 4 or x_BxHxWxC.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"PreResNet expects B x H x W x {self.cfg.in_channels} images, got {x_BxHxWxC.shape}")
        w, levels = sub.width, self.cfg.width_levels
        h = self.stem(x_BxHxWxC, out_size=cc.kept(self.cfg.channels[0], w, levels))
        for block in self.blocks:
            h = block(h, width=w)
        h = jax.nn.relu(self.norm(h, size=cc.kept(self.cfg.channels[-1], w, levels)))
        return self.head(jnp.mean(h, axis=(1, 2)))

    def conv_specs(self, sizes: dict | None = None, image: tuple[int, int] = (32, 32)) -> list[tuple]:
        """``(h_out, w_out, kh, kw, cin_per_group, cout)`` of every convolution / linear layer run
        by the sub-model ``sizes`` (for :mod:`sortedjax.flops`)."""
        sizes = sizes or {}
        k, levels = sizes.get("width", self.cfg.width_levels), self.cfg.width_levels
        kp = lambda c: cc.kept(c, k, levels)  # noqa: E731
        hh, ww = image
        c0 = self.cfg.channels[0]
        out = [(hh, ww, 3, 3, self.cfg.in_channels, kp(c0))]
        for blk in self.blocks:
            s = blk.conv1.strides[0]
            hh, ww = -(-hh // s), -(-ww // s)
            out.append((hh, ww, 3, 3, kp(blk.cin), kp(blk.cout)))
            out.append((hh, ww, 3, 3, kp(blk.cout), kp(blk.cout)))
            if blk.proj is not None:
                out.append((hh, ww, 1, 1, kp(blk.cin), kp(blk.cout)))
        out.append((1, 1, 1, 1, kp(self.cfg.channels[-1]), self.cfg.num_classes))
        return out

    # -- extraction (sortedjax.extract / cnn_common.extract_cnn) --------------------------------
    def sub_config(self, sizes) -> ResNetConfig:
        k, levels = sizes.get("width", self.cfg.width_levels), self.cfg.width_levels
        norm = "batch" if self.cfg.norm == "batch_private" else self.cfg.norm
        chans = tuple(cc.kept(c, k, levels) for c in self.cfg.channels)
        return dataclasses.replace(self.cfg, channels=chans, width_levels=1, norm=norm)

    def axis_sizes(self, sizes) -> dict[str, int]:
        k, levels = sizes.get("width", self.cfg.width_levels), self.cfg.width_levels
        return {cc.axis(c): cc.kept(c, k, levels) for c in self.cfg.channels}

    def extract_params(self, params, sizes):
        return cc.private_rows(params, self, sizes)


def cpreresnet20(norm: str = "instance", *, width_levels: int = 4, num_classes: int = 10, base: int = 16, seed=0):
    """The cPreResNet20 of Table 4.2 (``base`` = first-stage channels, 16 in the thesis)."""
    cfg = ResNetConfig(
        num_classes=num_classes, channels=(base, 2 * base, 4 * base), norm=norm, width_levels=width_levels
    )
    return PreResNet(cfg, rngs=nnx.Rngs(seed))
