"""Device meshes from a ``--mesh`` spec, one logical-axis rules table, simulated CPU devices.

Parameters carry *logical* axis names only (``("embed", "mlp")``); :data:`RULES` maps each
name to a mesh axis. Everything else (``state_shardings``, ``shard_batch``) is derived
from that one table, so changing the parallelism layout is a one-line edit here.
Activations and the KV cache carry logical names too (``act_*``, ``cache_*``): :func:`constrain`
applies them under the mesh that ``jax.set_mesh`` / :func:`use_mesh` sets (training and memory
plans set it; without one they are no-ops). :func:`host_batch` assembles a global batch from each
process's own rows when several processes share the mesh (:mod:`sortedjax.distributed`).

Mesh spec grammar (the ``--mesh`` flag of every experiment):

* ``"8"``                      -> 8-way FSDP: ``{"data": 1, "fsdp": 8, "tensor": 1}``
* ``"data:2,fsdp:4,tensor:1"`` -> explicit sizes; omitted axes are 1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
MAX_SIMULATED_DEVICES = 64  # simulated CPU devices beyond this are refused (SORTEDJAX_MAX_SIMULATED_DEVICES)
ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin")

# The one logical-axis rules table. A logical name maps to a mesh axis, a tuple of mesh
# axes, or None (replicated). Names not listed here are replicated.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # activations: batch is split over every data-parallel axis
    "embed": "fsdp",  # model dim of weights: FSDP shards it
    "vocab": "tensor",
    "mlp": "tensor",  # hidden width of MLPs (SortedNet width dimension)
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "layers": None,  # stacked-layer axis of scanned blocks
    "rank": None,  # LoRA rank
    "channels": "tensor",
    "in": None,
    "classes": None,
    "length": None,
    # activations and the KV cache: batch over the data-parallel axes, heads / MLP width over tensor
    "act_batch": ("data", "fsdp"),
    "act_length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "cache_layers": None,
    "cache_batch": ("data", "fsdp"),
    "cache_length": None,
    "cache_kv_heads": "tensor",
}
ACT_BxLxD = ("act_batch", "act_length", "act_embed")  # the residual stream
CACHE_NxBxSxGxK = ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads", "head_dim")  # KV cache


def param(value: jax.Array, names: Sequence[str | None]) -> nnx.Param:
    """An ``nnx.Param`` annotated with logical axis names (no eager placement)."""
    if len(names) != np.ndim(value):
        raise ValueError(f"logical names {tuple(names)} do not match parameter shape {np.shape(value)}")
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def parse_mesh_spec(spec: str | int | Mapping[str, int]) -> dict[str, int]:
    """Parse ``"8"`` or ``"data:2,fsdp:4,tensor:1"`` into ``{axis: size}`` over MESH_AXES."""
    if isinstance(spec, Mapping):
        items = dict(spec)
    else:
        text = str(spec).strip()
        if not text:
            raise ValueError("empty --mesh spec; use e.g. '8' or 'data:2,fsdp:4,tensor:1'")
        if ":" not in text:
            try:
                return {"data": 1, "fsdp": _positive(int(text), "fsdp"), "tensor": 1}
            except ValueError as e:
                raise ValueError(
                    f"bad --mesh spec {text!r}: expected an integer (FSDP size) or "
                    f"'axis:size,...' with axes {MESH_AXES}"
                ) from e
        items = {}
        for part in text.split(","):
            name, _, size = part.partition(":")
            name = name.strip()
            try:
                items[name] = int(size)
            except ValueError as e:
                raise ValueError(f"bad size {size!r} for mesh axis {name!r} in {text!r}") from e
    unknown = [k for k in items if k not in MESH_AXES]
    if unknown:
        raise ValueError(f"unknown mesh axis {unknown[0]!r}; allowed axes are {MESH_AXES}")
    return {a: _positive(items.get(a, 1), a) for a in MESH_AXES}


def _positive(n: int, name: str) -> int:
    if n < 1:
        raise ValueError(f"mesh axis {name!r} must have size >= 1, got {n}")
    return n


def backends_started() -> bool:
    """Whether a JAX backend has started (after that the device count and collectives are fixed)."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def ensure_devices(n: int) -> None:
    """Make at least ``n`` devices available, simulating CPU devices if needed.

    Must run before JAX starts its backends (i.e. before the first array is created).
    Raises ``ValueError`` when there are fewer than ``n`` devices and it is too late.
    """
    if n < 1:
        raise ValueError(f"device count must be >= 1, got {n}")
    if backends_started() or jax.distributed.is_initialized():  # several processes: their devices are fixed
        have = jax.device_count()
        if have < n:
            raise ValueError(
                f"mesh needs {n} devices but only {have} exist and JAX backends are already "
                f"initialized, so simulated CPU devices can no longer be created; call "
                f"sortedjax.sharding.ensure_devices({n}) before any JAX computation, or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (allowed: 1..{have})"
            )
        return
    platforms = os.environ.get("JAX_PLATFORMS", "")
    # Only the CPU backend can be multiplied; accelerators report what they have.
    if platforms in ("", "cpu") or "cpu" in platforms.split(","):
        current = jax.config.jax_num_cpu_devices
        if current is None or current < n:
            cap = int(os.environ.get("SORTEDJAX_MAX_SIMULATED_DEVICES", MAX_SIMULATED_DEVICES))
            if n > cap and (platforms == "cpu" or not _accelerator_installed()):
                raise ValueError(
                    f"mesh needs {n} devices: this host has no accelerator, and simulating more than {cap} "
                    f"CPU devices is refused (a typo such as fsdp:64 for fsdp:4?); set "
                    f"SORTEDJAX_MAX_SIMULATED_DEVICES={n} to simulate them anyway"
                )
            jax.config.update("jax_num_cpu_devices", n)


