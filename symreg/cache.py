"""JAX's persistent compilation cache for symreg, on by default.

Compiling the batched fit (and the decoder) takes seconds per shape on a CPU; with the cache a
fresh process loads the executables a previous process compiled instead. symreg turns it on
the first time it compiles (``fit_problems``, the regressor), in this order of precedence:

* ``SYMREG_COMPILATION_CACHE=off`` (or ``0`` / ``false`` / ``none``): leave JAX alone;
* a cache directory the user configured for JAX (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``): used as is;
* ``SYMREG_COMPILATION_CACHE=/some/dir``, or ``enable_compilation_cache("/some/dir")``;
* otherwise ``$XDG_CACHE_HOME/sortedjax/jax`` (``~/.cache/sortedjax/jax``).

When symreg picks the directory it also caches compiles above ``MIN_COMPILE_SECONDS``
(JAX's default is 1 s). The directory can be deleted at any time.
"""

from __future__ import annotations

import os

import jax

ENV = "SYMREG_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 0.2
_OFF = ("off", "0", "false", "none", "no")
_state: dict = {"dir": None, "done": False}


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sortedjax", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turns the persistent cache on (see the module docstring); returns the directory in use,
    or None when it is off. Only the first call without ``path`` decides; an explicit
    ``path`` always applies."""
    if _state["done"] and path is None:
        return _state["dir"]
    _state["done"] = True
    env = os.environ.get(ENV, "").strip()
    if path is None and env.lower() in _OFF:
        _state["dir"] = None
        return None
    configured = jax.config.jax_compilation_cache_dir
    if path is None and configured:
        _state["dir"] = configured
        return configured
    path = path or env or default_dir()
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    _state["dir"] = path
    return path
