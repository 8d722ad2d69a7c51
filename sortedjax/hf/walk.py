"""The one walk between a Hugging Face checkpoint's tensors and our parameter tree, for every model.

A model lists its tensors as ``(paths, hf_name, n_in, shape)`` entries (:func:`load_params`):
``paths`` are our parameter paths (one, or several for a fused tensor such as GPT-2's ``c_attn``,
concatenated on the output axis; a path ending in an int is that layer of a stacked parameter),
``shape`` our shape of one part, ``n_in`` the number of input axes of a kernel (``0``: a vector
stored flat, ``None``: stored as is). Kernels are torch ``Linear`` weights (``out x in``) or, with
``conv1d``, transformers' ``Conv1D`` weights (``in x out``, not transposed). A model's per-layer
table maps an HF suffix to ``(our per-layer paths, n_in)`` (:func:`layer_entries`).
"""

from __future__ import annotations

import math
import warnings

import jax
import numpy as np
from flax import nnx

from sortedjax.hf.files import read_tensor, set_path


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
        return [read_tensor(sd, name, shape, None, dtype)]
    rows, cols = math.prod(shape[:n_in]), math.prod(shape[n_in:])
    if n_in == 0:
        x = read_tensor(sd, name, (cols * parts,), None, dtype)
    else:
        x = read_tensor(sd, name, (rows, cols * parts), None if conv1d else 1, dtype)
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
                set_path(params, path, w)
    for path, ws in stacked.items():
        set_path(params, path, np.stack(ws))
    if new:
        warnings.warn(f"{new}: not in the checkpoint (or another shape): newly initialised", stacklevel=3)
    return params


def checkpoint_tensors(params, entries: list, *, conv1d: bool = False, pad_to: dict | None = None):
    """``{hf_name: array}`` of ``params`` (a model, or its ``nnx.Param`` state as a pure dict, e.g.
    gathered from several processes); ``pad_to`` (a shape tree) zero-pads each one first (kept heads
    padded back to the count a transformers config implies)."""
    if isinstance(params, nnx.Module):
        params = nnx.to_pure_dict(nnx.state(params, nnx.Param))
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    if pad_to is not None:
        params = jax.tree.map(lambda x, s: np.pad(x, [(0, t - c) for c, t in zip(x.shape, s)]), params, pad_to)

    def get(path):
        w = params
        for k in path[:-1] if isinstance(path[-1], int) else path:
            w = w[k]
        return w[path[-1]] if isinstance(path[-1], int) else w

    return {name: write_parts([get(p) for p in paths], n_in, conv1d) for paths, name, n_in, _ in entries}


def hf_linears(table: dict) -> dict[tuple, str]:
    """``{HF suffix: (our per-layer paths, n_in)}`` -> ``{our Linear paths: HF module suffix}`` (kernels only)."""
    out = {}
    for suffix, (paths, _) in table.items():
        if suffix.endswith(".weight") and paths[0][-1] == "kernel":
            out[tuple(p[:-1] for p in paths)] = suffix.removesuffix(".weight")
    return out
