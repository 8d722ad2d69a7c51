"""A SortedNet MLP: width-sorted hidden neurons and a depth-gated stack of hidden blocks.

``in_dim -> hidden`` (input layer), ``num_blocks`` stacked ``hidden -> hidden`` blocks run by
:func:`sortedjax.masks.depth_scan`, then ``hidden -> out_dim``. A :class:`SubModel` with
``width=k`` keeps the first ``k`` neurons of every hidden layer; ``depth=n`` runs the first
``n`` blocks. Shapes never change, so one compiled program serves every sub-model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax import masks
from sortedjax.sharding import param
from sortedjax.submodel import SubModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPConfig:
    in_dim: int
    hidden: int
    out_dim: int
    num_blocks: int = 0  # hidden -> hidden blocks after the input layer (the depth dimension)
    activation: str = "relu"

    def __post_init__(self):
        for f in ("in_dim", "hidden", "out_dim"):
            if getattr(self, f) < 1:
                raise ValueError(f"MLPConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.num_blocks < 0:
            raise ValueError(f"MLPConfig.num_blocks must be >= 0, got {self.num_blocks}")
        if self.activation not in ("relu", "gelu", "tanh"):
            raise ValueError(f"MLPConfig.activation {self.activation!r} unknown; allowed: relu, gelu, tanh")


def _act(name):
    return {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh}[name]


def _dense_init(key, fan_in, shape):
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) / jnp.sqrt(fan_in)


class SortedMLP(nnx.Module):
    def __init__(self, cfg: MLPConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, o, L = cfg.in_dim, cfg.hidden, cfg.out_dim, cfg.num_blocks
        self.w_in = param(_dense_init(rngs.params(), d, (d, h)), ("in", "mlp"))
        self.b_in = param(_dense_init(rngs.params(), d, (h,)), ("mlp",))
        self.w_blocks = param(_dense_init(rngs.params(), h, (L, h, h)), ("layers", "embed", "mlp")) if L else None
        self.b_blocks = param(_dense_init(rngs.params(), h, (L, h)), ("layers", "mlp")) if L else None
        self.w_out = param(_dense_init(rngs.params(), h, (h, o)), ("mlp", "classes"))
        self.b_out = param(_dense_init(rngs.params(), h, (o,)), ("classes",))

    def check(self, sub: SubModel | None) -> None:
        """Validate concrete sizes of ``sub`` against this model (traced sizes pass)."""
        if sub is None:
            return
        for name, hi in (("width", self.cfg.hidden), ("depth", self.cfg.num_blocks)):
            v = getattr(sub, name)
            if v is None or isinstance(v, jax.core.Tracer):
                continue
            if not 1 <= int(v) <= hi:
                raise ValueError(f"{name} {int(v)} outside the allowed range 1..{hi}")

    def __call__(self, x_BxD: jax.Array, sub: SubModel | None = None, *, hidden_mask=None) -> jax.Array:
        """Logits of sub-model ``sub`` (None = full). ``hidden_mask`` overrides the width mask."""
        self.check(sub)
        act = _act(self.cfg.activation)
        width = None if sub is None else sub.width
        m = masks.width_mask(self.cfg.hidden, width) if hidden_mask is None else jnp.asarray(hidden_mask, jnp.float32)
        h = act(x_BxD @ self.w_in[...] + self.b_in[...]) * m
        if self.cfg.num_blocks:
            depth = None if sub is None else sub.depth

            def block(p, h):
                w, b = p
                return act(h @ w + b) * m

            h = masks.depth_scan(block, (self.w_blocks[...], self.b_blocks[...]), h, depth)
        return h @ self.w_out[...] + self.b_out[...]
