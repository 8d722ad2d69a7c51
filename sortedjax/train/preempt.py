"""Preemption: SIGTERM or SIGINT stop training after the current step, with a checkpoint there
(every process of a job at one step). :class:`PreemptionWatch` notes the signal;
:class:`Preempted` is what the loop raises once the step is saved."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

log = logging.getLogger("sortedjax.train")


class Preempted(SystemExit):
    """Training stopped on SIGTERM / SIGINT after it finished the current step and saved a
    checkpoint there; rerunning the same command resumes from it.

    A ``SystemExit`` with status ``128 + signal`` (143 for SIGTERM, 130 for SIGINT): uncaught it
    ends the program quietly with that status, which a job scheduler or ``tpu_scripts/preempt_loop.sh``
    reads as "not finished, run again"; ``except Exception`` does not swallow it."""

    def __init__(self, signum: int, step: int, ckpt_dir: str):
        super().__init__(128 + signum)
        self.signum, self.step, self.ckpt_dir = signum, step, ckpt_dir

    def __str__(self) -> str:
        return (
            f"{signal.Signals(self.signum).name} received: stopped after step {self.step} and saved a checkpoint "
            f"there in {self.ckpt_dir}; rerun the same command to resume"
        )


class PreemptionWatch:
    """Notes SIGTERM / SIGINT while training runs; the loop asks :meth:`reached` after every step.

    One process: handlers are installed (main thread only; elsewhere signals keep their old
    behaviour) and the previous ones restored on exit; a second signal raises
    ``KeyboardInterrupt`` at once (the loop still saves the finished steps). Several processes:
    every process must stop at the same step, since orbax saves collectively. JAX's preemption
    service (started by ``jax.distributed.initialize``) catches SIGTERM itself and
    ``multihost_utils.reached_preemption_sync_point`` answers True on every process at one agreed
    step; SIGINT keeps Python's ``KeyboardInterrupt`` there (one process alone cannot tell the
    others; a Ctrl-C that reaches only some processes needs a kill of the job)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._prev: dict[int, Any] = {}
        self._sync = False

    def __enter__(self) -> PreemptionWatch:
        many = jax.process_count() > 1
        # SIGTERM with a handler from outside Python: JAX's preemption service, which needs the sync point
        self._sync = many or signal.getsignal(signal.SIGTERM) is None
        if many or threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            prev = signal.getsignal(sig)
            if prev is None:  # a handler installed outside Python (JAX's preemption service): leave it alone
                continue
            self._prev[sig] = prev
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"a second {signal.Signals(signum).name}")
        self.signum = signum  # nothing else here: the loop logs and saves between steps

    def __exit__(self, *exc) -> None:
        for sig, prev in self._prev.items():
            signal.signal(sig, prev)
        self._prev.clear()

    def reached(self, step: int) -> bool:
        """Whether to stop after ``step`` (every process gets the same answer)."""
        if self._sync:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signum = signal.SIGTERM
            except RuntimeError as e:  # the preemption service is off (jax_enable_preemption_service)
                log.warning("SIGTERM cannot stop this multi-process run at a checkpoint: %s", e)
                self._sync = False
        return self.signum is not None
