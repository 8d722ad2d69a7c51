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
  (nothing is lost); a run restarted in the same workdir resumes automatically;
* JSON-lines metrics (``workdir/metrics.jsonl``), a tqdm bar, and a clear stop on NaN/inf.
Step ``t-1``'s metrics are fetched after step ``t`` is dispatched, so the host never stalls
the device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
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
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``cfg.workdir`` if it holds a checkpoint.

    Args:
      model: an nnx Module (not modified; the trained model is ``result.model``).
      loss_fn: ``(model, batch, key) -> (loss, metrics)``; runs inside the jitted step.
      data: ``step -> batch`` (dict of arrays with a leading batch axis).
      trainable: nnx filter selecting what receives gradients (default every ``nnx.Param``).
      post_update: optional ``(old_params, new_params, key) -> new_params`` run in the step
        (e.g. DyLoRA frozen mode keeping all rank rows but the sampled one).
      on_step: optional host callback ``(step, metrics)`` after each logged step.
    """
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
    ckpt_dir = os.path.abspath(os.path.join(cfg.workdir, "checkpoints"))
    mngr = ocp.CheckpointManager(
        ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=cfg.max_to_keep, create=True)
    )
    start, resumed = 0, None
    latest = mngr.latest_step()
    if latest is not None:
        restored = mngr.restore(
            latest,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract({"params": params, "opt_state": opt_state, "rest": rest})),
                meta=ocp.args.JsonRestore(),
            ),
        )
        params, opt_state, rest = (restored.state[k] for k in ("params", "opt_state", "rest"))
        meta = restored.meta
        if int(meta["seed"]) != cfg.seed:
            raise ValueError(
                f"workdir {cfg.workdir} holds a run with seed {meta['seed']}, not {cfg.seed}; use another --workdir"
            )
        start = resumed = int(meta["step"])
        log.info("resumed from %s at step %d", ckpt_dir, start)

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

    bar = tqdm(total=cfg.steps, initial=start, desc=cfg.desc, disable=not (cfg.progress and _is_main()), leave=False)
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
        mngr.wait_until_finished()
        raise
    finally:
        bar.close()
    mngr.wait_until_finished()
    mngr.close()
    trained = nnx.merge(graphdef, params, *rest)
    return TrainResult(model=trained, step=step, history=history, resumed_from=resumed)
