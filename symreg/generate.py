"""Dataset generation: random thesis equations sampled on point clouds.

    python -m symreg.generate --vars 1 --n 100000 --seed 0 --out /tmp/sr1
    python -m symreg.generate --vars 1-9 --n 1000 --seed 1 --split test --out /tmp/sr9

Runtime: about 5-10 ms per kept instance per core (sympy dominates), so 100k one-variable
instances take about 8 minutes on 2 cores. Prints a progress bar, then the drop report.

Sampling (thesis settings). x is uniform on [-3, 3]^d for the train and valid splits and
on ([-5,-3] U [3,5])^d for the test split. Points per instance: 30 / 200 / 500 for 1 / 2 /
3 variables; in the 1..9-variable setting (``--vars 1-9``: d uniform in 1..9) and for
fixed d > 3 the count is uniform in 20..250. Candidate equations whose y has non-finite
values, |y| > ``max_abs_y``, that have no variable left after sympy simplification, or
whose sympy form is complex / not a valid skeleton are dropped and redrawn; the counts per
reason are reported and stored in the manifest. Instance i of a split depends only on
(seed, split, i), so results do not depend on the number of workers or shards.

On-disk format (directory DIR):
  DIR/manifest.json       {"format": "symreg-npz-v1", "split", "seed", "n", "config",
                           "dropped": {reason: count}, "shards": [{"file", "n"}...]}
  DIR/shard-00000.npz ... one per ``shard_size`` instances, arrays (m = instances in shard):
      n_points int32 (m,), n_vars int32 (m,),
      x float32 (sum n_points*n_vars,)  row-major X of each instance, concatenated,
      y float32 (sum n_points,),
      skeleton <U (m,), expr <U (m,)
``load_dataset(DIR)`` returns the instances as dicts {"X", "y", "skeleton", "expr", "n_vars"}.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import os

import numpy as np
import sympy

import symreg.expressions as expressions
from symreg.tokenizer import SkeletonTokenizer

SPLITS = {"train": 0, "valid": 1, "test": 2}
FORMAT = "symreg-npz-v1"
THESIS_POINTS = {1: 30, 2: 200, 3: 500}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """``n_vars``: an int d, or (lo, hi) to draw d uniformly per instance (thesis: (1, 9))."""

    n_vars: int | tuple[int, int] = 1
    n_points: int | tuple[int, int] | None = None  # None: the thesis counts above
    train_range: tuple[float, float] = (-3.0, 3.0)
    test_range: tuple[float, float] = (3.0, 5.0)  # |x| in this range, random sign
    max_abs_y: float = 1e4
    max_skeleton_len: int = 200
    max_tries: int = 1000
    generator: expressions.GeneratorConfig = expressions.GeneratorConfig()

    def __post_init__(self):
        lo, hi = self.var_range
        if not 1 <= lo <= hi <= expressions.MAX_VARS:
            raise ValueError(f"n_vars must be in 1..{expressions.MAX_VARS} (or a (lo, hi) range), got {self.n_vars}")
        if self.n_points is not None:
            p = (self.n_points, self.n_points) if isinstance(self.n_points, int) else tuple(self.n_points)
            if not 1 <= p[0] <= p[1]:
                raise ValueError(f"n_points must be a positive int or (lo, hi) range, got {self.n_points}")
        if not self.train_range[0] < self.train_range[1]:
            raise ValueError(f"train_range must be (low, high) with low < high, got {self.train_range}")
        if not 0 <= self.test_range[0] < self.test_range[1]:
            raise ValueError(f"test_range must be (low, high) with 0 <= low < high, got {self.test_range}")
        if self.max_abs_y <= 0:
            raise ValueError(f"max_abs_y must be positive, got {self.max_abs_y}")

    @property
    def var_range(self) -> tuple[int, int]:
        return (self.n_vars, self.n_vars) if isinstance(self.n_vars, int) else tuple(self.n_vars)

    def points_for(self, rng: np.random.Generator, d: int) -> int:
        if self.n_points is not None:
            p = (self.n_points, self.n_points) if isinstance(self.n_points, int) else self.n_points
            return int(rng.integers(p[0], p[1] + 1))
        if self.var_range[0] == self.var_range[1] and d in THESIS_POINTS:
            return THESIS_POINTS[d]
        return int(rng.integers(20, 251))


def sample_x(rng: np.random.Generator, n: int, d: int, split: str, cfg: DatasetConfig) -> np.ndarray:
    if split == "test":
        mag = rng.uniform(*cfg.test_range, size=(n, d))
        return mag * rng.choice(np.array([-1.0, 1.0]), size=(n, d))
    return rng.uniform(*cfg.train_range, size=(n, d))


_TOKENIZER = SkeletonTokenizer()


def _try_instance(rng: np.random.Generator, split: str, cfg: DatasetConfig) -> tuple[dict | None, str]:
    lo, hi = cfg.var_range
    d = int(rng.integers(lo, hi + 1))
    gcfg = dataclasses.replace(cfg.generator, n_vars=d)
    tree = expressions.sample_tree(rng, gcfg)
    X = sample_x(rng, cfg.points_for(rng, d), d, split, cfg)
    y = expressions.evaluate_tree(tree, X)
    if not np.all(np.isfinite(y)):
        return None, "nonfinite_y"
    if np.max(np.abs(y)) > cfg.max_abs_y:
        return None, "too_large_y"
    expr = expressions.to_sympy(tree)
    if not expr.free_symbols:
        return None, "no_variables"
    if expr.has(sympy.I, sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
        return None, "complex_or_infinite_expr"
    skeleton, _ = expressions.skeletonize(expr)
    if len(skeleton) > cfg.max_skeleton_len:
        return None, "skeleton_too_long"
    if any(ch not in _TOKENIZER.stoi for ch in skeleton):
        return None, "skeleton_not_in_vocab"
    inst = {
        "X": X.astype(np.float32),
        "y": y.astype(np.float32),
        "skeleton": skeleton,
        "expr": sympy.sstr(expr, full_prec=False).replace(" ", ""),
        "n_vars": d,
    }
    return inst, "ok"


def make_instance(index: int, seed: int, split: str, cfg: DatasetConfig, dropped: collections.Counter) -> dict:
    """Instance ``index`` of a split: redraws (counting drop reasons) until one is kept."""
    for attempt in range(cfg.max_tries):
        rng = np.random.default_rng([seed, SPLITS[split], index, attempt])
        inst, reason = _try_instance(rng, split, cfg)
        if inst is not None:
            return inst
        dropped[reason] += 1
    raise RuntimeError(f"no valid equation after {cfg.max_tries} tries for instance {index}; drops: {dict(dropped)}")


def generate_dataset(
    n: int,
    n_vars: int | tuple[int, int] = 1,
    seed: int = 0,
    split: str = "train",
    cfg: DatasetConfig | None = None,
    *,
    start: int = 0,
    report: dict | None = None,
) -> list[dict]:
    """``n`` instances in memory (``cfg`` overrides ``n_vars``). Drop counts go to ``report``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = cfg or DatasetConfig(n_vars=n_vars)
    dropped: collections.Counter = collections.Counter()
    out = [make_instance(i, seed, split, cfg, dropped) for i in range(start, start + n)]
    if report is not None:
        for k, v in dropped.items():
            report[k] = report.get(k, 0) + v
    return out


