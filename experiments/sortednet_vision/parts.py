"""The parts of experiments.sortednet_vision: each ``run_<part>(cfg, data, results) -> dict``."""

from __future__ import annotations

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import experiments.sortednet_vision.report as report
from experiments.sortednet_vision.config import PARTS  # noqa: E402,F401 - re-exported
from experiments.sortednet_vision.train import Evaluator, fit
from sortedjax import flops
from sortedjax.data import vision as vision_data
from sortedjax.models import mobilenet_v2 as mb
from sortedjax.models import resnet
from sortedjax.submodel import Dim, Pool

WIDTHS_42 = (4, 3, 2, 1)  # width levels of 4: 100 / 75 / 50 / 25 %


def load_data(cfg):
    return vision_data.load(cfg.data, data_dir=cfg.data_dir)


def _mbv2(cfg, data, seed=0):
    c = mb.config(
        cfg.mbv2_width_mult, num_classes=data.num_classes, norm=cfg.mbv2_norm, last=cfg.mbv2_last, width_levels=10
    )
    return mb.MobileNetV2(c, rngs=nnx.Rngs(seed))


def _grid_configs(model):
    n = model.limits["depth"]
    return [{"depth": d, "width": w} for d in range(max(1, n - 15), n + 1) for w in range(1, 11)]


def run_grid(cfg, data, results):
    model = _mbv2(cfg, data)
    n = model.limits["depth"]
    pool = Pool({"depth": Dim.range(max(1, n - 15), n), "width": Dim.range(1, 10)})
    kw = dict(steps=cfg.grid_steps, batch=cfg.batch, lr=cfg.lr, seed=0, progress=cfg.progress, augment=cfg.augmentation)
    base = fit(model, data, "plain", pool, desc="MobileNetV2 baseline (full only)", **kw)
    sorted_ = fit(model, data, "sortednet", pool, desc="MobileNetV2 SortedNet (160 sub-models)", **kw)
    full = {"depth": n, "width": 10}
    base_acc = Evaluator(base.model, data).accuracy(full)
    ev = Evaluator(sorted_.model, data)
    grid = {}
    for c in tqdm(_grid_configs(model), desc="evaluate 160 sub-models", disable=not cfg.progress, leave=False):
        grid[(c["depth"], c["width"])] = ev.accuracy(c)
    out = {
        "baseline_full_accuracy": base_acc,
        "compilations_for_all_submodels": ev.compilations(),
        "cells": [
            {
                "depth": d,
                "width": w,
                "accuracy": a,
                "recovery": 100.0 * a / base_acc,
                "mflops": flops.mflops(model, {"depth": d, "width": w}, data.image_size),
            }
            for (d, w), a in grid.items()
        ],
        "step_seconds": {"plain": base.step_seconds, "sortednet": sorted_.step_seconds},
    }
    report.grid_figures(out, cfg.workdir)
    report.print_grid(out)
    return out


def select_subset(cells, threshold: float) -> list[dict]:
    """Sub-models recovering >= ``threshold`` %, reduced to their FLOPs / accuracy Pareto front."""
    ok = sorted((c for c in cells if c["recovery"] >= threshold), key=lambda c: (c["mflops"], -c["accuracy"]))
    front, best = [], -1.0
    for c in ok:
        if c["accuracy"] > best:
            front.append(c)
            best = c["accuracy"]
    return front


def run_subset(cfg, data, results):
    if "grid" not in results:
        raise ValueError("the subset part needs the grid part in the same run (--parts grid,subset)")
    chosen = select_subset(results["grid"]["cells"], cfg.recovery_threshold)
    if not chosen:
        return {"threshold": cfg.recovery_threshold, "chosen": [], "note": "no sub-model reached the threshold"}
    model = _mbv2(cfg, data)
    pool = Pool.from_configs([{"depth": c["depth"], "width": c["width"]} for c in chosen])
    r = fit(
        model, data, "sortednet", pool, steps=cfg.grid_steps, batch=cfg.batch, lr=cfg.lr, seed=0,
        progress=cfg.progress, augment=cfg.augmentation,
    )  # fmt: skip
    ev = Evaluator(r.model, data)
    for c in chosen:
        c["retrained_accuracy"] = ev.accuracy({"depth": c["depth"], "width": c["width"]})
    out = {"threshold": cfg.recovery_threshold, "chosen": chosen}
    report.subset_figure(out, cfg.workdir)
    report.print_subset(out)
    return out


