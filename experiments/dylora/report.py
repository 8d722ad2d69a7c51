"""Tables and figures of ``experiments.dylora``: Table 3.2 (score per trained model and evaluation
rank), the search-free comparison (Tables 3.3 / 3.4), Table 3.5 (frozen vs unfrozen), Table 3.7
(p_B and objective ablations), ``results.json`` and the score-vs-rank PNGs."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

LABELS = {
    "dylora": "DyLoRA",
    "dylora_frozen": "DyLoRA frozen",
    "dylora_geometric": "DyLoRA geometric",
    "dylora_summation": "DyLoRA summation",
}


def label(name: str) -> str:
    return f"LoRA r={name[6:]}" if name.startswith("lora_r") else LABELS.get(name, name)


def aggregate(runs: dict, key: str = "scores") -> dict:
    """``{name: {"mean": {rank: x}, "std": {rank: x}, "seconds": mean wall s}}`` over seeds."""
    out = {}
    for name, by_seed in runs.items():
        rows = list(by_seed.values())
        ranks = sorted({int(b) for r in rows for b in r[key]})
        vals = {b: [r[key][str(b)] for r in rows] for b in ranks}
        out[name] = {
            "mean": {b: float(np.mean(v)) for b, v in vals.items()},
            "std": {b: float(np.std(v)) for b, v in vals.items()},
            "seconds": float(np.mean([r["seconds"] for r in rows])),
        }
    return out


def table(agg: dict, names, r_max: int, title: str) -> str:
    """Rows = trained models, columns = evaluation ranks r_max..1 (``-``: rank above the model's)."""
    cols = list(range(r_max, 0, -1))
    lines = [title, f"{'model':<18}|" + "|".join(f"{b:>7}" for b in cols) + "|   best"]
    lines.append("-" * len(lines[1]))
    for n in names:
        m = agg[n]["mean"]
        cells = [f"{m[b]:7.1f}" if b in m else f"{'-':>7}" for b in cols]
        lines.append(f"{label(n):<18}|" + "|".join(cells) + f"|{max(m.values()):7.1f}")
    return "\n".join(lines)


def search_free(agg: dict, lora_names: list[str]) -> dict:
    """Tables 3.3 / 3.4: one DyLoRA run covers every rank; finding the best rank with LoRA costs the
    whole grid. ``lora_best``: the grid's best score (each LoRA at its own rank); ``dylora_rank``:
    the smallest rank at which DyLoRA reaches it (None if it never does); times are wall seconds."""
    own = {n: agg[n]["mean"][int(n[6:])] for n in lora_names}
    best = max(own, key=own.get)
    grid_s = sum(agg[n]["seconds"] for n in lora_names)
    dy = agg["dylora"]["mean"]
    reach = [b for b in sorted(dy) if dy[b] >= own[best]]
    return {
        "lora_grid_seconds": grid_s,
        "dylora_seconds": agg["dylora"]["seconds"],
        "speedup": grid_s / agg["dylora"]["seconds"],
        "lora_best": own[best],
        "lora_best_rank": int(best[6:]),
        "dylora_best": max(dy.values()),
        "dylora_best_rank": max(dy, key=dy.get),
        "dylora_rank_reaching_lora_best": reach[0] if reach else None,
    }


def search_free_text(s: dict, metric: str) -> str:
    reach = s["dylora_rank_reaching_lora_best"]
    return (
        f"Search-free (Tables 3.3/3.4): LoRA grid {s['lora_grid_seconds']:.0f}s (best {metric} {s['lora_best']:.1f} "
        f"at r={s['lora_best_rank']}) vs one DyLoRA run {s['dylora_seconds']:.0f}s (best {s['dylora_best']:.1f} at "
        f"r={s['dylora_best_rank']}; reaches the grid's best {'at r=' + str(reach) if reach else 'at no rank'}): "
        f"{s['speedup']:.2f}x less training time"
    )


def figures(workdir: str, agg: dict, lora_names: list[str], metric: str, suffix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    groups = [("score_vs_rank", [*lora_names, "dylora"])]
    abl = [n for n in ("dylora", "dylora_frozen", "dylora_geometric", "dylora_summation") if n in agg]
    if len(abl) > 1:
        groups.append(("ablations", abl))
    for fname, names in groups:
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in names:
            m = agg[n]["mean"]
            ax.plot(sorted(m), [m[b] for b in sorted(m)], marker="o", label=label(n), lw=2.5 if n == "dylora" else 1.2)
        ax.set_xlabel("evaluation rank b")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(workdir, f"{fname}{suffix}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def report(cfg, metric: str, runs: dict, key: str = "scores", suffix: str = "") -> tuple[dict, str]:
    """``(results for one metric, printed text)``."""
    agg = aggregate(runs, key)
    lora_names = sorted((n for n in agg if n.startswith("lora_r")), key=lambda n: int(n[6:]))
    r_max = max(cfg.ranks)
    n_seeds = len(cfg.seeds)
    head = f"({cfg.task}, {metric}, mean over {n_seeds} seed(s)): rows = trained model, columns = evaluation rank"
    text = [table(agg, [*lora_names, "dylora"], r_max, f"Table 3.2 {head}")]
    sf = search_free(agg, lora_names)
    text.append(search_free_text(sf, metric))
    out = {"per_rank": {n: a for n, a in agg.items()}, "search_free": sf}
    if "dylora_frozen" in agg:
        text.append(table(agg, ["dylora", "dylora_frozen"], r_max, f"Table 3.5 frozen vs unfrozen {head}"))
    abl = [n for n in ("dylora", "dylora_geometric", "dylora_summation") if n in agg]
    if len(abl) > 1:
        text.append(
            table(agg, abl, r_max, f"Table 3.7 ablations (p_B uniform vs geometric p={cfg.p}; summation) {head}")
        )
    out["figures"] = figures(cfg.workdir, agg, lora_names, metric, suffix)
    return out, "\n\n".join(text)


def finish(cfg, metric: str, model: str, runs: dict, extra: dict | None = None) -> dict:
    """Print the tables, write ``results.json`` and the figures; returns the results."""

    results = {"task": cfg.task, "model": model, "metric": metric, "config": dataclasses.asdict(cfg), "runs": runs}
    res, text = report(cfg, metric, runs)
    results.update(res)
    results.update(extra or {})
    print("\n" + text, flush=True)
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    raise SystemExit("experiments.dylora.report is part of python -m experiments.dylora, not a command of its own")
