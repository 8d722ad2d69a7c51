"""Sources of candidate skeletons for ``SymbolicGPTRegressor``.

A candidate source is any object with ``propose(X, y, n) -> list[str]``. The SymbolicGPT
model (``symreg.model``) plugs in as one more source: it samples ``n`` skeletons for the
point cloud (X, y). Until then these non-neural sources serve tests and baselines."""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np

import symreg.expressions as expressions


@runtime_checkable
class CandidateSource(Protocol):
    def propose(self, X: np.ndarray, y: np.ndarray, n: int) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class FixedCandidates:
    """Always proposes the same skeletons (the first ``n``)."""

    skeletons: tuple[str, ...]

    def __init__(self, skeletons):
        object.__setattr__(self, "skeletons", tuple(skeletons))

    def propose(self, X, y, n):
        return list(self.skeletons[:n])


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorCandidates:
    """Random skeletons from the thesis generator with d = X.shape[1]: a non-neural prior
    (what the model would propose before it learned anything)."""

    seed: int = 0
    generator: expressions.GeneratorConfig = expressions.GeneratorConfig()

    def propose(self, X, y, n):
        d = int(np.shape(X)[1])
        cfg = dataclasses.replace(self.generator, n_vars=d)
        rng = np.random.default_rng([self.seed, d])
        out: list[str] = []
        seen = set()
        for _ in range(50 * n):
            if len(out) == n:
                break
            expr = expressions.to_sympy(expressions.sample_tree(rng, cfg))
            if not expr.free_symbols:
                continue
            sk, _ = expressions.skeletonize(expr)
            if sk not in seen and "I" not in sk and "zoo" not in sk and "nan" not in sk:
                seen.add(sk)
                out.append(sk)
        return out


@dataclasses.dataclass(frozen=True)
class CombinedCandidates:
    """Concatenates sources: each gets ``n`` proposals; duplicates removed, order kept."""

    sources: tuple

    def __init__(self, *sources):
        object.__setattr__(self, "sources", tuple(sources))

    def propose(self, X, y, n):
        out = []
        for s in self.sources:
            out += [sk for sk in s.propose(X, y, n) if sk not in out]
        return out
