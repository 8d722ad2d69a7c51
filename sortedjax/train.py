"""The one functional train loop every experiment uses.

``train(model, loss_fn, data, cfg)``:

* ``nnx.split`` once into (trainable params, everything else); a pure ``train_step`` under
  ``jax.jit`` with in/out shardings from the logical-axis rules and donated buffers;
* optax optimizer + schedule from :class:`TrainConfig`; gradient accumulation over
  ``grad_accum`` micro-batches (each with its own RNG key, so each may sample its own
  sub-model);
* batches are a pure function of the step (``data(step) -> dict``), and the step key is
  ``fold_in(base_key, step)``, so a resumed run sees exactly the data and randomness of an
  uninterrupted one;
* orbax checkpoints every ``checkpoint_every`` steps, at the end, and on ``KeyboardInterrupt``
  (nothing is lost); a run restarted in the same workdir resumes automatically, from the newest
  checkpoint that restores (a damaged one is reported and moved to ``workdir/checkpoints_bad/``);
* the run's configuration (TrainConfig, the caller's ``run_config``, the data's fingerprint, the
  state's shapes) is recorded in ``workdir/run_config.json``; resuming with a different one is
  refused with the differences listed, unless ``restart=True`` or ``allow_changes=(...)``;
* the caller's model is left intact (the donated buffers are a copy);
* JSON-lines metrics (``workdir/metrics.jsonl``), a tqdm bar, and a clear stop on NaN/inf.
Step ``t-1``'s metrics are fetched after step ``t`` is dispatched, so the host never stalls
the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from sortedjax import sharding as shd

log = logging.getLogger(__name__)

LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]

SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    workdir: str
    steps: int
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    end_lr_factor: float = 0.0  # final lr = learning_rate * end_lr_factor (cosine/linear)
    optimizer: str = "adam"
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    grad_clip_norm: float | None = None
    grad_accum: int = 1
    checkpoint_every: int = 100
    max_to_keep: int = 2
    log_every: int = 10
    seed: int = 0
    progress: bool = True
    donate: bool = True
    desc: str = "train"

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} unknown; allowed: {SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} unknown; allowed: {OPTIMIZERS}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if not 0 <= self.warmup_steps <= max(self.steps, 0):
            raise ValueError(f"warmup_steps must be in 0..steps={self.steps}, got {self.warmup_steps}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {self.grad_clip_norm}")


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    lr, end = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_factor
    decay = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        if cfg.warmup_steps:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, lr, cfg.warmup_steps), optax.constant_schedule(lr)],
                [cfg.warmup_steps],
            )
        return optax.constant_schedule(lr)
    if cfg.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(cfg.warmup_steps, 1)), optax.linear_schedule(lr, end, decay)],
            [cfg.warmup_steps],
        )
    # cosine / warmup_cosine
    return optax.warmup_cosine_decay_schedule(
        0.0 if cfg.warmup_steps else lr, lr, cfg.warmup_steps, cfg.warmup_steps + decay, end
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    sched = make_schedule(cfg)
    if cfg.optimizer == "adam":
        opt = optax.adam(sched, b1=cfg.b1, b2=cfg.b2)
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    else:
        opt = optax.sgd(sched, momentum=cfg.momentum or None)
    if cfg.grad_clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt


def array_fingerprint(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """``{name: "dtype[shape] crc32"}``: a cheap identity of in-memory data (GB/s), for run records."""
    out = {}
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        raw = repr(a.tolist()).encode() if a.dtype.hasobject else a.reshape(-1).view(np.uint8)
        out[k] = f"{a.dtype}[{','.join(map(str, a.shape))}] {zlib.crc32(raw):08x}"
    return out


class ArrayBatches:
    """Epoch-shuffled mini-batches of in-memory arrays, as a pure function of the step.

    ``batches(step)`` returns batch ``step`` of the infinite sequence of epochs; epoch ``e``
    uses permutation ``seed + e``. Incomplete final batches are dropped.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int = 0, shuffle: bool = True):
        sizes = {k: len(v) for k, v in arrays.items()}
        if not arrays or len(set(sizes.values())) != 1:
            raise ValueError(f"arrays must be non-empty and share their first dimension, got {sizes}")
        self.n = next(iter(sizes.values()))
        if not 1 <= batch_size <= self.n:
            raise ValueError(f"batch_size must be in 1..{self.n} (dataset size), got {batch_size}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.steps_per_epoch = self.n // batch_size
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm = (
                np.random.default_rng(self.seed + epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
            )
            self._perm_epoch = epoch
        return self._perm

    def fingerprint(self) -> dict:
        """What defines the batch sequence (recorded with a run, so a changed data set is noticed)."""
        return {
            "arrays": array_fingerprint(self.arrays),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        return {k: v[idx] for k, v in self.arrays.items()}


@dataclasses.dataclass
class TrainResult:
    model: nnx.Module
    step: int
    history: list[dict]
    resumed_from: int | None


def _split_micro(batch: dict, n: int) -> dict:
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum={n}")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(graphdef, loss_fn: LossFn, tx: optax.GradientTransformation, grad_accum: int = 1, post_update=None):
    """The pure step ``(params, opt_state, rest, batch, key) -> (params, opt_state, metrics)``."""

    def loss_of(params, rest, batch, key):
        model = nnx.merge(graphdef, params, *rest, copy=True)  # fresh Variables: the loss may update state
        loss, metrics = loss_fn(model, batch, key)
        return loss, {"loss": loss, **metrics}

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step(params, opt_state, rest, batch, key):
        if grad_accum == 1:
            (_, metrics), grads = grad_fn(params, rest, batch, key)
        else:
            micro = _split_micro(batch, grad_accum)
            keys = jax.random.split(key, grad_accum)

            def acc(carry, inp):
                g_sum, m_sum = carry
                (_, m), g = grad_fn(params, rest, inp[0], inp[1])
                return (jax.tree.map(jnp.add, g_sum, g), jax.tree.map(jnp.add, m_sum, m)), None

            (_, m0), g0 = jax.eval_shape(grad_fn, params, rest, jax.tree.map(lambda x: x[0], micro), keys[0])
            zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)  # noqa: E731
            (grads, metrics), _ = jax.lax.scan(acc, (zeros(g0), zeros(m0)), (micro, keys))
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
            metrics = jax.tree.map(lambda m: m / grad_accum, metrics)
        updates, opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if post_update is not None:
            new_params = post_update(params, new_params, key)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return new_params, opt_state, metrics

    return step


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)


def _is_main() -> bool:
    return jax.process_index() == 0


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _trim_metrics(path: str, keep_upto: int) -> list[dict]:
    """Keep metric lines with step <= keep_upto (those a resumed run will not redo)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r.get("step", 0) <= keep_upto]
    if _is_main():
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


# ---------------------------------------------------------------------------- console noise

# orbax/absl WARNING lines that report something orbax handles itself. Errors are never dropped.
_ORBAX_NOISE = ("Attempted to create temporary directory",)  # a step directory left by a killed save


class _DropOrbaxNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.WARNING and str(record.msg).startswith(_ORBAX_NOISE))


def _quiet_orbax() -> None:
    absl_log = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxNoise) for f in absl_log.filters):
        absl_log.addFilter(_DropOrbaxNoise())


def _is_failed_read_debris(u) -> bool:
    """What a failed tensorstore read leaves behind: callbacks into orbax's closed event loop."""
    if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
        return True
    return getattr(u.object, "__name__", None) == "_read_array_index_and_device_put"


def _quiet_failed_reads() -> None:
    """After a damaged checkpoint failed to restore (and was reported), drop the dozens of
    unraisable-exception tracebacks its abandoned reads print later; other unraisables still print."""
    prev = sys.unraisablehook
    if getattr(prev, "_drops_failed_reads", False):
        return

    def hook(u):
        if not _is_failed_read_debris(u):
            prev(u)

    hook._drops_failed_reads = True
    sys.unraisablehook = hook


# ------------------------------------------------------------------- the run's configuration

RUN_FILE = "run_config.json"
# TrainConfig fields that change how a run is shown or saved, not what it computes.
NOT_RUN_FIELDS = ("workdir", "checkpoint_every", "max_to_keep", "log_every", "progress", "donate", "desc")
_ABSENT = "(absent)"


def _json_default(x):
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (set, frozenset)):
        return sorted(x, key=repr)
    return repr(x)


