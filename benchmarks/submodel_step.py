"""What does many-in-one training cost per step, on the ``sortedjax.nn`` layers?

In one run, on the same MLP (``SortedMLP``: ``nn.Linear`` layers, ``nn.LayerStack`` blocks) and batch:

* ``sorted_over_plain``: step time of the SortedNet step (width and depth sub-model sampled
  inside jit, iota masks, ``lax.cond`` depth gating) over a plain dense step of the full model;
* ``masked_full_over_plain``: the overhead of masks and gating alone (full sub-model);
* ``uniform_depth_over_full_depth``: mean step time when the depth is sampled uniformly in
  1..L over the time at full depth L (depth gating skips the layers past the sampled depth, so
  the ideal is (L+1)/(2L));
* the number of compilations of the sorted step while it trains many sub-models (must be 1).

With ``--model cnn`` the same on the sorted MobileNetV2 (``nn.Conv`` / norms, width levels), for
both ways a traced depth skips blocks (``depth_skip``: ``cond`` = ``nnx.cond`` per block, the
work past the depth skipped; ``select`` = every block computed, ``jnp.where`` keeps output or
shortcut) against a plain full-model step (no sub-model, static shapes): per mode
``sampled_over_full`` (depth 2..17 and width 1..10 drawn per step and passed to the one compiled
step as data), ``shallowest_over_full`` (depth 2), ``narrowest_over_full`` (width 1/10: masks keep
shapes, so width saves nothing on a CPU), ``full_over_plain`` / ``sampled_over_plain`` (the price
of the sub-model machinery) and the compilations of the sampled step (must be 1); the top-level
keys are those of the default (``select``). JSON to ``benchmarks/results/submodel_step_cnn.json``.

Timings interleave the variants round by round and take medians. The default batch (1024) is
compute-bound, as real training steps are; at small batches the fixed per-step costs (Adam over
every parameter, and the residuals that ``lax.cond`` under ``grad`` must zero-fill for skipped
layers: the forward pass alone scales with depth, the backward does not fully) weigh more, e.g.
batch 256 gave masked-full/plain 1.23x and uniform/full depth 0.80x on the same machine. Run::

    python benchmarks/submodel_step.py [--out benchmarks/results/submodel_step.json]
    python benchmarks/submodel_step.py --model cnn [--batch 128 --rounds 10]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sortedjax.methods import objectives
from sortedjax.models.mlp import MLPConfig, SortedMLP
from sortedjax.submodel import Dim, Pool, SubModel
from sortedjax.train import make_train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_timing  # noqa: E402 (benchmarks/ is on sys.path)


def plain_forward(params, x):
    """The same network without masks or gating (what ordinary training runs)."""
    h = jax.nn.relu(x @ params["inp"]["kernel"] + params["inp"]["bias"])
    blocks = params["blocks"]["layers"]["dense"]

    def block(h, wb):
        return jax.nn.relu(h @ wb[0] + wb[1]), None

    h, _ = jax.lax.scan(block, h, (blocks["kernel"], blocks["bias"]))
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def cnn_main(a):
    from sortedjax.models import cnn_common as cc
    from sortedjax.models import mobilenet_v2 as mb

    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.normal(size=(a.batch, a.image, a.image, 3)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 10, a.batch), jnp.int32),
    }
    tx = optax.adam(1e-3)

    def loss_fn(m, b, sub):  # the sub-model is data: one compiled step serves all of them
        return cc.cross_entropy(m(b["x"], sub), b["y"]), {}

    runs, steps = {}, {}
    for mode in ("cond", "select"):
        cfg = mb.config(a.width_mult, last=256, width_levels=10, norm="batch", depth_skip=mode)
        model = mb.MobileNetV2(cfg, rngs=nnx.Rngs(0))
        n = model.limits["depth"]
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        opt = tx.init(params)
        step = steps[mode] = jax.jit(make_train_step(graphdef, loss_fn, tx))
        draw = jax.jit(Pool({"depth": Dim.range(n - 15, n), "width": Dim.range(1, 10)}).sample)
        runs[f"{mode}/sampled"] = lambda i, step=step, p=params, o=opt, r=rest, draw=draw: jax.block_until_ready(
            step(p, o, (r,), batch, draw(jax.random.PRNGKey(i)))
        )
        for name, (d, w) in {"full": (n, 10), "shallowest": (n - 15, 10), "narrowest": (n, 1)}.items():
            sub = SubModel.of(depth=jnp.int32(d), width=jnp.int32(w))
            runs[f"{mode}/{name}"] = lambda i, step=step, p=params, o=opt, r=rest, sub=sub: jax.block_until_ready(
                step(p, o, (r,), batch, sub)
            )
    plain = jax.jit(make_train_step(graphdef, lambda m, b, key: loss_fn(m, b, None), tx))
    runs["plain"] = lambda i: jax.block_until_ready(plain(params, opt, (rest,), batch, jax.random.PRNGKey(i)))
    times = bench_timing.interleaved(runs, a.rounds, warmup=2)
    med = {k: float(np.median(v)) for k, v in times.items()}
    auto = mb.MobileNetV2Config.depth_skip  # the default
    per_mode = {
        m: {
            "sampled_over_full": med[f"{m}/sampled"] / med[f"{m}/full"],
            "shallowest_over_full": med[f"{m}/shallowest"] / med[f"{m}/full"],
            "narrowest_over_full": med[f"{m}/narrowest"] / med[f"{m}/full"],
            "full_over_plain": med[f"{m}/full"] / med["plain"],
            "sampled_over_plain": med[f"{m}/sampled"] / med["plain"],
            "shallowest_over_plain": med[f"{m}/shallowest"] / med["plain"],
            "sampled_step_compilations": steps[m]._cache_size(),
        }
        for m in ("cond", "select")
    }
    result = {
        **per_mode[auto],  # the default depth_skip
        "default_depth_skip": auto,
        "select_over_cond_sampled": med["select/sampled"] / med["cond/sampled"],
        "modes": per_mode,
        "distinct_submodels_seen": a.rounds + 2,
        "median_step_seconds": med,
        "config": vars(a)
        | {"blocks": n, "backend": jax.default_backend(), "devices": jax.device_count(), "machine": platform.machine()},
    }
    print(f"MobileNetV2 x{a.width_mult}, batch {a.batch} of {a.image}x{a.image}, {n} blocks, {jax.default_backend()}")
    print(
        f"{'depth_skip':10} | {'full/plain':>10} | {'sampled/plain':>13} | {'depth 2/plain':>13} | {'width 1/full':>12} | compiles"
    )
    for m, r in per_mode.items():
        print(
            f"{m:10} | {r['full_over_plain']:9.3f}x | {r['sampled_over_plain']:12.3f}x | {r['shallowest_over_plain']:12.3f}x"
            f" | {r['narrowest_over_full']:11.3f}x | {r['sampled_step_compilations']}"
        )
    print(f"select / cond, sampled sub-model step: {result['select_over_cond_sampled']:.3f}x; default: {auto}")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="the sorted MLP or the sorted MobileNetV2")
    p.add_argument("--width-mult", type=float, default=0.5, help="cnn: MobileNetV2 width multiplier")
    p.add_argument("--image", type=int, default=32, help="cnn: image side")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/submodel_step[_cnn].json)")
    a = p.parse_args(argv)
    if a.out is None:
        name = "submodel_step.json" if a.model == "mlp" else "submodel_step_cnn.json"
        a.out = os.path.join(os.path.dirname(__file__), "results", name)
    if a.model == "cnn":
        result = cnn_main(a)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {a.out}")
        return result

    cfg = MLPConfig(in_dim=64, hidden=a.hidden, out_dim=10, num_blocks=a.layers)
    model = SortedMLP(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.normal(size=(a.batch, 64)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 10, a.batch), jnp.int32),
    }

    widths = Dim(support=tuple(range(a.hidden // 8, a.hidden + 1, a.hidden // 8)))
    pools = {
        "sorted": Pool({"width": widths, "depth": Dim.range(1, a.layers)}),
        "uniform_depth": Pool({"depth": Dim.range(1, a.layers)}),
        "full_depth": Pool({"depth": Dim(support=(a.layers,))}),
        "masked_full": Pool({"width": Dim(support=(a.hidden,)), "depth": Dim(support=(a.layers,))}),
    }

    def loss_for(pool):
        def loss_fn(m, b, key):
            return objectives.stochastic(lambda sub: (xent(m(b["x"], sub), b["y"]), {}), pool, key)

        return loss_fn

    steps = {name: jax.jit(make_train_step(graphdef, loss_for(pool), tx)) for name, pool in pools.items()}

    plain_params = nnx.to_pure_dict(params)

    @jax.jit
    def plain_step(pp, opt, b, key):
        loss, g = jax.value_and_grad(lambda q: xent(plain_forward(q, b["x"]), b["y"]))(pp)
        upd, opt = tx.update(g, opt, pp)
        return optax.apply_updates(pp, upd), opt, {"loss": loss}

    states = {name: (params, tx.init(params)) for name in steps}
    plain_state = (plain_params, tx.init(plain_params))

    def run(name, i):
        key = jax.random.PRNGKey(i)
        if name == "plain":
            return plain_step(*plain_state, batch, key)
        return steps[name](*states[name], (rest,), batch, key)

    names = ["plain", *steps]
    times = bench_timing.interleaved({n: functools.partial(run, n) for n in names}, a.rounds, warmup=2)
    med = {n: float(np.median(times[n])) for n in names}
    mean = {n: float(np.mean(times[n])) for n in names}
    result = {
        "sorted_over_plain": med["sorted"] / med["plain"],
        "masked_full_over_plain": med["masked_full"] / med["plain"],
        "uniform_depth_over_full_depth": mean["uniform_depth"] / mean["full_depth"],
        "ideal_uniform_depth_over_full_depth": (a.layers + 1) / (2 * a.layers),
        "sorted_step_compilations": steps["sorted"]._cache_size(),
        "distinct_submodels_seen": a.rounds + 2,
        "median_step_seconds": med,
        "mean_step_seconds": mean,
        "config": vars(a)
        | {"backend": jax.default_backend(), "devices": jax.device_count(), "machine": platform.machine()},
    }
    print(f"sorted step / plain step (median):       {result['sorted_over_plain']:.3f}x")
    print(f"masked full model / plain step (median): {result['masked_full_over_plain']:.3f}x (mask + gating overhead)")
    print(
        f"uniform depth / full depth (mean):       {result['uniform_depth_over_full_depth']:.3f}x "
        f"(ideal {result['ideal_uniform_depth_over_full_depth']:.3f}x)"
    )
    print(f"compilations of the sorted step:         {result['sorted_step_compilations']}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
