"""The one functional train loop every experiment uses.

``train(model, loss_fn, data, cfg)``:

* the model is split once (:func:`sortedjax.train.step.split_model`) into the trainable params,
  the state a forward pass updates (BatchNorm running statistics) and the rest (frozen params,
  RNG state); the pure step returns new params, optimizer state and state, under ``jax.jit``
  with in/out shardings from the logical-axis rules and donated buffers
  (:func:`sortedjax.train.step.jit_train_step`, the program :mod:`sortedjax.planning.plan`
  compiles); the state is carried from step to step, into checkpoints and into the returned model;
* optax optimizer + schedule from :class:`TrainConfig`; gradient accumulation over
  ``grad_accum`` micro-batches = thesis Algorithm 2's ``g_acc``: ``data(step)`` holds ``g_acc``
  mini-batches, iteration ``i`` gets mini-batch ``i`` and its own RNG key (so its own sampled
  sub-model), and the averaged gradients make one optimizer update (the ``t mod g_acc`` update),
  in one compiled program holding one mini-batch's activations at a time;
* batches are a pure function of the step (``data(step) -> dict``), and the step key is
  ``fold_in(base_key, step)``, so a resumed run sees exactly the data and randomness of an
  uninterrupted one;
* orbax checkpoints every ``checkpoint_every`` steps, at the end, and on ``KeyboardInterrupt``
  (nothing is lost); a run restarted in the same workdir resumes automatically, from the newest
  checkpoint that restores (a damaged one is reported and moved to ``workdir/checkpoints_bad/``;
  an error that does not mean damage, such as running out of memory, is raised naming the step);
* SIGTERM / SIGINT (a preempted VM, a Slurm job's end, Ctrl-C) finish the current step, save a
  checkpoint there and raise :class:`Preempted` (a ``SystemExit`` with status 128 + signal); with
  several processes all stop at one step agreed through JAX's preemption sync point;
* one run per workdir: ``workdir/train.lock`` (host, pid, start time, :mod:`sortedjax.train.lock`)
  makes a second run on it raise :class:`WorkdirLocked`; a lock left by a run that is gone is
  taken over with a warning;
* the run's configuration (TrainConfig, the caller's ``run_config``, the data's fingerprint, the
  state's shapes) is recorded in ``workdir/run_config.json``; resuming with a different one is
  refused with the differences listed, unless ``restart=True`` or ``allow_changes=(...)``;
* the caller's model is left intact (the donated buffers are a copy);
* JSON-lines metrics (``workdir/metrics.jsonl``), a tqdm bar, and a clear stop on NaN/inf.
Step ``t-1``'s metrics are fetched after step ``t`` is dispatched, so the host never stalls
the device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

import sortedjax.train.preempt as preempt
import sortedjax.train.runstate as rs
from sortedjax import sharding as shd
from sortedjax.train.batches import ArrayBatches, array_fingerprint  # noqa: F401 - re-exported
from sortedjax.train.config import OPTIMIZERS, SCHEDULES, TrainConfig, make_optimizer, make_schedule  # noqa: F401
from sortedjax.train.lock import WorkdirLocked, workdir_lock  # noqa: F401 - WorkdirLocked re-exported
from sortedjax.train.preempt import Preempted  # noqa: F401 - re-exported
from sortedjax.train.runstate import CheckpointError  # noqa: F401 - re-exported
from sortedjax.train.step import (  # noqa: F401 - LossFn, make_train_step re-exported
    LossFn,
    init_opt_state,
    jit_train_step,
    join_state,
    make_train_step,
    split_model,
    unjoin_state,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    model: nnx.Module
    step: int
    history: list[dict]
    resumed_from: int | None


@dataclasses.dataclass
class _Carry:
    """What the loop carries: trainable params, optimizer state, the carried state, the read-only rest."""

    params: Any
    opt_state: Any
    state: Any
    rest: tuple

    def checkpoint(self) -> dict:
        # "rest" as nnx.split(model, trainable, ...) gives it: the checkpoint layout of every version
        return {"params": self.params, "opt_state": self.opt_state, "rest": join_state(self.state, self.rest)}


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)


def _trim_metrics(path: str, keep_upto: int) -> list[dict]:
    """Keep metric lines with step <= keep_upto (those a resumed run will not redo)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r.get("step", 0) <= keep_upto]
    if rs.is_main():
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


# --------------------------------------------------------------------------------- pieces


