"""The one layer runner: a stack of layers, depth-gated, with exits, a KV cache and remat.

``LayerStack(make_layer, num_layers, rngs=...)`` builds ``num_layers`` copies of a layer with
their parameters stacked on a leading ``"layers"`` axis (``nnx.vmap``) and runs them with
``lax.scan``. Each step is ``lax.cond(i < depth, layer, identity)``: with a scalar ``depth``
(traced is fine) XLA executes only the taken branch, so layers past the sub-model's depth
cost (almost) nothing and one compiled program serves every depth. Layers of different
shapes (CNN stages) go in ``LayerStack.of([...])`` and are unrolled with the same gating.

A layer is called as ``layer(h, **kwargs) -> h``, or, with a cache,
``layer(h, cache=cache, layer=i, **kwargs) -> (h, cache)``. A skipped layer is the identity, or
``layer.skip(h, **kwargs)`` where the layer defines it (a parameter-free shortcut for a layer
that changes the shape, as MobileNetV2's strided blocks do). Non-parameter state that a layer
updates (BatchNorm statistics) is written back; a skipped layer keeps it. ``gate="select"``
runs every layer and keeps its output or the skip with ``jnp.where`` instead of a ``lax.cond``
(no work saved, but under ``grad`` on the CPU the conds of a deep CNN cost more than the work
they skip; :mod:`sortedjax.models.mobilenet_v2`). ``remat`` picks a ``jax.checkpoint`` policy
per layer (:data:`REMAT_POLICIES`). A call returns a :class:`StackOutput` (``hidden``, and the
``exits`` states, ``cache`` and ``hook_state`` where the call asked for them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

Hook = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]

GATES = ("cond", "select")  # how a layer past the depth (or before first_layer) is skipped


def check_remat(remat: str) -> str:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat policy {remat!r} unknown; allowed: {tuple(REMAT_POLICIES)}")
    return remat


class StackOutput(NamedTuple):
    """What :meth:`LayerStack.__call__` returns; a field that does not apply to the call is ``None``."""

    hidden: jax.Array  # the state after the run layers
    exits: jax.Array | None = None  # E x ...: the state after each exit (``exits`` given)
    cache: Any = None  # the updated cache (``cache`` given)
    hook_state: Any = None  # the final hook state (``hook`` given)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One call of a :class:`LayerStack` (its gating, exits, hook, remat and layer kwargs), shared by
    the steps of its layers: a scan step (every stacked layer) or one unrolled layer."""

    first: jax.Array  # int32: layers before it are skipped
    depth: jax.Array  # int32: layers from it on are skipped
    from_start: bool  # no first layer given
    full_depth: bool  # no depth given
    exits: jax.Array | None  # int32 E: 1-based layer counts whose states to collect
    hook: Hook | None
    gate: str
    remat: str
    kwargs: dict

    def layer_fns(self, graphdef):
        """``run`` and ``skip`` of a layer: ``(params, other, i, h, cache, hook_state) -> (h, cache,
        hook_state, other)``; ``run`` under the remat policy."""
        kwargs, hook, policy = self.kwargs, self.hook, REMAT_POLICIES[self.remat]

        def run(p, o, i, h, cache, hs):
            layer = nnx.merge(graphdef, p, o)
            if cache is None:
                out = layer(h, **kwargs)
            else:
                out, cache = layer(h, cache=cache, layer=i, **kwargs)
            if hook is not None:
                out, hs = hook(i, h, out, hs)
            return out, cache, hs, nnx.state(layer, nnx.Not(nnx.Param))

        if policy is not None:
            run = jax.checkpoint(run, policy=policy)

        def skip(p, o, i, h, cache, hs):
            layer = nnx.merge(graphdef, p, o)
            return (layer.skip(h, **kwargs) if hasattr(layer, "skip") else h), cache, hs, o

        return run, skip

    def step(self, graphdef):
        """``step((h, exit_states, cache, hook_state), params, other, i[, always]) -> (carry, other)``:
        layer ``i`` gated by ``first <= i < depth`` (``always``: known to run, no gate), then the
        state written to the slot of exit ``i + 1`` if it is one."""
        run, skip = self.layer_fns(graphdef)
        first_, depth_, gate, exits_E = self.first, self.depth, self.gate, self.exits

        def step(carry, p, o, i, always=self.from_start and self.full_depth):
            h, buf, cache, hs = carry
            on = (i >= first_) & (i < depth_)
            if always:  # known to run (no depth or first layer, or the first layer): no gate
                h, cache, hs, o = run(p, o, i, h, cache, hs)
            elif gate == "cond":
                h, cache, hs, o = lax.cond(on, run, skip, p, o, i, h, cache, hs)
            else:  # both computed; a skipped layer's output and state updates are dropped
                kept = skip(p, jax.tree.map(lambda a: a, o), i, h, cache, hs)  # values now: run updates o
                taken = run(p, o, i, h, cache, hs)
                h, cache, hs, o = jax.tree.map(lambda a, b: jnp.where(on, a, b), taken, kept)
            if exits_E is not None:  # write only the slot of a hit exit (no E x ... broadcast select per layer)
                hit = exits_E == i + 1
                buf = lax.cond(
                    hit.any(), lambda b: lax.dynamic_update_index_in_dim(b, h, jnp.argmax(hit), 0), lambda b: b, buf
                )
            return (h, buf, cache, hs), o

        return step


