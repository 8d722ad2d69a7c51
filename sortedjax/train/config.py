"""``TrainConfig``: what a training run is (steps, optimizer, schedule, checkpointing, seed),
and the optax optimizer and schedule it describes."""

from __future__ import annotations

import dataclasses

import optax

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
    grad_accum: int = 1  # thesis g_acc: data(step) holds g_acc mini-batches, one update per step
    opt_state_dtype: str | None = None  # None: moments in the params' dtype; "float32" for bfloat16 params
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
        if self.opt_state_dtype not in (None, "float32"):
            raise ValueError(f"opt_state_dtype must be None or 'float32', got {self.opt_state_dtype!r}")
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

    @classmethod
    def finetune(cls, *, workdir: str, steps: int, learning_rate: float, seed: int, desc: str, **overrides):
        """The fine-tuning recipe the encoder experiments share: AdamW, linear warmup over
        ``min(50, steps // 10)`` steps then cosine decay to 10 %, gradient clipping at 1, one
        checkpoint at the end; ``overrides`` replace any field."""
        fields = dict(
            workdir=workdir,
            steps=steps,
            learning_rate=learning_rate,
            schedule="warmup_cosine",
            warmup_steps=min(50, steps // 10),
            end_lr_factor=0.1,
            optimizer="adamw",
            grad_clip_norm=1.0,
            checkpoint_every=max(steps, 1),
            seed=seed,
            desc=desc,
        )
        return cls(**{**fields, **overrides})


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
    return opt if cfg.opt_state_dtype is None else float32_state(opt)


def float32_state(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` with its state (Adam moments) and arithmetic in float32 whatever the params' dtype;
    updates come back in each parameter's dtype (bfloat16 params, float32 optimizer state)."""
    import jax
    import jax.numpy as jnp

    f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)  # noqa: E731

    def init(params):
        return inner.init(f32(params))

    def update(updates, state, params=None):
        new, state = inner.update(f32(updates), state, None if params is None else f32(params))
        return jax.tree.map(lambda n, u: n.astype(u.dtype), new, updates), state

    return optax.GradientTransformation(init, update)
