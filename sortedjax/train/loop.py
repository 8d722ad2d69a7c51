"""The one functional train loop every experiment uses.

``train(model, loss_fn, data, cfg)``:

* ``nnx.split`` once into (trainable params, everything else); a pure ``train_step`` under
  ``jax.jit`` with in/out shardings from the logical-axis rules and donated buffers;
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

import dataclasses
import json
import logging
import os
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

import sortedjax.train.runstate as rs
from sortedjax import sharding as shd
from sortedjax.train.batches import ArrayBatches, array_fingerprint  # noqa: F401 - re-exported
from sortedjax.train.config import OPTIMIZERS, SCHEDULES, TrainConfig, make_optimizer, make_schedule  # noqa: F401
from sortedjax.train.runstate import CheckpointError  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]


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
    does, a :class:`rs.CheckpointError` says what to delete.
    """
    rs.quiet_orbax()
    allow_changes = (allow_changes,) if isinstance(allow_changes, str) else tuple(allow_changes)
    os.makedirs(cfg.workdir, exist_ok=True)
    graphdef, params, *rest = nnx.split(model, trainable, ...)
    rest = tuple(rest)
    tx = make_optimizer(cfg)

    if mesh is not None:
        p_shard, o_shard, r_shard, rep = shd.train_shardings(tx, params, rest, mesh)
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
    record = rs.run_record(cfg, run_config, params, rest, data)
    if restart:
        rs.start_over(cfg.workdir)
        rs.sync("sortedjax_train_restart")
    ckpt_dir = os.path.abspath(os.path.join(cfg.workdir, "checkpoints"))
    with rs.checkpoint_manager(ckpt_dir, cfg) as mngr:
        start, resumed = 0, None
        if mngr.all_steps():
            record, changed, checked = rs.check_run(cfg, record, allow_changes)
            target = _abstract({"params": params, "opt_state": opt_state, "rest": rest})
            start, restored, bad = rs.restore_newest_valid(mngr, target, ckpt_dir)
            for step, err in bad:
                dest = rs.set_aside(ckpt_dir, step, cfg.workdir)
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); moved it to %s and resuming from step %d",
                    step, ckpt_dir, rs.summary(err), dest, start,
                )  # fmt: skip
            if bad:
                rs.sync("sortedjax_train_set_aside")
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
        if rs.is_main():
            rs.write_json(os.path.join(cfg.workdir, rs.RUN_FILE), record)

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
            total=cfg.steps, initial=start, desc=cfg.desc, disable=not (cfg.progress and rs.is_main()), leave=False
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
                if rs.is_main():
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{m['loss']:.4g}")
                if on_step is not None:
                    on_step(step, row)

        step = start
        try:
            while step < cfg.steps:
                batch = shd.host_batch(data, step, mesh)  # several processes: each builds only its rows
                key = jax.random.fold_in(base_key, step)
                with shd.use_mesh(mesh):  # activation sharding constraints read the mesh while tracing
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
