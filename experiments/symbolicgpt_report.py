"""experiments.symbolicgpt's output: Fig 2.2 / 2.3b / 2.3c PNGs and Table 2.1 on the console."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the config lives with the experiment, which imports this module
    from experiments.symbolicgpt import Config


def write_figures(cfg: Config, records: list[dict], results: dict, sweeps: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results)
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.6), squeeze=False)
    grid = np.linspace(-15, 5, 200)
    for ax, ts in zip(axes[0], sets):
        for m in results[ts]:
            err = np.array([r["log10_mse_n"] for r in records if r["test_set"] == ts and r["method"] == m])
            ax.plot(grid, [np.mean(err <= g) for g in grid], label=m)
        ax.set(
            title=f"{ts} (n={max(v['n'] for v in results[ts].values())})",
            xlabel="log10 MSE_N",
            ylabel="fraction of problems <= x",
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(cfg.workdir, "cumulative_error.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    width = 0.8 / len(sets)
    methods = list(dict.fromkeys(m for ts in sets for m in results[ts]))
    for i, ts in enumerate(sets):
        ax.bar(
            np.arange(len(methods)) + i * width,
            [results[ts].get(m, {}).get("median_seconds", np.nan) for m in methods],
            width,
            label=ts,
        )
    ax.set(
        xticks=np.arange(len(methods)) + width * (len(sets) - 1) / 2,
        xticklabels=methods,
        yscale="log",
        ylabel="median seconds per problem",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(cfg.workdir, "time_per_problem.png"), dpi=120)

    if sweeps.get("samples"):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        s = sweeps["samples"]
        ax.plot([r["median_seconds"] for r in s], [r["frac_below_-5"] for r in s], "o-", label="symbolicgpt")
        for r in s:
            ax.annotate(f"{r['n_samples']} samples", (r["median_seconds"], r["frac_below_-5"]), fontsize=7)
        for m, v in results[cfg.setting].items():
            if m != "symbolicgpt":
                ax.plot(v["median_seconds"], v["frac_below"]["-5"], "s", label=m)
        ax.set(
            xscale="log",
            xlabel="median seconds per problem",
            ylabel="fraction log10 MSE_N < -5",
            title=f"performance over time ({cfg.setting}, {cfg.sweep_problems} problems)",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.workdir, "performance_over_time.png"), dpi=120)

        fig, ax = plt.subplots(figsize=(5, 3.6))
        pts = sweeps["points"]
        ax.plot([r["n_points"] for r in pts], [r["median_log10_mse_n"] for r in pts], "o-")
        ax.set(xlabel="number of points given to fit", ylabel="median log10 MSE_N", title="error vs points")
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.workdir, "error_vs_points.png"), dpi=120)

    rows = [r for r in records if r["method"] == "symbolicgpt"][:12]
    if rows:
        lines = ["| problem | true | SymbolicGPT | log10 MSE_N |", "|---|---|---|---|"]
        lines += [f"| {r['problem']} | `{r['true']}` | `{r['predicted']}` | {r['log10_mse_n']:.2f} |" for r in rows]
        with open(os.path.join(cfg.workdir, "equations.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        fig, ax = plt.subplots(figsize=(11, 0.35 * len(rows) + 0.8))
        ax.axis("off")
        cell = [[r["problem"], r["true"][:45], r["predicted"][:60], f"{r['log10_mse_n']:.2f}"] for r in rows]
        tab = ax.table(cellText=cell, colLabels=["problem", "true", "predicted", "log10 MSE_N"], loc="center")
        tab.auto_set_font_size(False)
        tab.set_fontsize(7)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.workdir, "equations.png"), dpi=120)
    plt.close("all")


def print_summary(cfg: Config, results: dict) -> None:
    print(f"\n{'test set':10s} {'method':12s} {'n':>4s} {'<-10':>6s} {'<-5':>6s} {'<-2':>6s} {'median s':>9s}")
    for ts, by in results.items():
        for m, v in by.items():
            fb = v["frac_below"]
            print(
                f"{ts:10s} {m:12s} {v['n']:4d} {fb['-10']:6.2f} {fb['-5']:6.2f} {fb['-2']:6.2f} "
                f"{v['median_seconds']:9.3f}"
            )
    main = results.get(cfg.setting, {})
    if "symbolicgpt" in main and "gplearn" in main:
        s, g = main["symbolicgpt"], main["gplearn"]
        speed = g["median_seconds"] / max(s["median_seconds"], 1e-9)
        print(
            f"\ntarget ({cfg.setting}): symbolicgpt frac<-5 {s['frac_below']['-5']:.2f} vs gplearn "
            f"{g['frac_below']['-5']:.2f} (more: {s['frac_below']['-5'] > g['frac_below']['-5']}); "
            f"gplearn/symbolicgpt time {speed:.1f}x (>=10x: {speed >= 10})"
        )
    print(f"results: {os.path.join(cfg.workdir, 'results.json')}")