class LayerStack(nnx.Module):
    def __init__(
        self,
        make_layer: Callable[[nnx.Rngs], nnx.Module] | None,
        num_layers: int,
        *,
        rngs: nnx.Rngs | None = None,
        remat: str = "none",
        layers: Sequence[nnx.Module] | None = None,
    ):
        if num_layers < 1:
            raise ValueError(f"LayerStack needs num_layers >= 1, got {num_layers}")
        self.num_layers, self.remat = num_layers, check_remat(remat)
        self.stacked = layers is None
        if self.stacked:

            @nnx.split_rngs(splits=num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make(r):
                return make_layer(r)

            self.layers = make(rngs)
        else:
            self.layers = nnx.List(list(layers))

    @classmethod
    def of(cls, layers: Sequence[nnx.Module], *, remat: str = "none") -> LayerStack:
        """A stack of given (possibly differently shaped) layers, unrolled at trace time."""
        return cls(None, len(layers), layers=layers, remat=remat)

    def check_depth(self, depth) -> None:
        if depth is None or isinstance(depth, jax.core.Tracer):
            return
        if not 1 <= int(depth) <= self.num_layers:
            raise ValueError(f"depth {int(depth)} outside the allowed range 1..{self.num_layers}")

    def check_exits(self, exits) -> None:
        if isinstance(exits, jax.Array):
            return
        bad = [e for e in exits if not 1 <= int(e) <= self.num_layers]
        if bad:
            raise ValueError(f"exit {int(bad[0])} outside the allowed range 1..{self.num_layers}")

    def __call__(
        self,
        x,
        *,
        depth=None,
        first_layer=None,
        exits: Sequence[int] | jax.Array | None = None,
        cache=None,
        hook: Hook | None = None,
        hook_state=None,
        gate: str = "cond",
        **kwargs,
    ) -> StackOutput:
        """Run ``x`` through layers ``first_layer..depth-1`` (``None``: from 0 / through all).

        Args:
          first_layer: layers before it are skipped (``x`` is the state after them; may be traced):
            verification of a self-speculative draft runs only the layers the draft did not.
          exits: distinct 1-based layer counts whose hidden states to collect (static ints or an
            int32 array); exit ``e`` holds the state after layer ``e`` (after ``depth`` layers
            when ``e > depth``: skipped layers are the identity).
          cache: threaded through the layers (``layer(h, cache=..., layer=i)``); skipped layers
            leave it untouched.
          hook: ``hook(i, h_in, h_out, hook_state) -> (h, hook_state)`` after each executed
            layer (per-row early exit uses it).
          gate: ``"cond"`` (``lax.cond`` per layer: a skipped layer costs nothing) or
            ``"select"`` (every layer runs, ``jnp.where`` keeps its output or the skip).
          kwargs: passed to every layer (and to its ``skip``).

        Returns a :class:`StackOutput`: ``hidden``, plus ``exits`` (the ``E x ...`` states) if
        ``exits`` is given, ``cache`` if given and ``hook_state`` if a hook is given (else None).
        """
        if gate not in GATES:
            raise ValueError(f"LayerStack gate must be one of {GATES}, got {gate!r}")
        self.check_depth(depth)
        depth_ = jnp.asarray(self.num_layers if depth is None else depth, jnp.int32)
        first_ = jnp.asarray(0 if first_layer is None else first_layer, jnp.int32)
        exits_E = None
        if exits is not None:
            self.check_exits(exits)
            exits_E = jnp.asarray(exits, jnp.int32)
        if cache is not None and self.stacked and exits is None and not hasattr(self.layers, "skip"):
            graphdef, params, other = nnx.split(self.layers, nnx.Param, ...)
            if not jax.tree.leaves(other):  # decoding: loop over exactly the run layers
                args = (graphdef, params, first_, depth_, x, cache, hook, hook_state, kwargs)
                h, cache, hook_state = self._run_cached(*args)
                return StackOutput(h, None, cache, hook_state if hook is not None else None)
        plan = _Plan(first_, depth_, first_layer is None, depth is None, exits_E, hook, gate, self.remat, kwargs)
        buf = None if exits_E is None else jnp.zeros((exits_E.shape[0],) + x.shape, x.dtype)
        run = self._run_scanned if self.stacked else self._run_unrolled
        h, buf, cache, hook_state = run(plan, (x, buf, cache, hook_state))
        return StackOutput(h, buf, cache, hook_state if hook is not None else None)

    def _run_scanned(self, plan: _Plan, carry):
        """The stacked layers as one ``lax.scan`` over the ``"layers"`` axis, each step gated."""
        graphdef, params, other = nnx.split(self.layers, nnx.Param, ...)
        step = plan.step(graphdef)
        idx = jnp.arange(self.num_layers, dtype=jnp.int32)
        carry, new_other = lax.scan(lambda c, inp: step(c, *inp), carry, (params, other, idx))
        if jax.tree.leaves(other):
            nnx.update(self.layers, new_other)
        return carry

    def _run_unrolled(self, plan: _Plan, carry):
        """The layers of :meth:`of`, unrolled at trace time, each gated as a scan step is."""
        for i, layer in enumerate(self.layers):
            graphdef, params, other = nnx.split(layer, nnx.Param, ...)
            always = plan.from_start and (plan.full_depth or i == 0)  # depth >= 1: layer 1 runs
            carry, new_other = plan.step(graphdef)(carry, params, other, jnp.int32(i), always)
            if jax.tree.leaves(other):
                nnx.update(layer, new_other)
        return carry

    def _run_cached(self, graphdef, params, first_, depth_, x, cache, hook, hook_state, kwargs):
        """Layers ``first_..depth_-1`` as a ``fori_loop`` with traced bounds: no per-layer ``lax.cond``
        carrying the whole KV cache through both branches (which copies it on CPU), so decoding
        pays only for the layers it runs. Returns ``(h, cache, hook_state)``."""

        def body(i, c):
            h, cache, hs = c
            layer = nnx.merge(graphdef, jax.tree.map(lambda w: lax.dynamic_index_in_dim(w, i, keepdims=False), params))
            out, cache = layer(h, cache=cache, layer=i, **kwargs)
            if hook is not None:
                out, hs = hook(i, h, out, hs)
            return out, cache, hs

        return lax.fori_loop(first_, depth_, body, (x, cache, hook_state))
