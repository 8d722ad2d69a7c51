"""Figures and printed tables of experiments.sortednet_vision."""

from __future__ import annotations

import os

import numpy as np


def _grid_array(out, key):
    cells = out["cells"]
    depths = sorted({c["depth"] for c in cells})
    widths = sorted({c["width"] for c in cells})
    a = np.full((len(depths), len(widths)), np.nan)
    for c in cells:
        a[depths.index(c["depth"]), widths.index(c["width"])] = c[key]
    return depths, widths, a


def grid_figures(out, workdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, title in (("accuracy", "accuracy %"), ("recovery", "recovery % of the full baseline")):
        depths, widths, a = _grid_array(out, key)
        fig, ax = plt.subplots(figsize=(7, 7))
        im = ax.imshow(a, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(widths)), [f"{w / len(widths):.1f}" for w in widths])
        ax.set_yticks(range(len(depths)), depths)
        ax.set_xlabel("width (fraction of channels)")
        ax.set_ylabel("depth (blocks)")
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                ax.text(j, i, f"{a[i, j]:.0f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_title(f"Fig 4.2: sorted MobileNetV2, {title}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, f"fig4_2_{key}.png"), dpi=110)
        plt.close(fig)


def print_grid(out):
    depths, widths, a = _grid_array(out, "accuracy")
    _, _, r = _grid_array(out, "recovery")
    print(f"\nFig 4.2: baseline full model {out['baseline_full_accuracy']:.1f}%; "
          f"{len(out['cells'])} sub-models, {out['compilations_for_all_submodels']} compilation(s)")  # fmt: skip
    print("accuracy % (rows: depth, columns: width level 1..10)")
    print("depth " + " ".join(f"{w:>5}" for w in widths))
    for i, d in enumerate(depths):
        print(f"{d:>5} " + " ".join(f"{x:5.1f}" for x in a[i]))
    print("width-only row (full depth), recovery %: " + " ".join(f"{x:.0f}" for x in r[-1]))
    print("depth-only row (full width), recovery %: " + " ".join(f"{x:.0f}" for x in r[:, -1]))


def subset_figure(out, workdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ch = out["chosen"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [c["mflops"] for c in ch]
    ax.plot(x, [c["accuracy"] for c in ch], "o-", label="from the 160-sub-model SortedNet")
    ax.plot(x, [c["retrained_accuracy"] for c in ch], "s-", label="subset retrained")
    ax.set_xlabel("MFLOPs (multiply-accumulates)")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"Fig 4.5: sub-models with recovery >= {out['threshold']:.0f}%")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "fig4_5_subset.png"), dpi=110)
    plt.close(fig)


def print_subset(out):
    print(f"\nFig 4.5 / 4.3: best subset (recovery >= {out['threshold']}%, Pareto front), retrained")
    print(f"{'depth':>5} {'width':>5} {'MFLOPs':>8} {'acc':>6} {'retrained':>9}")
    for c in out["chosen"]:
        print(f"{c['depth']:>5} {c['width']:>5} {c['mflops']:8.2f} {c['accuracy']:6.1f} {c['retrained_accuracy']:9.1f}")


def print_table42(out):
    cols = list(out["mflops"])
    print("\nTable 4.2: cPreResNet20, accuracy % (mean +- std over seeds)")
    print(f"{'norm':>8} {'method':>10} " + " ".join(f"{c:>13}" for c in cols))
    for r in out["rows"]:
        print(f"{r['norm']:>8} {r['method']:>10} " + " ".join(f"{r[c][0]:6.1f} +-{r[c][1]:4.1f}" for c in cols))
    print(f"{'MFLOPs':>19} " + " ".join(f"{out['mflops'][c]:13.2f}" for c in cols))


def print_gacc(out):
    print("\nTable 4.5 / C.1: SortedNet cPreResNet20 (IN) with gradient accumulation")
    keys = [k for k in out["rows"][0] if k.endswith("%")]
    print(f"{'regime':>14} {'g_acc':>5} {'updates':>7} " + " ".join(f"{k:>6}" for k in keys) + "   mean")
    for r in out["rows"]:
        print(f"{r['regime']:>14} {r['g_acc']:>5} {r['updates']:>7} " + " ".join(f"{r[k]:6.1f}" for k in keys)
              + f" {r['mean']:6.1f}")  # fmt: skip


def print_time(out):
    print(f"\nC.4.3: seconds per epoch ({out['updates_per_epoch']} updates)")
    for k, v in out["epoch_seconds"].items():
        print(f"  {k:>20}: {v:.2f} s")
    for k, v in out.items():
        if k.startswith("lcs_p_over_sortednet"):
            print(f"  LCS-p (US sandwich) / SortedNet epoch time, {k.split('/')[1]}: {v:.2f}x")


if __name__ == "__main__":
    raise SystemExit(
        "experiments.sortednet_vision.report is part of python -m experiments.sortednet_vision, not a command of its own"
    )
