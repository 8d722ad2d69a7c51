"""Training and evaluation shared by the SortedNet vision experiments (experiments.sortednet_vision).

:func:`fit` trains one model with one rule of :mod:`sortedjax.methods.slimmable` through
:func:`sortedjax.train.train` (the library's one train loop; BatchNorm running statistics come
out of it); :class:`Evaluator` scores any sub-model through one compiled program (sizes traced),
recalibrating BatchNorm statistics per sub-model on training batches first
(:func:`sortedjax.nn.recalibrate`: what slimmable / US networks do after training, the protocol
of Table 4.2 and Fig 4.2).
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sortedjax import nn
from sortedjax.data import vision as vision_data
from sortedjax.data.vision import VisionData
from sortedjax.methods import slimmable
from sortedjax.models import cnn_common as cc
from sortedjax.submodel import Pool, SubModel
from sortedjax.train import train
from sortedjax.train.batches import ArrayBatches
from sortedjax.train.config import TrainConfig

AUGMENTS = ("none", "crop", "crop_flip")


@dataclasses.dataclass
class FitResult:
    model: nnx.Module
    step_seconds: float  # median wall time of one update (after compilation)
    final_loss: float
    updates: int


def _batches(data: VisionData, batch: int, seed: int, augment: str):
    """``step -> batch`` of ``batch`` training images, augmented per step from ``(seed, step)``."""
    batches = ArrayBatches({"x": data.x_train, "y": data.y_train}, batch, seed=seed)
    if augment == "none":
        return batches

    def at(t: int) -> dict:
        b = batches(t)
        rng = np.random.default_rng((seed, t))
        return {**b, "x": vision_data.augment(np.asarray(b["x"]), rng, flip=augment == "crop_flip")}

    return at


def fit(
    model,
    data: VisionData,
    method: str,
    pool: Pool,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    g_acc: int = 1,
    desc: str = "",
    progress: bool = True,
    augment: str = "none",
) -> FitResult:
    """Train ``model`` for ``steps`` updates of ``g_acc`` mini-batches of ``batch`` images each
    (Adam, cosine decay from ``lr``) with :func:`sortedjax.train.train`, in a temporary workdir.

    ``augment``: ``none``, ``crop`` (random crop after 4-pixel zero padding, CIFAR's) or
    ``crop_flip`` (plus random horizontal flips), drawn per step from ``(seed, step)``."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    ticks = [
        time.perf_counter()
    ]  # then one per step, as its metrics arrive (train fetches step t-1's after dispatching t)
    with tempfile.TemporaryDirectory(prefix="sortednet_vision_fit_") as workdir:
        cfg = TrainConfig(
            workdir=workdir, steps=steps, learning_rate=lr, schedule="cosine", optimizer="adam", seed=seed,
            grad_accum=g_acc, log_every=1, checkpoint_every=steps, progress=progress, desc=desc or method,
        )  # fmt: skip
        res = train(
            model, slimmable.make_loss(method, pool), _batches(data, batch * g_acc, seed, augment), cfg,
            on_step=lambda step, row: ticks.append(time.perf_counter()),
        )  # fmt: skip
    times = np.diff(ticks)  # the first includes compilation
    return FitResult(
        res.model, float(np.median(times[1:] if len(times) > 1 else times)), res.history[-1]["loss"], steps
    )


_TRACES: dict = {}  # graphdef -> times the scoring program was traced (compilations)


@functools.partial(jax.jit, static_argnums=0)
def _recal(graphdef, state, sub, xs):
    m = nnx.merge(graphdef, state)
    nn.recalibrate(m, lambda mm, x: mm(x, sub), xs)
    return nnx.state(m)


@functools.partial(jax.jit, static_argnums=0)
def _correct(graphdef, state, sub, x, y):
    _TRACES[graphdef] = _TRACES.get(graphdef, 0) + 1
    m = cc.set_eval(nnx.merge(graphdef, state))
    return jnp.sum(jnp.argmax(m(x, sub), -1) == y)


class Evaluator:
    """Accuracy of any sub-model of ``model`` on ``data``'s test split; one program for all
    sub-models (and for every model of the same graph)."""

    def __init__(self, model, data: VisionData, *, calib_batches: int = 2, batch: int = 256):
        self.data = data
        self.bn = any(isinstance(m, nn.BatchNorm) for _, m in nnx.iter_modules(model))
        n = min(batch, len(data.y_test))
        self.batch = n
        rng = np.random.default_rng(0)
        m = min(n, len(data.y_train))
        self.calib = [
            jnp.asarray(data.x_train[rng.choice(len(data.y_train), m, replace=False)]) for _ in range(calib_batches)
        ]
        cfg = getattr(model, "cfg", None)
        if getattr(cfg, "depth_skip", None) == "select":
            # no backward pass here: a lax.cond per block skips the blocks past the depth for real
            # (the default grid model's evaluations, BN recalibration included, took 1.1 s each this
            # way and 1.4 s with select on the 2-core CPU)
            model = nnx.clone(model)
            model.cfg = dataclasses.replace(cfg, depth_skip="cond")
        self.graphdef, self.state = nnx.split(model)

    def accuracy(self, sizes: dict) -> float:
        sub = SubModel.of(**sizes)
        state = _recal(self.graphdef, self.state, sub, self.calib) if self.bn else self.state
        n, hits = len(self.data.y_test), 0
        for i in range(0, n, self.batch):
            x, y = self.data.x_test[i : i + self.batch], self.data.y_test[i : i + self.batch]
            if len(y) < self.batch:  # pad the last batch to the compiled shape
                pad = self.batch - len(y)
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                y = np.concatenate([y, -np.ones(pad, y.dtype)])
            hits += int(_correct(self.graphdef, state, sub, jnp.asarray(x), jnp.asarray(y)))
        return 100.0 * hits / n

    def compilations(self) -> int:
        """Times the scoring program was compiled for this model's graph (1 for any number of sub-models)."""
        return _TRACES.get(self.graphdef, 0)


if __name__ == "__main__":
    raise SystemExit(
        "experiments.sortednet_vision.train is part of python -m experiments.sortednet_vision, not a command of its own"
    )
