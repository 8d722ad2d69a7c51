"""The benchmarks' shared timing helper (benchmarks/bench_timing.py)."""

import pathlib
import sys

import jax.numpy as jnp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_timing  # noqa: E402


def test_interleaved_takes_turns_and_times_only_rounds():
    seen = []
    calls = {name: (lambda i, name=name: seen.append((name, i)) or jnp.float32(i)) for name in ("a", "b")}
    times = bench_timing.interleaved(calls, rounds=3, warmup=2)
    # warm-up runs 0, 1 per call first, then the calls alternate with indices 2, 3, 4
    assert seen == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4), ("b", 4)]
    assert set(times) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in times.values())


@pytest.mark.parametrize("rounds, warmup", [(0, 1), (2, -1)])
def test_interleaved_refuses_bad_counts(rounds, warmup):
    with pytest.raises(ValueError, match=f"rounds={rounds}, warmup={warmup}"):
        bench_timing.interleaved({"a": lambda i: i}, rounds=rounds, warmup=warmup)
