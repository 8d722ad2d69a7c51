"""The model protocol that :mod:`sortedjax.methods.soft`, :mod:`sortedjax.decoding` and
:mod:`sortedjax.metrics.analysis` rely on. Any model that implements it (built from
:mod:`sortedjax.nn`, or not) gets SoFT training, exit analysis, early-exit and
self-speculative decoding, and extraction.

Sizes are given as a :class:`~sortedjax.submodel.SubModel` (``depth`` = first layers,
``width`` / ``heads`` / ``rank`` as the model defines them); ``exits`` are 1-based layer
counts. Every method may be called inside ``jax.jit`` with traced sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax

from sortedjax.nn import KVCache
from sortedjax.submodel import SubModel


@dataclasses.dataclass(frozen=True)
class HFDescriptor:
    """How a model's Linears are named in its Hugging Face checkpoint (what PEFT adapters target).

    ``architecture``: ``"llama"``, ``"bert"``, ``"roberta"``, ``"gpt2"``; ``layer_prefix``: the HF
    name of layer ``N`` is ``f"{layer_prefix}{N}."``; ``layer_linears``: our per-layer Linear paths
    (inside the layer stack; several for a fused HF module, in its output order) -> the HF module
    suffix; ``heads``: our top-level Linear (outside the stack) -> its HF module name;
    ``headless``: the names are a base model's (``BertModel``, ``GPT2Model``: no task head, no
    ``bert.`` / ``transformer.`` prefix), the checkpoint the model was loaded from; ``tensors``: the
    tensor names of that checkpoint layout (what an adapter's module names are checked against;
    empty: not checked).
    """

    architecture: str
    layer_prefix: str
    layer_linears: Mapping[tuple[tuple[str, ...], ...], str]
    heads: Mapping[str, str]
    headless: bool = False
    tensors: frozenset[str] = frozenset()


@runtime_checkable
class SortedModel(Protocol):
    cfg: Any

    @property
    def limits(self) -> Mapping[str, int]:
        """The largest size of each sub-model dimension the model has (``{"depth": N, ...}``)."""

    def __call__(self, inputs: jax.Array, *, sub: SubModel | None = None, **kwargs) -> jax.Array:
        """Outputs (logits) of sub-model ``sub`` (``None``: the full model)."""

    def hidden_states(self, inputs: jax.Array, exits: Sequence[int] | jax.Array, **kwargs) -> jax.Array:
        """Pre-head hidden states ``E x ...`` after each exit (layers past the last exit skipped)."""

    def logits_from_hidden(self, h: jax.Array, exit_index: Any = None) -> jax.Array:
        """The output head on hidden states (``exit_index``: a separate exit head, if the model has them)."""


@runtime_checkable
class Extractable(Protocol):
    def sub_config(self, sizes: Mapping[str, int]) -> Any:
        """The config of the standalone model of concrete ``sizes``."""

    def axis_sizes(self, sizes: Mapping[str, int]) -> Mapping[str, int]:
        """Logical axis name -> kept prefix length (``{"layers": 4, "mlp": 256}``)."""


@runtime_checkable
class CausalLM(SortedModel, Protocol):
    """A decoder that :mod:`sortedjax.decoding` can generate with."""

    @property
    def num_layers(self) -> int: ...

    def init_cache(self, batch: int, length: int) -> KVCache:
        """An empty cache of ``length`` slots per row."""

    def forward_cached(
        self,
        tokens_BxT: jax.Array,
        cache: KVCache,
        *,
        start,
        positions_BxT: jax.Array,
        exit_layer=None,
        hook=None,
        hook_state=None,
    ):
        """Run ``T`` tokens written at cache slots ``start..`` through the first ``exit_layer``
        layers: ``(h_BxTxD, cache)`` (``+ (hook_state,)`` with a hook, see
        :class:`sortedjax.nn.LayerStack`)."""

    def logits_at_exit(self, h: jax.Array, exit_layer) -> jax.Array:
        """Logits for hidden states after ``exit_layer`` layers (the exit's own head if it has one)."""
