"""What the Hugging Face-architecture models (encoder, GPT-2) share: host-side checks, activation
names, and the walk between a checkpoint's tensors and our parameter tree.

A model lists its tensors as ``(paths, hf_name, n_in, shape)`` entries (:func:`load_params`):
``paths`` are our parameter paths (one, or several for a fused tensor such as GPT-2's ``c_attn``,
concatenated on the output axis; a path ending in an int is that layer of a stacked parameter),
``shape`` our shape of one part, ``n_in`` the number of input axes of a kernel (``0``: a vector
stored flat, ``None``: stored as is). Kernels are torch ``Linear`` weights (``out x in``) or, with
``conv1d``, transformers' ``Conv1D`` weights (``in x out``, not transposed).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from sortedjax import hf
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


def param_shapes(make_model) -> dict:
    """``{path: shape}`` tree of the ``nnx.Param`` state of ``make_model()`` (built abstractly)."""
    abstract = nnx.eval_shape(make_model)
    return jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))


def layer_entries(hf_layer: dict, layer_shapes: dict, num_layers: int, prefix: str) -> list:
    """Entries of every layer: ``hf_layer`` maps an HF suffix to ``(our paths, n_in)``."""
    out = []
    for suffix, (paths, n_in) in hf_layer.items():
        shape = layer_shapes
        for k in paths[0]:
            shape = shape[k]
        for i in range(num_layers):
            ours = tuple(("layers", "layers") + p + (i,) for p in paths)
            out.append((ours, f"{prefix}{i}.{suffix}", n_in, shape[1:]))
    return out


def read_parts(sd, name: str, shape, n_in, dtype, parts: int = 1, conv1d: bool = False) -> list:
    """``parts`` arrays of our ``shape`` stored fused (concatenated on the output axis) in ``name``."""
    if n_in is None:
        return [hf.read_tensor(sd, name, shape, None, dtype)]
    rows, cols = math.prod(shape[:n_in]), math.prod(shape[n_in:])
    if n_in == 0:
        x = hf.read_tensor(sd, name, (cols * parts,), None, dtype)
    else:
        x = hf.read_tensor(sd, name, (rows, cols * parts), None if conv1d else 1, dtype)
    return [p.reshape(shape) for p in np.split(x, parts, axis=-1)]


def write_parts(ws: list, n_in, conv1d: bool = False) -> np.ndarray:
    """The inverse of :func:`read_parts`: our arrays as one checkpoint tensor."""
    if n_in is None:
        return np.ascontiguousarray(ws[0])
    if n_in == 0:
        return np.concatenate([w.reshape(-1) for w in ws])
    x = np.concatenate([w.reshape(math.prod(w.shape[:n_in]), -1) for w in ws], axis=-1)
    return np.ascontiguousarray(x if conv1d else x.T)


def load_params(sd, entries: list, dtype, *, conv1d=False, optional=(), fresh=(), seed: int = 0) -> dict:
    """Our parameter tree from checkpoint ``sd``. Names in ``fresh``, and names in ``optional`` that the
    checkpoint lacks (a task head on a base checkpoint), start as transformers starts them:
    normal(0.02) weights, zero biases (a warning lists them)."""
    params: dict = {}
    stacked: dict = {}
    new, rng = [], np.random.default_rng(seed)
    for paths, name, n_in, shape in entries:
        if name in fresh or (name in optional and name not in sd):
            new.append(name)
            ws = [(rng.normal(0.0, 0.02, shape) if n_in else np.zeros(shape)).astype(dtype) for _ in paths]
        else:
            ws = read_parts(sd, name, shape, n_in, dtype, len(paths), conv1d)
        for path, w in zip(paths, ws):
            if isinstance(path[-1], int):
                stacked.setdefault(path[:-1], []).append(w)
            else:
                hf.set_path(params, path, w)
    for path, ws in stacked.items():
        hf.set_path(params, path, np.stack(ws))
    if new:
        warnings.warn(f"{new}: not in the checkpoint (or another shape): newly initialised", stacklevel=3)
    return params


def checkpoint_tensors(model: nnx.Module, entries: list, *, conv1d: bool = False, pad_to: dict | None = None):
    """``{hf_name: array}`` of ``model``'s parameters; ``pad_to`` (a shape tree) zero-pads each one
    first (kept heads padded back to the count a transformers config implies)."""
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    if pad_to is not None:
        params = jax.tree.map(lambda x, s: np.pad(x, [(0, t - c) for c, t in zip(x.shape, s)]), params, pad_to)

    def get(path):
        w = params
        for k in path[:-1] if isinstance(path[-1], int) else path:
            w = w[k]
        return w[path[-1]] if isinstance(path[-1], int) else w

    return {name: write_parts([get(p) for p in paths], n_in, conv1d) for paths, name, n_in, _ in entries}


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


def hf_linears(table: dict) -> dict[tuple, str]:
    """``{HF suffix: (our per-layer paths, n_in)}`` -> ``{our Linear paths: HF module suffix}`` (kernels only)."""
    out = {}
    for suffix, (paths, _) in table.items():
        if suffix.endswith(".weight") and paths[0][-1] == "kernel":
            out[tuple(p[:-1] for p in paths)] = suffix.removesuffix(".weight")
    return out

