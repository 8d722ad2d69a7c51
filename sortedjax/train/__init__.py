"""Training: the functional loop (:mod:`~sortedjax.train.loop`), its jitted step
(:mod:`~sortedjax.train.step`), its configuration (:mod:`~sortedjax.train.config`), in-memory
batches (:mod:`~sortedjax.train.batches`), the recorded run state
(:mod:`~sortedjax.train.runstate`) and the workdir lock (:mod:`~sortedjax.train.lock`).

``sortedjax.train(model, loss_fn, data, cfg)`` is :func:`sortedjax.train.loop.train`: this package
is callable, so ``sj.train(...)`` and ``sj.train.TrainConfig`` both read naturally.
"""

from sortedjax._callable import make_callable
from sortedjax.train.batches import ArrayBatches, array_fingerprint
from sortedjax.train.config import OPTIMIZERS, SCHEDULES, TrainConfig, float32_state, make_optimizer, make_schedule
from sortedjax.train.lock import WorkdirLocked
from sortedjax.train.loop import TrainResult, train
from sortedjax.train.preempt import Preempted
from sortedjax.train.runstate import CheckpointError
from sortedjax.train.step import LossFn, jit_train_step, make_train_step

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "ArrayBatches",
    "CheckpointError",
    "LossFn",
    "Preempted",
    "TrainConfig",
    "TrainResult",
    "WorkdirLocked",
    "array_fingerprint",
    "float32_state",
    "jit_train_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "train",
]

make_callable(__name__, train)
