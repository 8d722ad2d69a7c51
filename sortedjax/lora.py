"""DyLoRA: LoRA whose rank ``b`` is chosen per step and can be truncated after training.

For a frozen base weight ``W`` (``in x out``), ``W_dw`` (``r_max x in``, random init) and
``W_up`` (``out x r_max``, zeros):

    y = x W + bias + (alpha / b) * ((x W_dw[:b]^T) W_up[:, :b]^T)

implemented with a static-shape rank mask ``arange(r_max) < b`` (``b`` may be traced), so one
compiled step trains every rank. In *frozen* mode only row ``b-1`` of ``W_dw`` and column
``b-1`` of ``W_up`` (the ``b``-th rank) receive gradient; :func:`keep_only_rank` also restores
the other rows after the optimizer update, so momentum cannot move them either.
After training the adapter works at any rank ``1..r_max`` and merges into ``W`` at a chosen rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax import masks


class Frozen(nnx.Variable):
    """A weight that is never trained (the LoRA base)."""


class LoRADown(nnx.Param):
    """``W_dw``: r_max x in."""


class LoRAUp(nnx.Param):
    """``W_up``: out x r_max."""


def check_rank(rank, r_max: int) -> None:
    if rank is None or isinstance(rank, jax.core.Tracer):
        return
    if not 1 <= int(rank) <= r_max:
        raise ValueError(f"rank {int(rank)} outside the allowed range 1..{r_max}")


class DyLoRALinear(nnx.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        r_max: int,
        alpha: float,
        frozen: bool = False,
        use_bias: bool = True,
        kernel: jax.Array | None = None,
        bias: jax.Array | None = None,
        rngs: nnx.Rngs,
    ):
        if r_max < 1:
            raise ValueError(f"r_max must be >= 1, got {r_max}")
        self.in_features, self.out_features, self.r_max = in_features, out_features, r_max
        self.alpha, self.frozen = float(alpha), frozen
        if kernel is None:
            kernel = jax.random.normal(rngs.params(), (in_features, out_features)) / jnp.sqrt(in_features)
        if kernel.shape != (in_features, out_features):
            raise ValueError(f"kernel shape {kernel.shape} != ({in_features}, {out_features})")
        meta = dict(eager_sharding=False)
        self.kernel = Frozen(jnp.asarray(kernel), out_sharding=("embed", "mlp"), **meta)
        self.bias = (
            Frozen(jnp.zeros((out_features,)) if bias is None else jnp.asarray(bias), out_sharding=("mlp",), **meta)
            if use_bias
            else None
        )
        self.lora_down = LoRADown(
            jax.random.normal(rngs.params(), (r_max, in_features)) / jnp.sqrt(in_features),
            out_sharding=("rank", "embed"),
            **meta,
        )
        self.lora_up = LoRAUp(jnp.zeros((out_features, r_max)), out_sharding=("mlp", "rank"), **meta)

    def _factors(self, rank):
        down, up = self.lora_down[...], self.lora_up[...]
        if self.frozen and rank is not None:
            idx = jnp.arange(self.r_max)
            b = jnp.asarray(rank, jnp.int32) - 1
            down = jnp.where((idx == b)[:, None], down, jax.lax.stop_gradient(down))
            up = jnp.where((idx == b)[None, :], up, jax.lax.stop_gradient(up))
        return down, up

    def __call__(self, x: jax.Array, rank=None) -> jax.Array:
        """Output with the adapter truncated to ``rank`` (None = r_max)."""
        check_rank(rank, self.r_max)
        b = self.r_max if rank is None else rank
        down, up = self._factors(rank)
        mask = masks.rank_mask(self.r_max, b, x.dtype)
        scale = self.alpha / jnp.asarray(b, x.dtype)
        y = x @ self.kernel[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y + scale * (((x @ down.T) * mask) @ up.T)

    def merged_kernel(self, rank=None) -> jax.Array:
        """``W + alpha/b * (W_up[:, :b] W_dw[:b])^T``: a plain kernel equal to the adapter at ``rank``."""
        check_rank(rank, self.r_max)
        b = self.r_max if rank is None else rank
        mask = masks.rank_mask(self.r_max, b, self.lora_down.dtype)
        delta = (self.lora_up[...] * mask[None, :]) @ self.lora_down[...]
        return self.kernel[...] + (self.alpha / jnp.asarray(b, delta.dtype)) * delta.T


def keep_only_rank(old_params, new_params, rank):
    """Frozen mode: take the update of rank ``rank`` only; every other LoRA row/column keeps its old value.

    Works on any nnx State / pytree containing :class:`LoRADown` / :class:`LoRAUp` variables;
    other parameters take their new values.
    """

    def pick(old, new):
        if isinstance(new, LoRADown):
            keep = (jnp.arange(new.shape[0]) == jnp.asarray(rank) - 1)[:, None]
        elif isinstance(new, LoRAUp):
            keep = (jnp.arange(new.shape[1]) == jnp.asarray(rank) - 1)[None, :]
        else:
            return new
        return new.replace(jnp.where(keep, new[...], old[...]))

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree.map(pick, old_params, new_params, is_leaf=is_var)
