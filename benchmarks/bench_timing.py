"""What the step benchmarks share: a compiled train step with its XLA temporary memory, and
interleaved timing (the variants take turns, so a load change on a shared machine hits all alike).

Used by ``dylora_cost.py``, ``soft_cost.py`` and ``submodel_step.py`` (``benchmarks/`` is on
``sys.path`` when they run as scripts).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from sortedjax.train import make_train_step


def compile_train_step(graphdef, loss_fn, tx, params, opt_state, rest, batch):
    """``(compiled step, temp bytes)``: :func:`sortedjax.train.make_train_step` jitted, lowered on
    these arguments and compiled; the bytes are XLA's ``memory_analysis().temp_size_in_bytes``.
    The step is called as ``step(params, opt_state, (rest,), batch, key)``."""
    step = jax.jit(make_train_step(graphdef, loss_fn, tx))
    compiled = step.lower(params, opt_state, (rest,), batch, jax.random.PRNGKey(0)).compile()
    return compiled, int(compiled.memory_analysis().temp_size_in_bytes)


def interleaved(calls: dict[str, Callable[[int], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call in each of ``rounds`` rounds. Every call first runs ``warmup`` times
    untimed (compilation, caches); then the calls take turns round by round. A call gets its run
    index (``0..warmup-1`` for the warm-up, ``warmup + r`` in round ``r``: fold it into a key) and
    its result is waited for (``jax.block_until_ready``) inside the timed span."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    for fn in calls.values():
        for i in range(warmup):
            jax.block_until_ready(fn(i))
    times = {name: [] for name in calls}
    for r in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(warmup + r))
            times[name].append(time.perf_counter() - t0)
    return times
