"""Does SortedNet training sort neurons by importance? (thesis Table C.4)

Run::

    python -m experiments.sorting_order --workdir runs/sorting_order

Synthetic 4-class data (centres [[-2,0],[0,2],[2,0],[0,-2]], std [0.5,1,0.5,1], 1000 samples,
seed 42; 80/20 train/test split), a 2 -> 10 -> 4 MLP, Adam lr 0.01, batch 16, 10 epochs,
5 seeds. Ordinary training vs SortedNet (width sub-models 1..10 sampled uniformly, stochastic
loss). Each trained network is evaluated keeping only its first k hidden neurons ("target"
order) and only its last k ("reverse" order), k = 1..10.

Expected runtime: about a minute on a 2-core CPU (seconds on an accelerator). Output: a
table of test accuracies (%), ``results.json`` (``{"ordinary": {"target": [...10],
"reverse": [...]}, "sortednet": {...}}``, index k-1, plus std and per-seed values) and
``accuracy_vs_k.png`` in the workdir. Thesis numbers (averages over k): ordinary
target 82.22 / reverse 86.67; SortedNet 89.25 / 59.38. SortedNet's target order should be
clearly above its reverse order; ordinary training shows no such ordering.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common import flags
from sortedjax.methods import objectives
from sortedjax.models.mlp import MLPConfig, SortedMLP
from sortedjax.submodel import Dim, Pool
from sortedjax.train import ArrayBatches, TrainConfig, train

CENTRES = np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, -2.0]])
STDS = np.array([0.5, 1.0, 0.5, 1.0])
METHODS = ("ordinary", "sortednet")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    workdir: str = flags.option("runs/sorting_order", help="directory for checkpoints, results.json and the figure")
    hidden: int = flags.option(10, help="hidden neurons of the 2 -> HIDDEN -> 4 MLP (the widths k = 1..HIDDEN)")
    samples: int = flags.option(1000, help="synthetic points, spread evenly over the 4 classes (at least 8)")
    data_seed: int = flags.option(42, help="seed of the synthetic data set and its train/test split")
    test_fraction: float = flags.option(0.2, help="fraction of the samples held out for testing, in (0, 1)")
    epochs: int = flags.option(10, help="training epochs per network")
    batch_size: int = flags.option(16, help="training batch size")
    learning_rate: float = flags.option(0.01, help="Adam learning rate")
    seeds: int = flags.option(
        5,
        help="number of training seeds per method: networks are trained with seeds "
        "0..SEEDS-1 and the accuracies averaged",
    )

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if self.samples < 8:
            raise ValueError(f"samples must be >= 8, got {self.samples}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1 (the number of training seeds), got {self.seeds}")


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points spread evenly over the 4 Gaussian classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = CENTRES[y] + rng.normal(size=(n, 2)) * STDS[y, None]
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), y[perm].astype(np.int32)


def order_masks(hidden: int) -> dict[str, np.ndarray]:
    """``[k-1]`` = mask keeping the first k (target) / last k (reverse) neurons."""
    k = np.arange(1, hidden + 1)[:, None]
    i = np.arange(hidden)[None, :]
    return {"target": (i < k).astype(np.float32), "reverse": (i >= hidden - k).astype(np.float32)}


def train_one(cfg: Config, method: str, seed: int, data: dict) -> SortedMLP:
    model = SortedMLP(MLPConfig(in_dim=2, hidden=cfg.hidden, out_dim=4), rngs=nnx.Rngs(seed))
    pool = Pool({"width": Dim.range(1, cfg.hidden)})

    def loss_fn(model, batch, key):
        def loss_of(sub):
            logp = jax.nn.log_softmax(model(batch["x"], sub))
            return -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], 1)), {}

        if method == "sortednet":
            return objectives.stochastic(loss_of, pool, key)
        return loss_of(None)

    batches = ArrayBatches(data, cfg.batch_size, seed=seed)
    tcfg = TrainConfig(
        workdir=os.path.join(cfg.workdir, f"{method}_seed{seed}"),
        steps=cfg.epochs * batches.steps_per_epoch,
        learning_rate=cfg.learning_rate,
        seed=seed,
        checkpoint_every=batches.steps_per_epoch,
        log_every=batches.steps_per_epoch,
        desc=f"{method} seed {seed}",
    )
    return train(model, loss_fn, batches, tcfg, run_config={"method": method}).model  # data, sizes: recorded by train


@nnx.jit
def accuracies(model: SortedMLP, x, y, masks_KxH):
    """Test accuracy (%) for each hidden mask."""
    logits = jax.vmap(lambda m: model(x, hidden_mask=m))(masks_KxH)
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) == y[None], axis=-1)


def run(cfg: Config) -> dict:
    x, y = make_data(cfg.samples, cfg.data_seed)
    n_test = round(cfg.samples * cfg.test_fraction)
    train_data = {"x": x[n_test:], "y": y[n_test:]}
    x_test, y_test = jnp.asarray(x[:n_test]), jnp.asarray(y[:n_test])
    om = {k: jnp.asarray(v) for k, v in order_masks(cfg.hidden).items()}
    per_seed = {m: {o: [] for o in om} for m in METHODS}
    for method in METHODS:
        for seed in range(cfg.seeds):
            model = train_one(cfg, method, seed, train_data)
            for order, masks_KxH in om.items():
                per_seed[method][order].append(np.asarray(accuracies(model, x_test, y_test, masks_KxH)).tolist())
    results = {"config": dataclasses.asdict(cfg)}
    for method in METHODS:
        results[method] = {}
        for order in om:
            a = np.asarray(per_seed[method][order])  # seeds x k
            results[method][order] = a.mean(0).round(2).tolist()
            results[method][f"{order}_std"] = a.std(0).round(2).tolist()
            results[method][f"{order}_per_seed"] = a.round(2).tolist()
            results[method][f"{order}_avg"] = round(float(a.mean()), 2)
    return results


def print_table(results: dict) -> None:
    hidden = len(results["ordinary"]["target"])
    head = f"{'method':<10} {'order':<8} " + " ".join(f"k={k:<4}" for k in range(1, hidden + 1)) + "   avg"
    print(head)
    print("-" * len(head))
    for method in METHODS:
        for order in ("target", "reverse"):
            row = " ".join(f"{v:6.2f}" for v in results[method][order])
            print(f"{method:<10} {order:<8} {row}  {results[method][f'{order}_avg']:6.2f}")
    print("(thesis averages: ordinary 82.22 / 86.67, SortedNet 89.25 / 59.38)")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hidden = len(results["ordinary"]["target"])
    ks = np.arange(1, hidden + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, method in zip(axes, METHODS):
        for order, style, what in (("target", "-o", "first k"), ("reverse", "--s", "last k")):
            mean, std = np.asarray(results[method][order]), np.asarray(results[method][f"{order}_std"])
            ax.plot(ks, mean, style, label=f"{order} order ({what} neurons)")
            ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
        ax.set_title(method)
        ax.set_xlabel("neurons kept (k)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    cfg = flags.parse(Config, argv, __doc__)
    os.makedirs(cfg.workdir, exist_ok=True)
    results = run(cfg)
    print_table(results)
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(cfg.workdir, "accuracy_vs_k.png"))
    print(f"wrote {cfg.workdir}/results.json and accuracy_vs_k.png")
    return results


if __name__ == "__main__":
    main()