def _accelerator_installed() -> bool:
    """Whether a TPU / GPU plugin for JAX is installed (checked without starting a backend)."""

    return any(importlib.util.find_spec(m) is not None for m in ACCELERATOR_MODULES)


def make_mesh(spec: str | int | Mapping[str, int] = "1") -> Mesh:
    """A mesh with axes ``("data", "fsdp", "tensor")`` sized as ``spec`` says."""
    sizes = parse_mesh_spec(spec)
    n = math.prod(sizes.values())
    ensure_devices(n)
    devices = jax.devices()
    if len(devices) < n:
        raise ValueError(f"mesh {sizes} needs {n} devices, only {len(devices)} available")
    grid = np.asarray(devices[:n]).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def logical_to_spec(
    names: Sequence[str | None] | None, shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec through :data:`RULES`.

    With ``shape`` and ``mesh`` given, a dimension that the mesh axes do not divide is
    replicated instead (tiny test models on 8 devices), and a mesh axis is used once only.
    """
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        axes = RULES.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        if mesh is not None:
            axes_t = tuple(a for a in axes_t if a in mesh.shape and mesh.shape[a] > 1)
        axes_t = tuple(a for a in axes_t if a not in used)
        if shape is not None and mesh is not None and axes_t:
            size = math.prod(mesh.shape[a] for a in axes_t)
            if shape[i] % size:
                warnings.warn(
                    f"dimension {i} ({name!r}, size {shape[i]}) of an array of shape {tuple(shape)} is not "
                    f"divisible by mesh axes {axes_t} (size {size}): replicated instead of sharded",
                    stacklevel=2,
                )
                axes_t = ()
        used.update(axes_t)
        out.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*out)


def _names_of(x) -> tuple | None:
    if isinstance(x, nnx.Variable):
        return x.get_metadata().get("out_sharding")
    return None


def state_shardings(state, mesh: Mesh):
    """NamedShardings for an nnx State (or any pytree of Variables / arrays).

    Variables annotated with logical names are sharded by :data:`RULES`; everything else
    (optimizer counters, RNG keys, un-annotated arrays) is replicated.
    """

    def one(x):
        if isinstance(x, nnx.Variable):
            value = x.get_value()
            spec = logical_to_spec(_names_of(x), np.shape(value), mesh)
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_batch(batch, mesh: Mesh | None):
    """Place a host batch (pytree of arrays) on the mesh, batch axis split when divisible."""
    if mesh is None:
        return jax.tree.map(jax.numpy.asarray, batch)

    def put(x):
        x = np.asarray(x)
        spec = logical_to_spec(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh) if x.ndim else PartitionSpec()
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(put, batch)


def process_rows(global_batch: int, mesh: Mesh) -> slice:
    """The rows of a ``global_batch``-row batch whose shards live on this process's devices."""
    idx = batch_sharding(mesh, (global_batch,)).addressable_devices_indices_map((global_batch,))
    spans = sorted({sl[0].indices(global_batch)[:2] for sl in idx.values()})
    lo, hi = spans[0][0], spans[0][1]
    for a, b in spans[1:]:
        if a > hi:
            raise ValueError(
                f"this process's devices hold rows {spans} of the batch, not one contiguous range; order the "
                f"mesh's devices by process (make_mesh does)"
            )
        hi = max(hi, b)
    return slice(lo, hi)


def host_batch(data, step: int, mesh: Mesh | None):
    """Batch ``step`` of ``data`` (``step -> dict``) placed on the mesh as global arrays.

    One process: :func:`shard_batch`. Several: each process builds only its own rows
    (``data(step, rows=slice)`` when ``data`` has a ``batch_size`` and takes ``rows``, e.g.
    :class:`sortedjax.train.batches.ArrayBatches`; otherwise it slices its rows out of ``data(step)``)
    and ``jax.make_array_from_process_local_data`` assembles the global batch.
    """
    if mesh is None or jax.process_count() == 1:
        return shard_batch(data(step), mesh)
    n = getattr(data, "batch_size", None)
    if n is not None and getattr(data, "takes_rows", False):
        rows = process_rows(n, mesh)
        local = data(step, rows=rows)
    else:
        full = data(step)
        n = len(jax.tree.leaves(full)[0])
        rows = process_rows(n, mesh)
        local = jax.tree.map(lambda x: np.asarray(x)[rows], full)

    def put(x):
        x = np.asarray(x)
        shape = (n,) + x.shape[1:]
        return jax.make_array_from_process_local_data(batch_sharding(mesh, shape), x, shape)

    return jax.tree.map(put, local)


def use_mesh(mesh: Mesh | None):
    """``jax.set_mesh(mesh)`` (what :func:`constrain` reads), or nothing without a mesh."""

    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def train_shardings(tx, params, rest, mesh: Mesh):
    """Shardings of a train step's (params, optimizer state, rest) and the replicated one.

    Optimizer moments follow their parameter's sharding; counters are replicated. ``params``
    may be abstract (``nnx.eval_shape``), so a memory plan uses the shardings training uses.
    """
    import optax

    p_shard = state_shardings(params, mesh)
    r_shard = state_shardings(rest, mesh)
    rep = replicated(mesh)
    o_shard = optax.tree_utils.tree_map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, params),
        p_shard,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return p_shard, o_shard, r_shard, rep


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """The sharding :func:`shard_batch` gives an array of ``shape`` (leading batch axis split)."""
    if not len(shape):
        return replicated(mesh)
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation to the sharding its logical ``names`` give under :data:`RULES`.

    Uses the mesh set by ``jax.set_mesh`` (training and planning set it); without one, or inside
    ``shard_map``, ``x`` is returned unchanged, so models run the same on one device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or len(names) != x.ndim or any(a not in mesh.shape for a in MESH_AXES):
        return x
    if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
        return x
    spec = _quiet_spec(names, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)


def _quiet_spec(names, shape, mesh) -> PartitionSpec:
    with warnings.catch_warnings():  # activations of tiny test models: replicate undivisible dims silently
        warnings.simplefilter("ignore")
        return logical_to_spec(names, shape, mesh)
