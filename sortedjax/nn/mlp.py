"""The transformer feed-forward block with a prefix of its hidden neurons kept."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sortedjax.nn.linear import Linear

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}


class MLP(nnx.Module):
    """``down(act(gate(x)) * up(x))`` (``gated``, LLaMA) or ``down(act(up(x)))`` (GPT/BERT).

    ``hidden`` keeps the first neurons of the hidden layer (the SortedNet width of an MLP);
    ``embed`` keeps the first features of the input / output (a sorted hidden size).
    """

    def __init__(
        self,
        embed: int,
        hidden: int,
        *,
        activation: str = "silu",
        gated: bool = True,
        use_bias: bool = False,
        dtype=jnp.float32,
        kernel_init=None,
        out_init=None,
        rngs: nnx.Rngs,
    ):
        self.act_name, self.gated = activation, gated
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} unknown; allowed: {sorted(ACTIVATIONS)}")
        kw = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.gate = Linear(embed, hidden, names=("embed", "mlp"), kernel_init=kernel_init, **kw) if gated else None
        self.up = Linear(embed, hidden, names=("embed", "mlp"), kernel_init=kernel_init, **kw)
        self.down = Linear(hidden, embed, names=("mlp", "embed"), kernel_init=out_init or kernel_init, **kw)

    def __call__(self, x, *, hidden=None, embed=None, rank=None):
        act = ACTIVATIONS[self.act_name]
        h = self.up(x, rank=rank)
        h = act(self.gate(x, rank=rank)) * h if self.gated else act(h)
        return self.down(h, in_size=hidden, out_size=embed, rank=rank)