def _resume(mngr, ckpt_dir: str, cfg: TrainConfig, record: dict, allow_changes: tuple, carry: _Carry):
    """Restore the newest valid checkpoint into ``carry``: ``(start step, record to store)``."""
    record, changed, checked = rs.check_run(cfg, record, allow_changes)
    start, restored, bad = rs.restore_newest_valid(mngr, _abstract(carry.checkpoint()), ckpt_dir)
    for step, err in bad:
        dest = rs.set_aside(ckpt_dir, step, cfg.workdir)
        log.warning(
            "checkpoint step %d in %s cannot be restored (%s); moved it to %s and resuming from step %d",
            step, ckpt_dir, rs.summary(err), dest, start,
        )  # fmt: skip
    if bad:
        rs.sync("sortedjax_train_set_aside")
        mngr.reload()
    carry.params, carry.opt_state = restored.state["params"], restored.state["opt_state"]
    carry.state, carry.rest = unjoin_state(tuple(restored.state["rest"]))
    if not checked and int(restored.meta["seed"]) != cfg.seed:
        raise ValueError(
            f"workdir {cfg.workdir} holds a run with seed {restored.meta['seed']}, not {cfg.seed}; use another workdir"
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
    return start, record


def _save(mngr, step: int, cfg: TrainConfig, carry: _Carry) -> None:
    if step in (mngr.all_steps() or []):
        return
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(carry.checkpoint()),
            meta=ocp.args.JsonSave({"step": step, "seed": cfg.seed, "data_position": step}),
        ),
    )


