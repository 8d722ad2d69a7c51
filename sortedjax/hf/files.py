"""Hugging Face checkpoint files, for any model: config, safetensors, layouts, placement.

Reads ``config.json`` and safetensors (one file or a sharded ``model.safetensors.index.json``)
from a local directory, or from a hub id through ``huggingface_hub.snapshot_download``.
Tensors are read lazily one at a time, converted (torch Linear ``out x in`` -> our
``in_shape + out_shape``), cast, and placed straight into the shardings that
:func:`sharding.state_shardings` derives for a given mesh. Each model module
(``sortedjax.models.llama``, ...) holds its own name map and calls these helpers; this
module imports no model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sortedjax import sharding

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint directory, downloading a hub id when it is not a local path."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    if p.exists() or str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") > 1:
        raise FileNotFoundError(f"checkpoint directory {str(path_or_id)!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as e:
        raise FileNotFoundError(
            f"{str(path_or_id)!r} is not a local directory and could not be downloaded from the "
            f"Hugging Face hub ({type(e).__name__}: {e})"
        ) from e


def load_config(path) -> dict:
    f = resolve(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"missing {f}: a Hugging Face checkpoint needs config.json")
    with open(f) as fh:
        return json.load(fh)


class StateDict(Mapping):
    """Lazy ``{name: np.ndarray}`` over one or several safetensors files."""

    def __init__(self, files: dict[str, Path]):
        self.files = files  # tensor name -> file

    def __getitem__(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        if name not in self.files:
            where = sorted({str(f) for f in self.files.values()})
            raise KeyError(f"tensor {name!r} not found in {where}")
        with safe_open(self.files[name], framework="numpy") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def load_state_dict(path) -> StateDict:
    """Tensors of ``model.safetensors`` or of every shard listed in the index file."""
    from safetensors import safe_open

    d = resolve(path)
    if (d / INDEX).is_file():
        with open(d / INDEX) as fh:
            weight_map = json.load(fh).get("weight_map")
        if not weight_map:
            raise ValueError(f"{d / INDEX} has no 'weight_map'")
        for shard in set(weight_map.values()):
            if not (d / shard).is_file():
                raise FileNotFoundError(f"shard {d / shard} listed in {d / INDEX} is missing")
        return StateDict({k: d / v for k, v in weight_map.items()})
    if (d / SINGLE).is_file():
        with safe_open(d / SINGLE, framework="numpy") as f:
            return StateDict({k: d / SINGLE for k in f.keys()})
    raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {d}")


def read_tensor(sd: Mapping, name: str, shape: tuple, n_in: int | None, dtype) -> np.ndarray:
    """Tensor ``name`` in our layout ``shape``: a torch Linear weight (``out x in``) when ``n_in``
    gives our number of input axes (``shape[:n_in]``), else taken as is; cast to ``dtype``."""
    shape = tuple(int(d) for d in shape)
    t_shape = shape if n_in is None else (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))
    try:
        x = sd[name]
    except KeyError as e:
        raise KeyError(f"checkpoint lacks tensor {name!r} (expected shape {t_shape}): {e}") from None
    if tuple(x.shape) != t_shape:
        raise ValueError(f"tensor {name!r} has shape {tuple(x.shape)}, but config.json implies {t_shape}")
    x = np.asarray(x)
    if not np.isfinite(x.astype(np.float32)).all():
        raise ValueError(f"tensor {name!r} holds non-finite values (NaN or inf); the checkpoint is corrupt")
    x = x.astype(dtype)
    return x if n_in is None else x.T.reshape(shape)


def to_torch_layout(w: np.ndarray, n_in: int | None) -> np.ndarray:
    """Our ``in_shape + out_shape`` kernel as a torch Linear weight ``out x in`` (others as is)."""
    if n_in is None:
        return np.ascontiguousarray(w)
    return np.ascontiguousarray(w.reshape(int(np.prod(w.shape[:n_in])), -1).T)


def set_path(tree: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def as_mesh(mesh):
    """A ``Mesh`` from a ``Mesh``, a ``--mesh`` spec (``"8"``, ``"data:2,fsdp:4"``) or None."""
    if mesh is None or isinstance(mesh, jax.sharding.Mesh):
        return mesh
    return sharding.make_mesh(mesh)


def place(make_model, params: Mapping, mesh=None):
    """``make_model()`` built abstractly, filled with ``params`` (a pure dict of its ``nnx.Param``
    state), each array placed in the sharding its logical names give on ``mesh``
    (a ``Mesh``, a ``--mesh`` spec such as ``"8"``, or None)."""
    mesh = as_mesh(mesh)
    abstract = nnx.eval_shape(make_model)
    graphdef, state, *rest = nnx.split(abstract, nnx.Param, ...)
    if mesh is None:
        put = jax.tree.map(jax.numpy.asarray, dict(params))
    else:
        shard = nnx.to_pure_dict(sharding.state_shardings(state, mesh))
        put = jax.tree.map(lambda x, s: jax.device_put(x, s), dict(params), shard)
    nnx.replace_by_pure_dict(state, put)
    return nnx.merge(graphdef, state, *rest)


def write_checkpoint(out_dir, config: dict, tensors: Mapping[str, np.ndarray]) -> None:
    """``config.json`` + ``model.safetensors`` that transformers loads as is."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.json", "w") as fh:
        json.dump(config, fh, indent=2)
    save_file(dict(tensors), str(out / SINGLE), metadata={"format": "pt"})


def load_tokenizer(path):
    """``transformers.AutoTokenizer`` from the checkpoint directory, or None without files."""
    d = resolve(path)
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))