def _resnet(cfg, data, norm, seed):
    c = resnet.ResNetConfig(
        num_classes=data.num_classes,
        channels=(cfg.resnet_base, 2 * cfg.resnet_base, 4 * cfg.resnet_base),
        norm=norm,
        width_levels=4,
    )
    return resnet.PreResNet(c, rngs=nnx.Rngs(seed))


def run_table42(cfg, data, results):
    pool = Pool({"width": Dim(support=WIDTHS_42)})
    rows, times = [], {}
    for norm in cfg.table_norms:
        for method in cfg.table_methods:
            model_norm = "batch_private" if (method == "ns" and norm == "batch") else norm
            accs = {w: [] for w in WIDTHS_42}
            for seed in cfg.seeds:
                model = _resnet(cfg, data, model_norm, seed)
                r = fit(
                    model, data, method, pool, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=seed,
                    desc=f"cPreResNet20 {norm} {method} seed {seed}", progress=cfg.progress, augment=cfg.augmentation,
                )  # fmt: skip
                times.setdefault(f"{method}/{norm}", []).append(r.step_seconds)
                ev = Evaluator(r.model, data)
                for w in WIDTHS_42:
                    accs[w].append(ev.accuracy({"width": w}))
            rows.append(
                {
                    "norm": norm,
                    "method": method,
                    "bn": model_norm,
                    **{f"{25 * w}%": [float(np.mean(accs[w])), float(np.std(accs[w]))] for w in WIDTHS_42},
                }
            )
    probe = _resnet(cfg, data, "instance", 0)
    mflops = {f"{25 * w}%": flops.mflops(probe, {"width": w}, data.image_size) for w in WIDTHS_42}
    out = {"rows": rows, "mflops": mflops, "step_seconds": {k: float(np.median(v)) for k, v in times.items()}}
    report.print_table42(out)
    return out


def run_gacc(cfg, data, results):
    pool = Pool({"width": Dim(support=WIDTHS_42)})
    rows = []
    for regime in ("fixed_updates", "fixed_epochs"):
        for g in cfg.g_accs:
            steps = cfg.steps if regime == "fixed_updates" else max(1, cfg.steps // g)
            model = _resnet(cfg, data, "instance", 0)
            r = fit(
                model, data, "sortednet", pool, steps=steps, batch=cfg.batch, lr=cfg.lr, seed=0, g_acc=g,
                desc=f"g_acc={g} {regime}", progress=cfg.progress, augment=cfg.augmentation,
            )  # fmt: skip
            ev = Evaluator(r.model, data)
            accs = {f"{25 * w}%": ev.accuracy({"width": w}) for w in WIDTHS_42}
            rows.append(
                {"regime": regime, "g_acc": g, "updates": steps, **accs, "mean": float(np.mean(list(accs.values())))}
            )
    out = {"rows": rows}
    report.print_gacc(out)
    return out


def run_time(cfg, data, results):
    """Seconds per epoch = updates per epoch x median seconds per update (Table 4.2 runs, or new ones)."""
    if "table42" in results:
        sec = results["table42"]["step_seconds"]
    else:
        pool = Pool({"width": Dim(support=WIDTHS_42)})
        sec = {}
        for method in ("sortednet", "us"):
            r = fit(_resnet(cfg, data, "instance", 0), data, method, pool, steps=min(cfg.steps, 50), batch=cfg.batch,
                    lr=cfg.lr, seed=0, desc=f"time {method}", progress=cfg.progress,
                    augment=cfg.augmentation)  # fmt: skip
            sec[f"{method}/instance"] = r.step_seconds
    per_epoch = len(data.y_train) // cfg.batch
    out = {"updates_per_epoch": per_epoch, "epoch_seconds": {k: v * per_epoch for k, v in sec.items()}}
    for norm in ("instance", "batch"):
        s, u = out["epoch_seconds"].get(f"sortednet/{norm}"), out["epoch_seconds"].get(f"us/{norm}")
        if s and u:
            out[f"lcs_p_over_sortednet/{norm}"] = u / s
    report.print_time(out)
    return out


RUN = {"grid": run_grid, "subset": run_subset, "table42": run_table42, "gacc": run_gacc, "time": run_time}


if __name__ == "__main__":
    raise SystemExit(
        "experiments.sortednet_vision.parts is part of python -m experiments.sortednet_vision, not a command of its own"
    )
