"""The pure train step and the one place it is jitted.

A model is split (:func:`split_model`) into the trainable ``params``, the ``state`` a forward
pass updates and the step carries (every non-trainable Variable that is neither an
``nnx.Param`` nor RNG state: BatchNorm running statistics, :data:`CARRIED`) and the ``rest`` it
only reads (frozen params, RNG state).

* :func:`make_step`: ``(params, opt_state, state, rest, batch, key) -> (params, opt_state, state,
  metrics)``; ``state`` comes back as the loss left it. The step's randomness is its ``key``
  argument; RNG state stays in ``rest``, so every step starts from the model's RNG state as it
  always did. Frozen params are not returned (no copy of a frozen base model per step). With
  ``grad_accum > 1`` the micro-batches run in order and each sees the state the previous one left.
* :func:`make_train_step`: the older ``(params, opt_state, rest, batch, key) -> (params,
  opt_state, metrics)`` for loops of their own that carry no such state (``rest`` is everything
  but the params; what the loss writes into it is dropped).
* :func:`jit_train_step`: the shardings (:func:`sortedjax.sharding.train_shardings`) and the
  ``jax.jit(..., in_shardings, out_shardings, donate_argnums)`` of :func:`make_step`: the program
  :func:`sortedjax.train.train` runs and :func:`sortedjax.planning.plan.lower_step` compiles for
  its memory plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from sortedjax import sharding as shd

LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]

# What a train step carries from step to step besides the trainable params (see the module doc).
CARRIED = nnx.All(nnx.Not(nnx.Param), nnx.Not(nnx.RngState))


def split_model(model: nnx.Module, trainable: Any = nnx.Param):
    """``(graphdef, params, state, rest)``: trainable params, the carried state (:data:`CARRIED`)
    and a 1-tuple holding everything else. ``model`` may be abstract (``nnx.eval_shape``)."""
    graphdef, params, others = nnx.split(model, trainable, ...)
    state, rest = nnx.split_state(others, CARRIED, ...)
    return graphdef, params, state, (rest,)


def join_state(state, rest: tuple) -> tuple:
    """``(state, rest)`` as the one non-trainable State ``nnx.split(model, trainable, ...)`` gives
    (how checkpoints and the run record hold it), in a 1-tuple."""
    return (nnx.merge_state(state, *rest),)


def unjoin_state(others: tuple):
    """:func:`join_state` undone: ``(state, rest)``."""
    state, rest = nnx.split_state(nnx.merge_state(*others), CARRIED, ...)
    return state, (rest,)


def _split_micro(batch: dict, n: int) -> dict:
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum={n}")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return jax.tree.map(split, batch)


def _updated(state, model: nnx.Module):
    """``state``'s paths with the values ``model`` holds now (a sown intermediate adds no path)."""
    now = dict(nnx.to_flat_state(nnx.state(model)))
    return nnx.from_flat_state([(path, now.get(path, v)) for path, v in nnx.to_flat_state(state)])


def make_step(graphdef, loss_fn: LossFn, tx: optax.GradientTransformation, grad_accum: int = 1, post_update=None):
    """The pure step ``(params, opt_state, state, rest, batch, key) -> (params, opt_state, state, metrics)``."""

    def loss_of(params, state, rest, batch, key):
        model = nnx.merge(graphdef, params, state, *rest, copy=True)  # fresh Variables: the loss may update state
        loss, metrics = loss_fn(model, batch, key)
        return loss, ({"loss": loss, **metrics}, _updated(state, model))

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step(params, opt_state, state, rest, batch, key):
        if grad_accum == 1:
            (_, (metrics, state)), grads = grad_fn(params, state, rest, batch, key)
        else:
            micro = _split_micro(batch, grad_accum)
            keys = jax.random.split(key, grad_accum)

            def acc(carry, inp):
                g_sum, m_sum, s = carry
                (_, (m, s)), g = grad_fn(params, s, rest, inp[0], inp[1])
                return (jax.tree.map(jnp.add, g_sum, g), jax.tree.map(jnp.add, m_sum, m), s), None

            first = jax.tree.map(lambda x: x[0], micro)
            (_, (m0, _)), g0 = jax.eval_shape(grad_fn, params, state, rest, first, keys[0])
            zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)  # noqa: E731
            (grads, metrics, state), _ = jax.lax.scan(acc, (zeros(g0), zeros(m0), state), (micro, keys))
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
            metrics = jax.tree.map(lambda m: m / grad_accum, metrics)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if post_update is not None:
            new_params = post_update(params, new_params, key)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return new_params, opt_state, state, metrics

    return step


def make_train_step(graphdef, loss_fn: LossFn, tx: optax.GradientTransformation, grad_accum: int = 1, post_update=None):
    """The pure step ``(params, opt_state, rest, batch, key) -> (params, opt_state, metrics)``.

    :func:`make_step` for loops that carry no state: ``rest`` is every non-trainable State and
    what the loss writes into it (BatchNorm statistics) is dropped. :func:`sortedjax.train.train`
    carries it (:func:`jit_train_step`)."""
    full = make_step(graphdef, loss_fn, tx, grad_accum, post_update)

    def step(params, opt_state, rest, batch, key):
        params, opt_state, _, metrics = full(params, opt_state, nnx.State({}), tuple(rest), batch, key)
        return params, opt_state, metrics

    return step


class StepShardings(NamedTuple):
    """Where a train step's arguments live on a mesh (:func:`sortedjax.sharding.train_shardings`)."""

    params: Any
    opt_state: Any
    state: Any
    rest: Any
    replicated: Any


class JitStep(NamedTuple):
    """:func:`jit_train_step`'s result: the jitted step and its shardings (None without a mesh)."""

    fn: Callable
    shardings: StepShardings | None


def jit_train_step(
    graphdef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    params,
    state,
    rest: tuple,
    *,
    mesh: Mesh | None = None,
    grad_accum: int = 1,
    post_update: Callable | None = None,
    donate: bool = True,
    batch_shardings: Any = None,
) -> JitStep:
    """:func:`make_step` under ``jax.jit`` (arguments as :func:`split_model` gives them).

    ``fn(params, opt_state, state, rest, batch, key) -> (params, opt_state, state, metrics)``.
    With a ``mesh``, params / optimizer state / state / rest get the shardings training gives
    them (they may be abstract, e.g. from ``nnx.eval_shape``), the key and metrics are
    replicated, and the batch gets ``batch_shardings`` (None: as the batch arrives). With
    ``donate`` the params, optimizer state and state buffers are donated (pass copies of
    anything kept elsewhere); ``rest`` never is.
    """
    step = make_step(graphdef, loss_fn, tx, grad_accum, post_update)
    kw: dict = {"donate_argnums": (0, 1, 2)} if donate else {}
    shardings = None
    if mesh is not None:
        p, o, (s, r), rep = shd.train_shardings(tx, params, (state, tuple(rest)), mesh)
        shardings = StepShardings(p, o, s, r, rep)
        kw.update(in_shardings=(p, o, s, r, batch_shardings, rep), out_shardings=(p, o, s, rep))
    return JitStep(jax.jit(step, **kw), shardings)


def init_opt_state(tx: optax.GradientTransformation, params, shardings: StepShardings | None):
    """``tx.init(params)``, laid out as the step expects it."""
    if shardings is None:
        return jax.jit(tx.init)(params)
    return jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