class _Metrics:
    """Fetches a step's metrics, stops on NaN / inf, logs every ``log_every``-th row (file, bar, callback)."""

    def __init__(self, cfg: TrainConfig, mngr, start: int, on_step):
        self.cfg, self.mngr, self.on_step = cfg, mngr, on_step
        self.path = os.path.join(cfg.workdir, "metrics.jsonl")
        self.history = _trim_metrics(self.path, start)
        self.bar = tqdm(
            total=cfg.steps, initial=start, desc=cfg.desc, disable=not (cfg.progress and rs.is_main()), leave=False
        )

    def drain(self, pending: tuple[int, Any]) -> None:
        step, metrics = pending
        cfg = self.cfg
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["loss"]):
            raise FloatingPointError(
                f"loss is {m['loss']} at step {step} (workdir {cfg.workdir}); stopping. The last good "
                f"checkpoint is step {self.mngr.latest_step()}; lower learning_rate (now {cfg.learning_rate}) "
                f"or set grad_clip_norm."
            )
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, **m}
            self.history.append(row)
            if rs.is_main():
                with open(self.path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            self.bar.set_postfix(loss=f"{m['loss']:.4g}")
            if self.on_step is not None:
                self.on_step(step, row)


def _preempted(watch: preempt.PreemptionWatch, step: int, mngr) -> preempt.Preempted:
    """The checkpoint of ``step`` is saved: wait until it is committed and say so."""
    mngr.wait_until_finished()
    err = preempt.Preempted(watch.signum, step, str(mngr.directory))
    log.warning("%s", err)
    return err


def _run_steps(jstep, carry: _Carry, data, cfg: TrainConfig, mesh, mngr, metrics: _Metrics, start: int, watch) -> int:
    """Steps ``start..cfg.steps``, checkpointing on schedule, at the end, on KeyboardInterrupt and
    after the step a SIGTERM / SIGINT arrived in (then :class:`preempt.Preempted` is raised)."""
    base_key = jax.random.PRNGKey(cfg.seed)
    pending: tuple[int, Any] | None = None
    step = start
    try:
        while step < cfg.steps:
            batch = shd.host_batch(data, step, mesh)  # several processes: each builds only its rows
            key = jax.random.fold_in(base_key, step)
            with shd.use_mesh(mesh):  # activation sharding constraints read the mesh while tracing
                step, (carry.params, carry.opt_state, carry.state, m) = (
                    step + 1,
                    jstep(carry.params, carry.opt_state, carry.state, carry.rest, batch, key),
                )
            metrics.bar.update(1)
            if pending is not None:
                metrics.drain(pending)
            pending = (step, m)
            stop = watch.reached(step)
            if stop or step % cfg.checkpoint_every == 0:
                metrics.drain(pending)  # never checkpoint a NaN state
                pending = None
                _save(mngr, step, cfg, carry)
            if stop:
                raise _preempted(watch, step, mngr)
        if pending is not None:
            metrics.drain(pending)
            pending = None
        _save(mngr, step, cfg, carry)
        if watch.signum is not None:  # the signal came during the last save
            raise _preempted(watch, step, mngr)
    except KeyboardInterrupt:
        # Keep the finished steps: the carry is the state after `step` steps.
        log.warning("interrupted at step %d; saving a checkpoint to resume from", step)
        if pending is not None:
            metrics.drain(pending)
        _save(mngr, step, cfg, carry)
        raise
    return step


# --------------------------------------------------------------------------------- train


def warn_frozen_fresh(model, params) -> None:
    """Warn when modules the model's loader initialised fresh (``model.fresh_modules``, e.g. a task
    head missing from a base checkpoint) get no gradient: with ``trainable=LoRAParam`` they would
    stay random however long the run."""
    fresh = getattr(model, "fresh_modules", ())
    trained = {path[0] for path, _ in nnx.to_flat_state(params)} if fresh else set()
    frozen = [m for m in fresh if m not in trained]
    if frozen:
        warnings.warn(
            f"{frozen} were newly initialised (not in the checkpoint) but the trainable filter leaves them frozen, "
            f"so they stay random; train them too, e.g. trainable=nnx.Any(LoRAParam, nnx.PathContains({frozen[0]!r}))",
            stacklevel=3,
        )


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
        donates a copy of its trainable arrays and carried state (so while the caller keeps
        ``model`` alive, training holds one extra copy of them). The trained model is
        ``result.model``, with the state the loss updated (BatchNorm running statistics).
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
    does, a :class:`rs.CheckpointError` says what to delete. Any other restore error is raised
    with a note naming the step, and the checkpoint stays.

    Raises:
      WorkdirLocked: another run holds ``cfg.workdir`` (its host, pid and start time are named).
      Preempted: SIGTERM or SIGINT arrived; the step it arrived in was finished and checkpointed
        (``err.step``); uncaught, the program exits with status 128 + signal and a rerun resumes.
    """
    rs.quiet_orbax()
    allow_changes = (allow_changes,) if isinstance(allow_changes, str) else tuple(allow_changes)
    os.makedirs(cfg.workdir, exist_ok=True)
    graphdef, params, state, rest = split_model(model, trainable)
    warn_frozen_fresh(model, params)
    tx = make_optimizer(cfg)
    jstep, shardings = jit_train_step(
        graphdef, loss_fn, tx, params, state, rest, mesh=mesh, grad_accum=cfg.grad_accum,
        post_update=post_update, donate=cfg.donate,
    )  # fmt: skip
    if shardings is not None:
        params = jax.device_put(params, shardings.params)
        state, rest = jax.device_put(state, shardings.state), jax.device_put(rest, shardings.rest)
    carry = _Carry(params, init_opt_state(tx, params, shardings), state, rest)
    record = rs.run_record(cfg, run_config, params, join_state(state, rest), data)
    with workdir_lock(cfg.workdir), preempt.PreemptionWatch() as watch:
        if restart:
            rs.start_over(cfg.workdir)
            rs.sync("sortedjax_train_restart")
        step, resumed, history = _fit(jstep, carry, data, cfg, mesh, record, allow_changes, on_step, watch)
    # fresh Variables: nothing shared with the caller's model
    trained = nnx.merge(graphdef, carry.params, carry.state, *carry.rest, copy=True)
    return TrainResult(model=trained, step=step, history=history, resumed_from=resumed)


def _fit(jstep, carry: _Carry, data, cfg: TrainConfig, mesh, record: dict, allow_changes, on_step, watch):
    """Resume from the workdir's checkpoints (if any) and run the steps: ``(step, resumed_from, history)``."""
    ckpt_dir = os.path.abspath(os.path.join(cfg.workdir, "checkpoints"))
    with rs.checkpoint_manager(ckpt_dir, cfg) as mngr:
        start, resumed = 0, None
        if mngr.all_steps():
            start, record = _resume(mngr, ckpt_dir, cfg, record, allow_changes, carry)
            resumed = start
        elif cfg.donate:
            # the step donates params and state; without a copy that would delete the caller's model's arrays
            carry.params, carry.state = jax.tree.map(jnp.copy, (carry.params, carry.state))
        if rs.is_main():
            rs.write_json(os.path.join(cfg.workdir, rs.RUN_FILE), record)
        metrics = _Metrics(cfg, mngr, start, on_step)
        try:
            step = _run_steps(jstep, carry, data, cfg, mesh, mngr, metrics, start, watch)
        finally:
            metrics.bar.close()
    return step, resumed, metrics.history
