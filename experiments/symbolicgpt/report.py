"""experiments.symbolicgpt's output: Fig 2.2 / 2.3b / 2.3c / A.3 PNGs and Table 2.1 on the console.

Log bases are stated on every axis: ``log10 MSE_N`` for our plots and tables, ``ln MSE_N``
(natural log, as the authors' plotting code) for the thesis-style ``*_ln.png`` figures."""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.symbolicgpt.config import Config


def write_figures(cfg: Config, records: list[dict], results: dict, sweeps: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results)
    for key, name in (("log10_mse_n", "cumulative_error.png"), ("ln_mse_n", "cumulative_error_ln.png")):
        fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.6), squeeze=False)
        for ax, ts in zip(axes[0], sets):
            _cumulative(ax, [r for r in records if r["test_set"] == ts], key, title=ts)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.workdir, name), dpi=120)
    c_methods = [m for m in ("symbolicgpt", "c-symbolicgpt-neutral", "c-symbolicgpt") if m in results[sets[0]]]
    if "c-symbolicgpt" in c_methods:  # Fig. A.3: SymbolicGPT vs C-SymbolicGPT
        fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.6), squeeze=False)
        for ax, ts in zip(axes[0], sets):
            rows = [r for r in records if r["test_set"] == ts and r["method"] in c_methods]
            _cumulative(ax, rows, "log10_mse_n", title=f"{ts}: C-SymbolicGPT")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.workdir, "conditional.png"), dpi=120)

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
        for m, v in results[cfg.current].items():
            if m != "symbolicgpt":
                ax.plot(v["median_seconds"], v["frac_below"]["-5"], "s", label=m)
        ax.set(
            xscale="log",
            xlabel="median seconds per problem",
            ylabel="fraction log10 MSE_N < -5",
            title=f"performance over time ({cfg.current}, {cfg.sweep_problems} problems)",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.workdir, "performance_over_time.png"), dpi=120)

        fig, ax = plt.subplots(figsize=(5, 3.6))
        pts = sweeps["points"]
        ax.plot([r["n_points"] for r in pts], [r["median_log10_mse_n"] for r in pts], "o-")
        ax.set(
            xscale="log",
            xlabel="number of points given to fit",
            ylabel="median log10 MSE_N",
            title=f"error vs points ({cfg.current})",
        )
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


def _cumulative(ax, records: list[dict], key: str, title: str) -> None:
    """Fraction of problems with error <= x, one line per method (``key``: log10_mse_n / ln_mse_n)."""
    base = "ln MSE_N (natural log)" if key == "ln_mse_n" else "log10 MSE_N"
    lo = -35 if key == "ln_mse_n" else -15
    grid = np.linspace(lo, 5 if key == "log10_mse_n" else 12, 200)
    methods = list(dict.fromkeys(r["method"] for r in records))
    n = 0
    for m in methods:
        err = np.array([r[key] if key in r else r["log10_mse_n"] * np.log(10) for r in records if r["method"] == m])
        n = max(n, len(err))
        ax.plot(grid, [np.mean(err <= g) for g in grid], label=m)
    ax.set(title=f"{title} (n={n})", xlabel=base, ylabel="fraction of problems <= x", ylim=(0, 1))
    ax.grid(alpha=0.3)


PANELS = ("1var", "2var", "3var", "general")  # Fig. 2.2 (a)-(d)


def figure_2_2(root: str) -> str:
    """Fig. 2.2: the cumulative log10 MSE_N of every method on the generated test set of each
    setting (four panels; a setting not run in ``root`` says how to run it); and the same in
    natural log (``fig2_2_ln.png``). Returns the log10 figure's path."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, name in (("log10_mse_n", "fig2_2.png"), ("ln_mse_n", "fig2_2_ln.png")):
        fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
        for ax, s in zip(axes, PANELS):
            path = os.path.join(root, s, "records.jsonl")
            if not os.path.exists(path):
                ax.axis("off")
                ax.text(0.5, 0.5, f"{s}: not run here\n(--setting {s})", ha="center", va="center")
                continue
            with open(path) as f:
                rows = [r for r in map(json.loads, f) if r["test_set"] == s]
            _cumulative(ax, rows, key, title=s)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(root, name), dpi=110)
        plt.close(fig)
    return os.path.join(root, "fig2_2.png")


def print_summary(cfg: Config, results: dict) -> None:
    print(
        f"\n{'test set':10s} {'method':22s} {'n':>4s} {'<-10':>6s} {'<-5':>6s} {'<-2':>6s} "
        f"{'ln<-5':>6s} {'median s':>9s}   (fractions under log10 MSE_N; ln<-5: natural log)"
    )
    for ts, by in results.items():
        for m, v in by.items():
            fb = v["frac_below"]
            print(
                f"{ts:10s} {m:22s} {v['n']:4d} {fb['-10']:6.2f} {fb['-5']:6.2f} {fb['-2']:6.2f} "
                f"{v['frac_below_ln']['-5']:6.2f} {v['median_seconds']:9.3f}"
            )
    main = results.get(cfg.current, {})
    if "symbolicgpt" in main and "gplearn" in main:
        s, g = main["symbolicgpt"], main["gplearn"]
        speed = g["median_seconds"] / max(s["median_seconds"], 1e-9)
        print(
            f"\ntarget ({cfg.current}): symbolicgpt frac<-5 {s['frac_below']['-5']:.2f} vs gplearn "
            f"{g['frac_below']['-5']:.2f} (more: {s['frac_below']['-5'] > g['frac_below']['-5']}); "
            f"gplearn/symbolicgpt time {speed:.1f}x (>=10x: {speed >= 10})"
        )
    if "symbolicgpt" in main and "operon" in main:
        s, o = main["symbolicgpt"], main["operon"]
        ratio = o["median_seconds"] / max(s["median_seconds"], 1e-9)
        print(
            f"bar ({cfg.current}): symbolicgpt frac<-5 {s['frac_below']['-5']:.2f} vs operon "
            f"{o['frac_below']['-5']:.2f} (at least: {s['frac_below']['-5'] >= o['frac_below']['-5']}); "
            f"operon/symbolicgpt time {ratio:.1f}x (>=10x: {ratio >= 10})"
        )
    print(f"results: {os.path.join(cfg.workdir, 'results.json')}")


if __name__ == "__main__":
    raise SystemExit(
        "experiments.symbolicgpt.report is part of python -m experiments.symbolicgpt, not a command of its own"
    )
