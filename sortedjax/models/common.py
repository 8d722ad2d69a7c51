"""What the Hugging Face-architecture models (LLaMA, GPT-2, encoders) share: host-side checks,
activation names, layer sizes, the cached forward, checkpoint name prefixes and head counts. The
walk between a checkpoint's tensors and our parameters is :mod:`sortedjax.hf.walk`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from sortedjax.nn.lora import adapters, check_rank
from sortedjax.submodel import SubModel, check_sizes

HF_ACTIVATIONS = {  # transformers' activation name -> sortedjax.nn.ACTIVATIONS
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "tanh": "tanh",
}


class Renamed(Mapping):
    """Checkpoint ``sd`` with name endings renamed (``{old: new}``, e.g. BERT's legacy ``LayerNorm.gamma``)."""

    def __init__(self, sd: Mapping, endings: dict[str, str]):
        def new(k):
            old = next((o for o in endings if k.endswith(o)), None)
            return k if old is None else k[: -len(old)] + endings[old]

        self.sd, self.names = sd, {new(k): k for k in sd}

    def __getitem__(self, name: str):
        if name not in self.names:
            raise KeyError(f"tensor {name!r} not in the checkpoint")
        return self.sd[self.names[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def check_activation(owner: str, name: str) -> None:
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"{owner} {name!r} is not supported; allowed: {tuple(HF_ACTIVATIONS)}")


def check_ids(tokens, num: int, what: str = "token id", where: str = "the vocabulary") -> None:
    """Ids outside ``0..num-1`` raise (concrete ids only; ``jnp.take`` would give NaN)."""
    if tokens is None or isinstance(tokens, jax.core.Tracer):
        return
    t = np.asarray(tokens)
    if t.size and (t.min() < 0 or t.max() >= num):
        bad = int(t.min()) if t.min() < 0 else int(t.max())
        raise ValueError(f"{what} {bad} outside {where}: allowed 0..{num - 1}")


def sizes(sub: SubModel | None, exit_layer, limits, model: nnx.Module | None = None) -> tuple:
    """(depth, layer kwargs ``width`` / ``heads`` / ``rank``) of ``sub`` or ``exit_layer`` (a
    shorthand for ``sub.depth``), checked (a concrete rank against the r_max of ``model``'s DyLoRA
    adapters) and filled (:meth:`SubModel.filled`): every dimension of ``limits`` an int32 scalar,
    an unset one at its limit, and the rank at r_max when ``model``'s adapters share one. So the
    full model, every sub-model and every exit reach the layers as the same pytree structure, and
    an eager call (:func:`sortedjax.nn.eager.jit_call`) or a trace compiles once for all of them."""
    if sub is not None and exit_layer is not None and sub.depth is not None:
        raise ValueError("give the depth once: sub=SubModel(depth=...) or exit_layer=..., not both")
    sub = sub or SubModel()
    if exit_layer is not None:
        sub = dataclasses.replace(sub, depth=exit_layer)
    check_sizes({"depth": sub.depth, "width": sub.width, "heads": sub.heads}, limits)
    r_max = sorted({a.r_max for a in adapters(model).values()}) if model is not None else []
    if r_max and sub.rank is not None and not isinstance(sub.rank, jax.core.Tracer):
        check_rank(sub.rank, r_max[0])
    full = sub.filled({**limits, **({"rank": r_max[0]} if len(r_max) == 1 else {})})
    return full.depth, dict(width=full.width, heads=full.heads, rank=full.rank)


def run_cached(
    layers, x, n_tokens: int, cache, depth, kw: dict, *, start, start_layer, hook, hook_state, kv_only, **extra
):
    """The body of a decoder's ``forward_cached`` (the protocol): ``x`` (the embedded ``n_tokens``
    new tokens, or the given hidden state) through ``layers`` (a :class:`sortedjax.nn.LayerStack`)
    with the cache, a query attending to the valid slots up to its own; ``kw`` the layer sizes of
    :func:`sizes`, ``extra`` what the model's layers take besides (RoPE positions). Returns the
    protocol's ``(h, cache[, hook_state])`` (``hook_state`` with a hook)."""
    if kv_only:
        kw = {**kw, "kv_only": True}
    out = layers(
        x,
        depth=depth,
        first_layer=start_layer,
        cache=cache,
        hook=hook,
        hook_state=hook_state,
        mask=cache.attention_mask(start, n_tokens),
        start=start,
        **extra,
        **kw,
    )
    return (out.hidden, out.cache) + ((out.hook_state,) if hook is not None else ())


def hf_heads(hidden: int, heads: int, head_dim: int, arch: str) -> int:
    """The head count a transformers ``arch`` config needs (it ties head_dim to hidden / heads): our
    kept heads, padded with zero heads up to ``hidden / head_dim``; ValueError where impossible."""
    if hidden % head_dim or heads * head_dim > hidden:
        raise ValueError(
            f"{arch} has head_dim = hidden_size / num_attention_heads: width {hidden} with {heads} heads of "
            f"head_dim {head_dim} cannot be exported (need width a multiple of {head_dim} and heads <= "
            f"{hidden // head_dim})"
        )
    return hidden // head_dim


def prefix_of(sd, names: dict[str, str], arch: str) -> str:
    """The name prefix a checkpoint uses: ``names`` maps each prefix to a tensor it must hold."""
    for prefix, probe in names.items():
        if probe in sd:
            return prefix
    raise ValueError(f"not a {arch} checkpoint: it has none of {sorted(names.values())} (found e.g. {sorted(sd)[:3]})")
