"""2-D convolution (channels last) with input / output channel prefixes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax.masks import prefix_mask, trailing
from sortedjax.sharding import param


class Conv(nnx.Module):
    """``NHWC`` convolution, kernel ``kh x kw x in/groups x out``.

    ``in_size`` / ``out_size`` keep the first input / output channels. ``groups=in_features``
    is a depthwise convolution (MobileNet); its ``out_size`` then also truncates the input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size=(3, 3),
        *,
        strides=(1, 1),
        padding="SAME",
        groups: int = 1,
        use_bias: bool = False,
        names=(None, None, "in_channels", "channels"),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if in_features % groups or out_features % groups:
            raise ValueError(f"Conv groups={groups} must divide in ({in_features}) and out ({out_features}) channels")
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        self.padding = padding
        shape = ks + (in_features // groups, out_features)
        fan_in = math.prod(shape[:3])
        w = jax.random.normal(rngs.params(), shape, jnp.float32) * math.sqrt(2.0 / fan_in)  # He init
        self.kernel = param(w.astype(dtype), names)
        self.bias = param(jnp.zeros((out_features,), dtype), names[-1:]) if use_bias else None

    def __call__(self, x_BxHxWxC, *, in_size=None, out_size=None):
        x = x_BxHxWxC
        if in_size is not None:
            x = x * trailing(prefix_mask(self.in_features, in_size, x.dtype), x.ndim)
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel[...].astype(x.dtype),
            self.strides,
            self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )
        if self.bias is not None:
            y = y + trailing(self.bias[...].astype(y.dtype), y.ndim)
        if out_size is not None:
            y = y * trailing(prefix_mask(self.out_features, out_size, y.dtype), y.ndim)
        return y
