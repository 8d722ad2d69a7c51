"""The checks every model config shares: positive integer sizes, the dtype, required ``config.json`` keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_positive_ints(cfg, fields: Iterable[str]) -> None:
    """Each named field of ``cfg`` is an int >= 1 (``ValueError`` naming the class and field otherwise)."""
    for f in fields:
        v = getattr(cfg, f)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{type(cfg).__name__}.{f} must be a positive int, got {v!r}")


def check_dtype(cfg) -> None:
    if cfg.dtype not in DTYPES:
        raise ValueError(f"{type(cfg).__name__}.dtype must be one of {tuple(DTYPES)}, got {cfg.dtype!r}")


def require_keys(hf_cfg: Mapping, keys: tuple[str, ...], what: str) -> None:
    """``config.json`` has every key in ``keys`` (no silent defaults for the sizes of a model)."""
    missing = [k for k in keys if k not in hf_cfg]
    if missing:
        raise ValueError(f"config.json lacks required key {missing[0]!r} ({what} needs {keys})")
