"""SymbolicGPT checkpoints: ``path/config.json`` (model config, architecture, extras) + ``path/params``
(orbax), for :class:`~symreg.model.SymbolicGPT` and :class:`~symreg.conditional.CSymbolicGPT`."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from symreg.conditional import CSymbolicGPT
from symreg.model import ModelConfig, SymbolicGPT

ARCHITECTURES = ("SymbolicGPT", "CSymbolicGPT")  # CSymbolicGPT: symreg.conditional


def save_pretrained(model: SymbolicGPT, path: str, extra: dict | None = None) -> None:
    """Write ``path/config.json`` (model config, architecture + ``extra``) and ``path/params`` (orbax)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    arch = type(model).__name__
    if arch not in ARCHITECTURES:
        raise ValueError(f"save_pretrained takes one of {ARCHITECTURES}, got {arch}")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": dataclasses.asdict(model.cfg), "architecture": arch, **(extra or {})}, f, indent=1)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, "params"), jax.device_get(params), force=True)


def load_pretrained(path: str) -> tuple[SymbolicGPT, dict]:
    """The model saved by :func:`save_pretrained` (SymbolicGPT or CSymbolicGPT) and the saved config dict."""
    path = os.path.abspath(path)
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"{path} holds no pretrained SymbolicGPT (missing config.json)")
    with open(cfg_file) as f:
        config = json.load(f)
    arch = config.get("architecture", "SymbolicGPT")
    if arch == "CSymbolicGPT":
        cls = CSymbolicGPT
    elif arch == "SymbolicGPT":
        cls = SymbolicGPT
    else:
        raise ValueError(f"{cfg_file}: unknown architecture {arch!r}; allowed: {ARCHITECTURES}")
    model = cls(ModelConfig(**config["model"]), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    target = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, "params"), target)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model, config