def _jsonable(x):
    return json.loads(json.dumps(x, sort_keys=True, default=_json_default))


def _shapes(tree) -> dict[str, str]:
    out = {}
    for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")
        out[name] = f"{getattr(a, 'dtype', type(a).__name__)}[{','.join(map(str, np.shape(a)))}]"
    return out


def run_record(cfg: TrainConfig, run_config: dict | None, params, rest, data=None) -> dict:
    """What defines a run: the TrainConfig fields that change what is computed, the caller's
    ``run_config``, the data's ``fingerprint()`` if it has one (:class:`ArrayBatches` does) and the
    shapes of the trainable and other state. Stored as ``workdir/run_config.json``."""
    fingerprint = getattr(data, "fingerprint", None)
    return _jsonable(
        {
            "train": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in NOT_RUN_FIELDS},
            "run_config": dict(run_config or {}),
            "data": fingerprint() if callable(fingerprint) else None,
            "params": _shapes(params),
            "rest": _shapes(rest),
            "changes": [],
        }
    )


def _diff(old: dict, new: dict) -> tuple[dict[str, tuple], list[str]]:
    """Changed settings ``{name: (stored, now)}`` and changed state shapes (lines)."""
    changed = {}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    a, b = old.get("train", {}), new["train"]
    for k in sorted(b):  # a field this version added counts as unchanged at its default; a removed one is ignored
        was = a.get(k, _jsonable(defaults.get(k, _ABSENT)))
        if was != b[k]:
            changed[k] = (was, b[k])
    if None not in (old.get("data"), new["data"]) and old["data"] != new["data"]:  # None: data without a fingerprint
        changed["data"] = (old["data"], new["data"])
    a, b = old.get("run_config", {}), new["run_config"]
    for k in sorted(set(a) | set(b)):
        if a.get(k, _ABSENT) != b.get(k, _ABSENT):
            changed[f"run_config.{k}"] = (a.get(k, _ABSENT), b.get(k, _ABSENT))
    shapes = []
    for section, what in (("params", "trainable"), ("rest", "other state")):
        a, b = old.get(section, {}), new[section]
        shapes += [
            f"  {what} {k}: {a.get(k, _ABSENT)} (stored) -> {b.get(k, _ABSENT)} (now)"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
    return changed, shapes


def _change_lines(name: str, old, new) -> list[str]:
    """``name: old (stored) -> new (now)``, for dicts only the entries that differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k, _ABSENT) != new.get(k, _ABSENT))
        return [line for k in keys for line in _change_lines(f"{name}.{k}", old.get(k, _ABSENT), new.get(k, _ABSENT))]
    return [f"  {name}: {old!r} (stored) -> {new!r} (now)"]


def _check_run(cfg: TrainConfig, record: dict, allow_changes: Sequence[str]) -> tuple[dict, dict, bool]:
    """Compare the workdir's stored run with this one: (record to store, allowed changes, whether checked)."""
    path = os.path.join(cfg.workdir, RUN_FILE)
    try:
        with open(path) as f:
            stored = json.load(f)
        if not isinstance(stored, dict) or "train" not in stored:
            raise ValueError("not a sortedjax run record")
    except FileNotFoundError:
        log.warning(
            "%s holds checkpoints but no %s (written before runs recorded their configuration), so the "
            "configuration cannot be checked; recording the current one",
            cfg.workdir,
            RUN_FILE,
        )
        return record, {}, False
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s), so the configuration cannot be checked; recording the current one", path, e)
        return record, {}, False
    changed, shapes = _diff(stored, record)
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {"data"}
    known |= set(record["run_config"]) | set(stored.get("run_config", {}))
    unknown = [n for n in allow_changes if n.removeprefix("run_config.") not in known]
    if unknown:
        raise ValueError(
            f"allow_changes names {unknown}, which are neither TrainConfig fields nor run_config keys; "
            f"known: {sorted(known)}"
        )
    allowed = set(allow_changes)
    refused = {k: v for k, v in changed.items() if k not in allowed and k.removeprefix("run_config.") not in allowed}
    if refused or shapes:
        lines = [line for k, (o, n) in refused.items() for line in _change_lines(k, o, n)]
        if shapes:
            how = "the model's state changed shape, so the stored run cannot continue with this model."
        else:
            names = tuple(k.removeprefix("run_config.") for k in changed)
            how = (
                "to continue the stored run from its last checkpoint with the new values, pass "
                f"train(..., allow_changes={names!r})."
            )
        raise ValueError(
            f"workdir {cfg.workdir} holds a run with a different configuration (recorded in {path}):\n"
            + "\n".join(lines + shapes)
            + f"\nUse another workdir, delete {os.path.join(cfg.workdir, 'checkpoints')}, or pass "
            f"train(..., restart=True) to start over (this moves the old run to {os.path.join(cfg.workdir, 'old')}/); "
            + how
        )
    return {**record, "changes": stored.get("changes", [])}, changed, True


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _unique(path: str) -> str:
    out, i = path, 1
    while os.path.exists(out):
        out, i = f"{path}.{i}", i + 1
    return out