def _write_shard(args) -> tuple[str, int, dict]:
    path, start, count, seed, split, cfg = args
    report: dict = {}
    insts = generate_dataset(count, seed=seed, split=split, cfg=cfg, start=start, report=report)
    np.savez(
        path,
        n_points=np.array([len(i["y"]) for i in insts], np.int32),
        n_vars=np.array([i["n_vars"] for i in insts], np.int32),
        x=np.concatenate([i["X"].reshape(-1) for i in insts]).astype(np.float32),
        y=np.concatenate([i["y"] for i in insts]).astype(np.float32),
        skeleton=np.array([i["skeleton"] for i in insts], dtype=str),
        expr=np.array([i["expr"] for i in insts], dtype=str),
    )
    return os.path.basename(path), count, report


def write_dataset(
    out: str,
    n: int,
    seed: int,
    split: str,
    cfg: DatasetConfig,
    *,
    shard_size: int = 10_000,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Writes the sharded dataset described in the module docstring; returns the manifest."""
    from tqdm import tqdm

    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if n <= 0 or shard_size <= 0:
        raise ValueError(f"n and shard_size must be positive, got n={n}, shard_size={shard_size}")
    os.makedirs(out, exist_ok=True)
    jobs = [
        (os.path.join(out, f"shard-{k:05d}.npz"), s, min(shard_size, n - s), seed, split, cfg)
        for k, s in enumerate(range(0, n, shard_size))
    ]
    dropped: collections.Counter = collections.Counter()
    shards = {}
    bar = tqdm(total=n, desc=f"generate {split}", unit="eq", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for name, count, report in pool.imap_unordered(_write_shard, jobs):
                shards[name] = count
                dropped.update(report)
                bar.update(count)
    else:
        for job in jobs:
            name, count, report = _write_shard(job)
            shards[name] = count
            dropped.update(report)
            bar.update(count)
    bar.close()
    manifest = {
        "format": FORMAT,
        "split": split,
        "seed": seed,
        "n": n,
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "dropped": dict(sorted(dropped.items())),
        "shards": [{"file": k, "n": shards[k]} for k in sorted(shards)],
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def iter_dataset(path: str):
    """Yields the instances of a directory written by ``write_dataset``, in index order."""
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown dataset format {manifest.get('format')!r}, expected {FORMAT!r}")
    for shard in manifest["shards"]:
        with np.load(os.path.join(path, shard["file"])) as z:
            n_points, n_vars, x, y = z["n_points"], z["n_vars"], z["x"], z["y"]
            skeletons, exprs = z["skeleton"], z["expr"]
        xo = np.concatenate([[0], np.cumsum(n_points * n_vars)])
        yo = np.concatenate([[0], np.cumsum(n_points)])
        for i in range(len(n_points)):
            yield {
                "X": x[xo[i] : xo[i + 1]].reshape(n_points[i], n_vars[i]),
                "y": y[yo[i] : yo[i + 1]],
                "skeleton": str(skeletons[i]),
                "expr": str(exprs[i]),
                "n_vars": int(n_vars[i]),
            }


def load_dataset(path: str) -> list[dict]:
    return list(iter_dataset(path))


def _parse_range(text: str) -> int | tuple[int, int]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return int(lo), int(hi)
    return int(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vars", default="1", help="number of variables d, or a range like 1-9")
    p.add_argument("--n", type=int, required=True, help="instances to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=sorted(SPLITS))
    p.add_argument("--points", default=None, help="points per instance (int or lo-hi); default thesis")
    p.add_argument("--out", required=True)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    cfg = DatasetConfig(n_vars=_parse_range(a.vars), n_points=None if a.points is None else _parse_range(a.points))
    m = write_dataset(a.out, a.n, a.seed, a.split, cfg, shard_size=a.shard_size, workers=a.workers)
    total = sum(m["dropped"].values())
    print(
        f"wrote {m['n']} instances in {len(m['shards'])} shards to {a.out}; dropped {total} candidates: {m['dropped']}"
    )


if __name__ == "__main__":
    main()
