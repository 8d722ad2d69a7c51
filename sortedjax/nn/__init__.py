"""The layers every sortedjax model is built from.

Each layer takes the sub-model sizes it truncates as call arguments (``in_size``,
``out_size``, ``size``, ``heads``, ``hidden``, ``embed``, ``rank``; a traced int32 is fine) and
keeps shapes static, so a masked layer at size ``k`` equals the small layer built from the
sliced weights and one compiled program serves every sub-model. :class:`LayerStack` is the
only layer runner (depth gating, exits, KV cache, remat); it returns a :class:`StackOutput`.
"""

from sortedjax.nn import eager  # noqa: F401
from sortedjax.nn.attention import Attention, KVCache, RoPE
from sortedjax.nn.conv import Conv
from sortedjax.nn.linear import Embed, Linear
from sortedjax.nn.mlp import ACTIVATIONS, MLP
from sortedjax.nn.norm import BatchNorm, InstanceNorm, LayerNorm, RMSNorm, recalibrate
from sortedjax.nn.stack import REMAT_POLICIES, LayerStack, StackOutput

__all__ = [
    "ACTIVATIONS",
    "Attention",
    "BatchNorm",
    "Conv",
    "Embed",
    "InstanceNorm",
    "KVCache",
    "LayerNorm",
    "LayerStack",
    "Linear",
    "MLP",
    "REMAT_POLICIES",
    "RMSNorm",
    "RoPE",
    "StackOutput",
    "recalibrate",
]
