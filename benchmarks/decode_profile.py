"""Where a decoding loop's time goes on the CPU: an XLA trace of our autoregressive and
self-speculative decoding, op time summed by kind (fusion names without their numbers).

    python benchmarks/decode_profile.py [--model b_deep] [--draft-exit 6] [--calls 3]

Loads a benchmark model of ``benchmarks/dynamic_inference.py`` (trained and cached there on first
use), warms each mode up, records ``--calls`` calls of each with ``jax.profiler.trace`` and reads the
trace back (``jax.profiler.ProfileData``): the time of every XLA op event on XLA's CPU worker
threads, per call, grouped by op kind; loop and conditional events (which contain other ops) and
thread-pool waits are left out, so the shares add up to the time spent in kernels (across both
threads of a 2-core machine, hence more than the wall time). Writes
``benchmarks/results/decode_profile.json``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dynamic_inference_model as dm  # noqa: E402 (benchmarks/ is on sys.path)
import jax  # noqa: E402

from sortedjax import decoding  # noqa: E402

CONTAINERS = ("ThunkExecutor", "while", "conditional", "cond", "call")


def op_kinds(trace_dir: str, calls: int) -> dict[str, float]:
    """Milliseconds per call of each XLA op kind in the trace under ``trace_dir``."""
    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    kinds = collections.defaultdict(float)
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA's CPU worker threads
                continue
            for ev in line.events:
                kind = re.sub(r"\.\d+$", "", ev.name)
                if kind.split(" ")[0].startswith(CONTAINERS) or "Await" in kind:
                    continue
                kinds[kind] += ev.duration_ns / 1e6 / calls
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="b_deep", choices=list(dm.MODELS), help="benchmark model")
    p.add_argument("--draft-exit", type=int, default=6, help="the speculative draft's exit layer")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per call")
    p.add_argument("--calls", type=int, default=3, help="traced calls per mode")
    p.add_argument("--out", default="benchmarks/results/decode_profile.json", help="JSON output path")
    a = p.parse_args(argv)
    model, tok, held_out, _ = dm.load_or_train(a.model, dm.MODELS[a.model])
    prompts = dm.prompts(tok, held_out, 1, 16)
    modes = {
        "autoregressive": functools.partial(decoding.generate, model, prompts, max_new_tokens=a.new_tokens),
        f"speculative_exit{a.draft_exit}_k4": functools.partial(
            decoding.speculative_generate,
            model,
            prompts,
            max_new_tokens=a.new_tokens,
            draft_exit=a.draft_exit,
            num_draft=4,
            max_draft=4,
        ),
    }
    res = {"model": a.model, "layers": model.num_layers, "new_tokens": a.new_tokens, "modes": {}}
    for name, fn in modes.items():
        fn()  # compile
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            with jax.profiler.trace(d):
                for _ in range(a.calls):
                    fn()
            wall = (time.perf_counter() - t0) / a.calls
            kinds = op_kinds(d, a.calls)
        total = sum(kinds.values())
        res["modes"][name] = {
            "traced_wall_ms_per_call": 1e3 * wall,
            "op_ms_per_call": total,
            "share": {k: v / total for k, v in kinds.items()},
            "op_ms": kinds,
        }
        print(f"{name}: {total:.1f} ms of XLA ops per call (traced wall {1e3 * wall:.1f} ms)")
        for k, v in list(kinds.items())[:8]:
            print(f"  {100 * v / total:5.1f}%  {v:7.2f} ms  {k}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
