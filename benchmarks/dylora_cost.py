"""DyLoRA over LoRA: train-step time and XLA compiled temporary memory, same model and batch; and the
wall time of one DyLoRA run (every rank 1..8) over the LoRA rank grid {1, 2, 4, 8}.

Run::

    python benchmarks/dylora_cost.py              # ~10 minutes on the shared (loaded) 2-core CPU
    python benchmarks/dylora_cost.py --hidden 768 --layers 12 --length 128

The model is a BERT-shaped sequence classifier (``sortedjax.models.encoder``) with adapters on
``query`` / ``value`` (``r_max`` 8, alpha 16, PEFT's defaults for BERT); only the adapters train
(``make_train_step``, AdamW, cross-entropy on random labels). The DyLoRA step draws its rank
``b ~ U{1..8}`` from the step key (``lora.rank_dim`` + ``Pool``, a traced int32: one program for
every rank); the LoRA step runs the same adapters at the fixed rank ``r_max``. Step ratios are
medians over interleaved repeats; the XLA temporary memory is
``jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes``. Target: at most 1.05x each.

Search-free cost: ``--steps`` steps of one DyLoRA run (r_max 8) against four LoRA runs of the same
steps at r = 1, 2, 4, 8 (each its own model and compilation, as separate runs are), compile time
included; the five runs' steps are interleaved so load changes on a shared machine hit all alike. The thesis reports the grid as 4-7x the DyLoRA run.

Prints the ratios and writes JSON (``time_ratio``, ``memory_ratio``, ``search_ratio`` at the top
level) to ``--out`` (default ``benchmarks/results/dylora_cost.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_timing  # noqa: E402 (benchmarks/ is on sys.path)

from sortedjax import peft as lora  # noqa: E402
from sortedjax.models import encoder  # noqa: E402
from sortedjax.submodel import Pool, SubModel  # noqa: E402
from sortedjax.train import TrainConfig, make_optimizer  # noqa: E402

R_MAX, ALPHA, GRID = 8, 16.0, (1, 2, 4, 8)


def make_model(a, r: int):
    cfg = encoder.EncoderConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=max(1, a.hidden // 64),
        intermediate_size=4 * a.hidden,
        max_position_embeddings=max(64, a.length),
        num_labels=2,
    )
    model = encoder.Encoder(cfg, rngs=nnx.Rngs(0))
    lora.apply_dylora(model, ["query", "value"], r=r, alpha=ALPHA)
    return model


def loss_for(rank_of):
    """Cross-entropy of the classifier at the rank ``rank_of(key)`` (None: every adapter's r_max)."""

    def loss_fn(model, batch, key):
        logits = model(batch["tokens"], attention_mask=batch["mask"], sub=SubModel(rank=rank_of(key)))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean(), {}

    return loss_fn


def compiled_step(model, loss_fn, tx, batch):
    """``(compiled step, params, opt_state, rest, temp bytes)`` of a jitted adapters-only step."""
    graphdef, params, rest = nnx.split(model, lora.LoRAParam, ...)
    opt = tx.init(params)
    c, temp = bench_timing.compile_train_step(graphdef, loss_fn, tx, params, opt, rest, batch)
    return c, params, opt, rest, temp


def runs(setups: dict, tx, batch, steps: int) -> dict[str, float]:
    """Wall seconds of whole runs (build + compile + ``steps`` steps), one per ``{name: (model,
    loss_fn)}``; the runs' steps are interleaved so load changes on a shared machine hit all alike."""
    state, wall = {}, {}
    for name, (model, loss_fn) in setups.items():
        t = time.perf_counter()
        c, params, opt, rest, _ = compiled_step(model, loss_fn, tx, batch)
        state[name] = [c, params, opt, rest]
        wall[name] = time.perf_counter() - t
    base = jax.random.PRNGKey(1)
    for s in range(steps):
        for name, st in state.items():
            t = time.perf_counter()
            c, params, opt, rest = st
            st[1], st[2], _ = c(params, opt, (rest,), batch, jax.random.fold_in(base, s))
            jax.block_until_ready(st[1])
            wall[name] += time.perf_counter() - t
    return wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4, help="encoder layers")
    p.add_argument("--hidden", type=int, default=256, help="hidden width (heads of 64)")
    p.add_argument("--vocab", type=int, default=1000, help="vocabulary size")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--length", type=int, default=64, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per variant (medians)")
    p.add_argument("--steps", type=int, default=40, help="steps per run in the DyLoRA-vs-LoRA-grid comparison")
    p.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dylora_cost.json"),
        help="JSON output path",
    )
    a = p.parse_args(argv)

    rng = np.random.default_rng(0)
    B, L = a.batch, a.length
    mask = np.ones((B, L), np.int32)
    mask[B // 2 :, L * 3 // 4 :] = 0  # some padded rows
    batch = {
        "tokens": jnp.asarray(rng.integers(1, a.vocab, (B, L)), jnp.int32),
        "mask": jnp.asarray(mask),
        "labels": jnp.asarray(rng.integers(0, 2, (B,)), jnp.int32),
    }
    tx = make_optimizer(TrainConfig(workdir="/tmp/unused", steps=1, optimizer="adamw", learning_rate=1e-3))
    model = make_model(a, R_MAX)
    pool = Pool({"rank": lora.rank_dim(model)})
    losses = {"lora": loss_for(lambda key: None), "dylora": loss_for(lambda key: pool.sample(key).rank)}
    steps = {k: compiled_step(model, fn, tx, batch) for k, fn in losses.items()}
    mem = {k: s[4] for k, s in steps.items()}
    calls = {
        k: (lambda i, c=c, params=params, opt=opt, rest=rest: c(params, opt, (rest,), batch, jax.random.PRNGKey(i)))
        for k, (c, params, opt, rest, _) in steps.items()
    }
    times = bench_timing.interleaved(calls, a.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}

    setups = {"dylora_r1-8": (make_model(a, R_MAX), losses["dylora"])}
    setups.update({f"lora_r{r}": (make_model(a, r), losses["lora"]) for r in GRID})
    walls = runs(setups, tx, batch, a.steps)
    grid = sum(walls[f"lora_r{r}"] for r in GRID)
    res = {
        "time_ratio": med["dylora"] / med["lora"],
        "memory_ratio": mem["dylora"] / mem["lora"],
        "search_ratio": grid / walls["dylora_r1-8"],
        "step_seconds": med,
        "temp_bytes": mem,
        "run_seconds": walls,
        "config": {**vars(a), "r_max": R_MAX, "alpha": ALPHA, "grid": list(GRID), "backend": jax.default_backend()},
    }
    print(
        f"encoder {a.layers} layers x {a.hidden}, batch {B}x{L}, adapters on query/value r_max {R_MAX}, "
        f"{jax.default_backend()}"
    )
    for k in steps:
        print(f"  {k:7s} {med[k] * 1e3:8.2f} ms/step   temp {mem[k] / 2**20:8.3f} MiB")
    print(f"DyLoRA / LoRA step: time {res['time_ratio']:.3f}x, memory {res['memory_ratio']:.3f}x (target <= 1.05x)")
    print(f"runs of {a.steps} steps (compile included): " + ", ".join(f"{k} {v:.1f} s" for k, v in walls.items()))
    print(f"LoRA grid {list(GRID)} / one DyLoRA run: {res['search_ratio']:.2f}x wall time")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
