"""Eager model calls through one cached ``jax.jit`` program.

Called outside any trace, a Flax NNX model runs op by op, orders of magnitude slower than
its compiled program. :func:`jit_call` runs ``module.method(*args)`` through a
``jax.jit`` keyed by the module's graph (static) and the arguments' shapes and dtypes, so the
first call compiles and every later call with the same
shapes reuses the program; Python ints among ``args`` become traced int32 values, so, e.g.,
every exit depth shares one program. Inside ``jax.jit`` / ``nnx.jit`` / ``nnx.grad`` (any traced
argument or parameter) the method runs directly. State the method updates (RNG counts of a
dropout stream, BatchNorm statistics) is written back to the module.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx


def _traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run(graphdef, method: str, state, args):
    module = nnx.merge(graphdef, state)
    out = getattr(module, method)(*args)
    return out, nnx.state(module, nnx.Not(nnx.Param))


def jit_call(module: nnx.Module, method: str, *args):
    """``getattr(module, method)(*args)``, compiled once per graph and argument shapes when eager."""
    graphdef, state = nnx.split(module)
    if _traced((state, args)):
        return getattr(module, method)(*args)
    out, updated = _run(graphdef, method, state, args)
    if jax.tree.leaves(updated):
        nnx.update(module, updated)
    return out
