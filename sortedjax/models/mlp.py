"""A SortedNet MLP: width-sorted hidden neurons and a depth-gated stack of hidden blocks.

``in_dim -> hidden`` (input layer), ``num_blocks`` stacked ``hidden -> hidden`` blocks run by
:class:`sortedjax.nn.LayerStack`, then ``hidden -> out_dim``. A :class:`SubModel` with
``width=k`` keeps the first ``k`` neurons of every hidden layer; ``depth=n`` runs the first
``n`` blocks. Shapes never change, so one compiled program serves every sub-model, and
:func:`sortedjax.extract.extract` cuts any sub-model out as a smaller ``SortedMLP``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax import nn
from sortedjax.masks import trailing
from sortedjax.submodel import SubModel, check_sizes

ACTIVATIONS = ("relu", "gelu", "tanh")


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
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLPConfig.activation {self.activation!r} unknown; allowed: {ACTIVATIONS}")


def _uniform(key, shape, dtype, fan_in):  # torch.nn.Linear's default initialisation
    return (jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) / jnp.sqrt(fan_in)).astype(dtype)


def _dense(n_in, n_out, names, rngs):
    init = lambda k, s, d: _uniform(k, s, d, n_in)  # noqa: E731
    return nn.Linear(n_in, n_out, names=names, kernel_init=init, bias_init=init, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, cfg: MLPConfig, *, rngs: nnx.Rngs):
        self.act = cfg.activation
        self.dense = _dense(cfg.hidden, cfg.hidden, ("embed", "mlp"), rngs)  # FSDP shards the input axis

    def __call__(self, h, *, width=None, mask=None, rank=None):
        h = nn.ACTIVATIONS[self.act](self.dense(h, out_size=width, rank=rank))
        return h if mask is None else h * trailing(mask, h.ndim)


class SortedMLP(nnx.Module):
    def __init__(self, cfg: MLPConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.inp = _dense(cfg.in_dim, cfg.hidden, ("in", "mlp"), rngs)
        self.blocks = nn.LayerStack(lambda r: Block(cfg, rngs=r), cfg.num_blocks, rngs=rngs) if cfg.num_blocks else None
        self.out = _dense(cfg.hidden, cfg.out_dim, ("mlp", "classes"), rngs)

    @property
    def limits(self) -> dict[str, int]:
        return {"width": self.cfg.hidden, **({"depth": self.cfg.num_blocks} if self.cfg.num_blocks else {})}

    def __call__(self, x_BxD: jax.Array, sub: SubModel | None = None, *, hidden_mask=None) -> jax.Array:
        """Logits of sub-model ``sub`` (None = full). ``hidden_mask`` (a 0/1 vector over the
        hidden neurons) replaces the prefix width mask, e.g. to keep the *last* k neurons."""
        sub = sub or SubModel()
        check_sizes(sub, self.limits)
        act = nn.ACTIVATIONS[self.cfg.activation]
        mask = None if hidden_mask is None else jnp.asarray(hidden_mask, x_BxD.dtype)
        h = act(self.inp(x_BxD, out_size=sub.width, rank=sub.rank))
        h = h if mask is None else h * trailing(mask, h.ndim)
        if self.blocks is not None:
            h = self.blocks(h, depth=sub.depth, width=sub.width, mask=mask, rank=sub.rank).hidden
        return self.out(h, rank=sub.rank)

    # -- extraction (sortedjax.extract) -------------------------------------------------------
    def sub_config(self, sizes) -> MLPConfig:
        return dataclasses.replace(
            self.cfg, hidden=sizes.get("width", self.cfg.hidden), num_blocks=sizes.get("depth", self.cfg.num_blocks)
        )

    def axis_sizes(self, sizes) -> dict[str, int]:
        w = sizes.get("width", self.cfg.hidden)  # a block's input ("embed") is the previous hidden layer
        return {"mlp": w, "embed": w, "layers": sizes.get("depth", self.cfg.num_blocks)}
