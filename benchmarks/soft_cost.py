"""SoFT over SFT: train-step time and XLA compiled temporary memory, same model and batch.

Run::

    python benchmarks/soft_cost.py            # ~3-6 minutes on a 2-core CPU
    python benchmarks/soft_cost.py --hidden 512 --vocab 2048 --length 512 --response-len 256

Both steps are the same jitted AdamW train step (``sortedjax.train.make_train_step``) on a
LLaMA-shaped model with Sorted LLaMA's depth and exits (40 layers, exits 12, 16, ..., 40;
vocab / hidden = 4, SwiGLU width 8/3 hidden); only the loss differs: SFT is the last exit's loss,
SoFT the mean of every exit's loss. Both compute logits only at response positions. SoFT
makes one exit's logits at a time (``lax.map`` + ``jax.checkpoint``), so its peak memory is
SFT's plus the exits' hidden states. For contrast it also measures the naive SoFT that
materializes every exit's full B x L x V logits at once.

Prints the ratios and writes JSON (``time_ratio``, ``memory_ratio`` at the top level) to
``--out`` (default ``benchmarks/results/soft_cost.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_timing  # noqa: E402 (benchmarks/ is on sys.path)

from sortedjax.methods import soft  # noqa: E402
from sortedjax.models import llama  # noqa: E402
from sortedjax.train import TrainConfig, make_optimizer  # noqa: E402


def naive_soft_loss(exits):
    """Every exit's full logits at once, then the masked mean (what a direct port does)."""

    def loss_fn(model, batch, key):
        h = model.hidden_states(batch["inputs"], exits)
        logits = model.logits_from_hidden(h)  # E x B x L x V all alive
        tot, cnt = soft.masked_xent(
            logits,
            jnp.broadcast_to(batch["targets"], logits.shape[:-1]),
            jnp.broadcast_to(batch["mask"], logits.shape[:-1]),
        )
        return tot / cnt, {}

    return loss_fn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--response-len", type=int, default=64, help="max response tokens (logit positions)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(os.path.abspath(__file__)),
            "results",
            os.path.splitext(os.path.basename(__file__))[0] + ".json",
        ),
    )
    a = p.parse_args(argv)

    cfg = llama.LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=a.layers,
        num_attention_heads=max(1, a.hidden // 32),
        max_position_embeddings=max(256, a.length),
    )
    exits = soft.default_exits(a.layers)
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    B, L, R = a.batch, a.length, a.response_len
    mask = np.zeros((B, L), np.float32)
    for b in range(B):  # Alpaca-like: a prompt, then a response of R/2..R tokens
        r = int(rng.integers(R // 2, R + 1))
        mask[b, L - r - 4 : L - 4] = 1.0
    batch = {
        "inputs": jnp.asarray(rng.integers(0, a.vocab, (B, L)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, a.vocab, (B, L)), jnp.int32),
        "mask": jnp.asarray(mask),
    }

    tc = TrainConfig(workdir="/tmp/unused", steps=1, optimizer="adamw")
    tx = make_optimizer(tc)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = tx.init(params)
    losses = {
        "sft": soft.make_loss(soft.SoftConfig(mode="sft", exits=exits, num_layers=a.layers, response_len=R)),
        "soft": soft.make_loss(soft.SoftConfig(mode="soft", exits=exits, num_layers=a.layers, response_len=R)),
        "naive_sft": naive_soft_loss((a.layers,)),
        "naive_soft": naive_soft_loss(exits),
    }
    compiled, mem = {}, {}
    for name, fn in losses.items():
        compiled[name], mem[name] = bench_timing.compile_train_step(graphdef, fn, tx, params, opt, rest, batch)
    key = jax.random.PRNGKey(0)
    calls = {k: (lambda i, c=c: c(params, opt, (rest,), batch, key)) for k, c in compiled.items()}
    times = bench_timing.interleaved(calls, a.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "time_ratio": med["soft"] / med["sft"],
        "memory_ratio": mem["soft"] / mem["sft"],
        "naive_time_ratio": med["naive_soft"] / med["naive_sft"],
        "naive_memory_ratio": mem["naive_soft"] / mem["naive_sft"],
        "step_seconds": med,
        "temp_bytes": mem,
        "config": {**vars(a), "exits": list(exits), "backend": jax.default_backend(), "devices": jax.device_count()},
    }
    print(
        f"exits {list(exits)} of {a.layers} layers, batch {B}x{L}, logits at <= {R} response positions, "
        f"vocab {a.vocab}, hidden {a.hidden}, {jax.default_backend()}"
    )
    for k in compiled:
        print(f"  {k:10s} {med[k] * 1e3:8.1f} ms/step   temp {mem[k] / 2**20:8.2f} MiB")
    print(
        f"SoFT / SFT: time {res['time_ratio']:.3f}x, memory {res['memory_ratio']:.3f}x "
        f"(naive all-logits SoFT: time {res['naive_time_ratio']:.3f}x, memory {res['naive_memory_ratio']:.3f}x)"
    )
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