def _start_over(workdir: str) -> None:
    """``restart=True``: move the run in ``workdir`` (checkpoints, metrics, configuration) to ``workdir/old/<time>``."""
    names = [
        n
        for n in ("checkpoints", "checkpoints_bad", "metrics.jsonl", RUN_FILE)
        if os.path.exists(os.path.join(workdir, n))
    ]
    if not names or not _is_main():
        return
    dest = _unique(os.path.join(workdir, "old", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(dest)
    for n in names:
        os.replace(os.path.join(workdir, n), os.path.join(dest, n))
    log.warning("restart=True: moved the previous run in %s to %s (delete it once it is not needed)", workdir, dest)


# ------------------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    """No checkpoint in a workdir can be restored."""


def _summary(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:240]}"


def _restore_newest_valid(mngr, target: dict, ckpt_dir: str):
    """The newest step that restores cleanly: ``(step, restored, [(bad_step, error), ...])``."""
    bad = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
            if int(restored.meta["step"]) != step:
                raise ValueError(f"its metadata says step {restored.meta['step']}")
            return step, restored, bad
        except Exception as e:  # damaged or half-written files: orbax, tensorstore and JSON errors alike
            bad.append((step, e))
            _quiet_failed_reads()
    raise CheckpointError(
        f"no checkpoint in {ckpt_dir} can be restored:\n"
        + "\n".join(f"  step {s}: {_summary(e)}" for s, e in bad)
        + f"\nIf these files are damaged (a crash or a full disk while writing), delete {ckpt_dir} to start this "
        f"run over, or pass train(..., restart=True) to move it aside. Nothing was changed on disk."
    )


def _set_aside(ckpt_dir: str, step: int, workdir: str) -> str:
    dest = _unique(os.path.join(workdir, "checkpoints_bad", str(step)))
    if _is_main():
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(os.path.join(ckpt_dir, str(step)), dest)
    return dest


@contextlib.contextmanager
def _checkpoint_manager(ckpt_dir: str, cfg: TrainConfig):
    """orbax manager that clears directories of saves cut short by a kill, and always finishes and
    closes (also when training stops with an error)."""
    mngr = ocp.CheckpointManager(
        ckpt_dir,
        options=ocp.CheckpointManagerOptions(max_to_keep=cfg.max_to_keep, create=True, cleanup_tmp_directories=True),
    )
    try:
        yield mngr
    finally:
        try:
            mngr.wait_until_finished()
            mngr.close()
        except Exception as e:  # never hide the exception that ended training
            log.error("closing the checkpoint manager for %s failed: %s", ckpt_dir, _summary(e))


# --------------------------------------------------------------------------------- train


def train(
    model: nnx.Module,
    loss_fn: LossFn,
    data: Callable[[int], dict],
    cfg: TrainConfig,
    *,
    mesh: Mesh | None = None,
    trainable: Any = nnx.Param,
    post_update: Callable | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    run_config: dict | None = None,
    restart: bool = False,
    allow_changes: Sequence[str] = (),
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``cfg.workdir`` if it holds a checkpoint.

    Args:
      model: an nnx Module. It is not modified and stays usable: with ``cfg.donate`` the step
        donates a copy of its trainable arrays (so while the caller keeps ``model`` alive,
        training holds one extra copy of them). The trained model is ``result.model``.
      loss_fn: ``(model, batch, key) -> (loss, metrics)``; runs inside the jitted step.
      data: ``step -> batch`` (dict of arrays with a leading batch axis).
      trainable: nnx filter selecting what receives gradients (default every ``nnx.Param``).
      post_update: optional ``(old_params, new_params, key) -> new_params`` run in the step
        (e.g. DyLoRA frozen mode keeping all rank rows but the sampled one).
      on_step: optional host callback ``(step, metrics)`` after each logged step.
      run_config: JSON-able dict of what else defines this run (e.g. the experiment settings that
        shape the loss). With the TrainConfig fields that change what is computed (not ``workdir``,
        ``checkpoint_every``, ``max_to_keep``, ``log_every``, ``progress``, ``donate``, ``desc``),
        ``data.fingerprint()`` if ``data`` has one, and the state's shapes it is stored in
        ``workdir/run_config.json``; resuming with a different configuration raises a ValueError
        listing the differences.
      restart: start over even if the workdir holds a run; its checkpoints, metrics and recorded
        configuration move to ``workdir/old/<time>/``.
      allow_changes: TrainConfig fields / ``run_config`` keys (or ``"data"``) that may differ from
        the stored run when resuming, e.g. ``("steps", "learning_rate")`` to continue with a longer
        run or another schedule; the change is recorded in ``run_config.json``. Shapes cannot change.

    A damaged newest checkpoint (a crash or full disk while writing) is reported, moved to
    ``workdir/checkpoints_bad/`` and the run resumes from the newest one that restores; if none
    does, a :class:`CheckpointError` says what to delete.
    """
    _quiet_orbax()
    allow_changes = (allow_changes,) if isinstance(allow_changes, str) else tuple(allow_changes)
    os.makedirs(cfg.workdir, exist_ok=True)
    graphdef, params, *rest = nnx.split(model, trainable, ...)
    rest = tuple(rest)
    tx = make_optimizer(cfg)

    if mesh is not None:
        p_shard = shd.state_shardings(params, mesh)
        r_shard = shd.state_shardings(rest, mesh)
        rep = shd.replicated(mesh)
        o_shard = optax.tree_utils.tree_map_params(
            tx,
            lambda _, s: s,
            jax.eval_shape(tx.init, params),
            p_shard,
            transform_non_params=lambda _: rep,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )
        params = jax.device_put(params, p_shard)
        rest = jax.device_put(rest, r_shard)
        opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
    else:
        p_shard = r_shard = o_shard = rep = None
        opt_state = jax.jit(tx.init)(params)

    step_fn = make_train_step(graphdef, loss_fn, tx, cfg.grad_accum, post_update)
    jit_kw = {"donate_argnums": (0, 1)} if cfg.donate else {}
    if mesh is not None:
        jit_kw.update(in_shardings=(p_shard, o_shard, r_shard, None, rep), out_shardings=(p_shard, o_shard, rep))
    jstep = jax.jit(step_fn, **jit_kw)

    base_key = jax.random.PRNGKey(cfg.seed)
    record = run_record(cfg, run_config, params, rest, data)
    if restart:
        _start_over(cfg.workdir)
        _sync("sortedjax_train_restart")
    ckpt_dir = os.path.abspath(os.path.join(cfg.workdir, "checkpoints"))
    with _checkpoint_manager(ckpt_dir, cfg) as mngr:
        start, resumed = 0, None
        if mngr.all_steps():
            record, changed, checked = _check_run(cfg, record, allow_changes)
            target = _abstract({"params": params, "opt_state": opt_state, "rest": rest})
            start, restored, bad = _restore_newest_valid(mngr, target, ckpt_dir)
            for step, err in bad:
                dest = _set_aside(ckpt_dir, step, cfg.workdir)
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); moved it to %s and resuming from step %d",
                    step, ckpt_dir, _summary(err), dest, start,
                )  # fmt: skip
            if bad:
                _sync("sortedjax_train_set_aside")
                mngr.reload()
            params, opt_state, rest = (restored.state[k] for k in ("params", "opt_state", "rest"))
            resumed = start
            if not checked and int(restored.meta["seed"]) != cfg.seed:
                raise ValueError(
                    f"workdir {cfg.workdir} holds a run with seed {restored.meta['seed']}, not {cfg.seed}; "
                    "use another workdir"
                )
            if changed:
                record["changes"].append({"step": start, **{k: [o, n] for k, (o, n) in changed.items()}})
                log.warning(
                    "continuing the run in %s from step %d with changed %s",
                    cfg.workdir, start, ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changed.items()),
                )  # fmt: skip
            if start > cfg.steps:
                raise ValueError(f"the run in {cfg.workdir} is already at step {start}, beyond steps={cfg.steps}")
            log.info("resumed from %s at step %d", ckpt_dir, start)
        elif cfg.donate:
            # the step donates params; without a copy that would delete the caller's model's arrays
            params = jax.tree.map(jnp.copy, params)
        if _is_main():
            _write_json(os.path.join(cfg.workdir, RUN_FILE), record)

        metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
        history = _trim_metrics(metrics_path, start)

        def save(step: int):
            if step in (mngr.all_steps() or []):
                return
            mngr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave({"params": params, "opt_state": opt_state, "rest": rest}),
                    meta=ocp.args.JsonSave({"step": step, "seed": cfg.seed, "data_position": step}),
                ),
            )

        bar = tqdm(
            total=cfg.steps, initial=start, desc=cfg.desc, disable=not (cfg.progress and _is_main()), leave=False
        )
        pending: tuple[int, Any] | None = None

        def drain(pending):
            step, metrics = pending
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(
                    f"loss is {m['loss']} at step {step} (workdir {cfg.workdir}); stopping. The last good "
                    f"checkpoint is step {mngr.latest_step()}; lower learning_rate (now {cfg.learning_rate}) "
                    f"or set grad_clip_norm."
                )
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, **m}
                history.append(row)
                if _is_main():
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{m['loss']:.4g}")
                if on_step is not None:
                    on_step(step, row)

        step = start
        try:
            while step < cfg.steps:
                batch = shd.shard_batch(data(step), mesh)
                key = jax.random.fold_in(base_key, step)
                step, (params, opt_state, metrics) = step + 1, jstep(params, opt_state, rest, batch, key)
                bar.update(1)
                if pending is not None:
                    drain(pending)
                pending = (step, metrics)
                if step % cfg.checkpoint_every == 0:
                    drain(pending)  # never checkpoint a NaN state
                    pending = None
                    save(step)
            if pending is not None:
                drain(pending)
                pending = None
            save(step)
        except KeyboardInterrupt:
            # Keep the finished steps: params/opt_state are those after `step` steps.
            log.warning("interrupted at step %d; saving a checkpoint to resume from", step)
            if pending is not None:
                drain(pending)
            save(step)
            raise
        finally:
            bar.close()
    trained = nnx.merge(graphdef, params, *rest, copy=True)  # fresh Variables: nothing shared with the caller's model
    return TrainResult(model=trained, step=step, history=history, resumed_from=resumed)
