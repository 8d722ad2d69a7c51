"""Sub-model descriptors and pools, sampled inside jit.

A :class:`SubModel` is a pytree of int32 scalars, one per dimension a model supports
(``depth``, ``width``, ``heads``, ``rank``); a dimension a model does not truncate is
``None``. Because the sizes are *data* (not static), changing the sub-model never
recompiles a jitted step. A ``None`` field is pytree *structure*, though: the models fill unset
sizes with their full size at their boundary (:meth:`SubModel.filled` against ``model.limits``),
so the full model, any sub-model and any ``exit_layer`` share one compiled program; a caller
passing sub-models into its own ``jax.jit`` fills them first.

A :class:`Pool` says which sub-models are trained and how often:

* per dimension (:class:`Dim`): a support set plus a distribution (``"uniform"``,
  ``"geometric"`` with parameter ``p`` -- weight ``p (1-p)^i`` for the ``i``-th element of
  the support in the order given, renormalised -- or explicit ``weights``); dimensions are
  drawn independently;
* or as an explicit list of configurations (:meth:`Pool.from_configs`), optionally weighted.

``pool.sample(key)`` draws one sub-model per step (shared by the whole batch); the
distribution of each dimension is thesis Algorithm 2's P_Bj. ``pool.targeted(sub)`` gives
Theta-perp(sub), the truncations of ``sub`` along each dimension that stochastic summation adds.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DIMS: tuple[str, ...] = ("depth", "width", "heads", "rank")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SubModel:
    """Sizes of one origin-tied sub-model; each field an int32 scalar or None (= full)."""

    depth: jax.Array | None = None
    width: jax.Array | None = None
    heads: jax.Array | None = None
    rank: jax.Array | None = None

    @classmethod
    def of(cls, **sizes) -> SubModel:
        unknown = set(sizes) - set(DIMS)
        if unknown:
            raise ValueError(f"unknown sub-model dimension {sorted(unknown)[0]!r}; allowed: {DIMS}")
        return cls(**{k: None if v is None else jnp.asarray(v, jnp.int32) for k, v in sizes.items()})

    def as_dict(self) -> dict[str, int]:
        """Concrete sizes as Python ints (outside jit)."""
        return {k: int(v) for k in DIMS if (v := getattr(self, k)) is not None}

    def filled(self, limits: Mapping[str, int]) -> SubModel:
        """This sub-model with every dimension ``limits`` names set (an unset one at its limit: the
        full size) and every size an int32 array.

        A jitted function compiles once per pytree structure of its arguments, and a ``None`` field
        is structure, not data: ``SubModel.of(depth=3)`` and ``SubModel.of(heads=2)`` differ. Filled
        against the same limits (``model.limits``) every sub-model has one structure, so one
        compiled program serves them all; the models fill at their boundary
        (:func:`sortedjax.models.common.sizes`), a caller that passes sub-models into its own
        ``jax.jit`` fills them before the call."""
        out = {}
        for d in DIMS:
            v = getattr(self, d)
            if v is None and d in limits:
                v = limits[d]
            out[d] = None if v is None else jnp.asarray(v, jnp.int32)
        return SubModel(**out)

    def __repr__(self) -> str:
        return f"SubModel({', '.join(f'{d}={_show(v)}' for d in DIMS if (v := getattr(self, d)) is not None)})"


def _show(v) -> str:
    """A size for a repr: an int, a list of ints (stacked sub-models), or ``traced`` inside jit."""
    if isinstance(v, jax.core.Tracer):
        return f"traced {v.dtype}{list(v.shape)}"
    a = np.asarray(v)
    return str(int(a)) if a.ndim == 0 else str(a.tolist())


def check_sizes(sub: SubModel | Mapping[str, int] | None, limits: Mapping[str, int]) -> None:
    """Raise ``ValueError`` for a concrete size outside ``1..limits[dim]`` or a dimension the
    model does not have. Traced sizes pass (they are checked where they are drawn: :class:`Pool`).
    ``rank`` is checked by the DyLoRA adapters themselves (against their ``r_max``) unless the
    limits name it."""
    if sub is None:
        return
    sizes = sub.items() if isinstance(sub, Mapping) else ((d, getattr(sub, d)) for d in DIMS)
    for name, v in sizes:
        if v is None or isinstance(v, jax.core.Tracer):
            continue
        if name not in limits:
            if name == "rank":
                continue
            raise ValueError(f"this model has no sub-model dimension {name!r}; it has {tuple(limits)}")
        if np.ndim(v) == 0:
            lo, hi = int(v), int(v)
        else:
            lo, hi = int(np.min(v)), int(np.max(v))
        bad = lo if lo < 1 else hi
        if lo < 1 or hi > limits[name]:
            raise ValueError(f"{name} {bad} outside the allowed range 1..{limits[name]}")


def _probs(support: tuple[int, ...], distribution: str, p: float | None, weights) -> np.ndarray:
    n = len(support)
    if distribution == "uniform":
        w = np.ones(n)
    elif distribution == "geometric":
        if p is None or not 0.0 < p <= 1.0:
            raise ValueError(f"geometric distribution needs 0 < p <= 1, got p={p}")
        w = p * (1.0 - p) ** np.arange(n)
    elif distribution == "weights":
        w = np.asarray(weights, np.float64)
        if w.shape != (n,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum, got {weights}")
    else:
        raise ValueError(f"unknown distribution {distribution!r}; allowed: 'uniform', 'geometric', 'weights'")
    return w / w.sum()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dim:
    """One dimension of a pool: a support set and a distribution over it."""

    support: tuple[int, ...]
    distribution: str = "uniform"
    p: float | None = None
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        support = tuple(int(s) for s in self.support)
        if not support:
            raise ValueError("a pool dimension needs a non-empty support")
        if min(support) < 1:
            raise ValueError(f"support sizes must be >= 1, got {support}")
        object.__setattr__(self, "support", support)
        if self.distribution == "weights" or self.weights is not None:
            object.__setattr__(self, "distribution", "weights")
        _probs(support, self.distribution, self.p, self.weights)  # validate

    @property
    def probs(self) -> np.ndarray:
        return _probs(self.support, self.distribution, self.p, self.weights)

    def describe(self) -> str:
        """``1..4 uniform``, ``[16, 32, 64] geometric(p=0.5)``, ``[1, 2] weights(0.3, 0.7)``."""
        s = self.support
        sizes = f"{s[0]}..{s[-1]}" if len(s) > 2 and s == tuple(range(s[0], s[-1] + 1)) else str(list(s))
        if self.distribution == "geometric":
            return f"{sizes} geometric(p={self.p:g})"
        if self.distribution == "weights":
            return f"{sizes} weights({', '.join(f'{w:g}' for w in self.weights)})"
        return f"{sizes} {self.distribution}"

    def __repr__(self) -> str:
        return f"Dim({self.describe()})"

    @classmethod
    def range(cls, lo: int, hi: int, **kw) -> Dim:
        """Support ``lo..hi`` inclusive."""
        if lo > hi:
            raise ValueError(f"empty range {lo}..{hi}")
        return cls(support=tuple(range(lo, hi + 1)), **kw)


class Pool:
    """The set of sub-models to train and the distribution to draw them from."""

    def __init__(
        self,
        dims: Mapping[str, Dim] | None = None,
        *,
        configs: Sequence[Mapping[str, int]] | None = None,
        weights: Sequence[float] | None = None,
        limits: Mapping[str, int] | None = None,
    ):
        """``limits`` (e.g. ``model.limits``): the model's largest size per dimension; a pool
        reaching past it raises ``ValueError`` naming the dimension and the allowed range."""
        if (dims is None) == (configs is None):
            raise ValueError("give exactly one of dims=... or configs=...")
        if dims is not None:
            unknown = set(dims) - set(DIMS)
            if unknown:
                raise ValueError(f"unknown pool dimension {sorted(unknown)[0]!r}; allowed: {DIMS}")
            self.names = tuple(d for d in DIMS if d in dims)
            self.dims = {k: dims[k] for k in self.names}
            self._configs = None
        else:
            if not configs:
                raise ValueError("configs must be a non-empty list of {dimension: size}")
            names = set(configs[0])
            for c in configs:
                if set(c) != names:
                    raise ValueError(f"every config must name the same dimensions; got {dict(c)}")
                for k, v in c.items():
                    if k not in DIMS:
                        raise ValueError(f"unknown pool dimension {k!r}; allowed: {DIMS}")
                    if int(v) < 1:
                        raise ValueError(f"config size {k}={v} must be >= 1")
            self.names = tuple(d for d in DIMS if d in names)
            self.dims = None
            self._configs = np.asarray([[int(c[k]) for k in self.names] for c in configs], np.int32)
            self._weights = None if weights is None else tuple(float(w) for w in weights)
            self._config_probs = _probs(
                tuple(range(len(configs))), "uniform" if weights is None else "weights", None, weights
            )

        if limits is not None:
            if self.dims is not None:
                check_sizes({k: np.asarray(d.support) for k, d in self.dims.items()}, limits)
            else:
                check_sizes({k: self._configs[:, i] for i, k in enumerate(self.names)}, limits)

    def __repr__(self) -> str:
        """``Pool(depth=1..4 uniform, width=[32, 64] geometric(p=0.5))``, or for a config pool
        ``Pool(configs=[{depth=2, width=32}, {depth=4, width=64}], weights=(1, 3))`` (long lists
        elided, with their count)."""
        if self.dims is not None:
            return f"Pool({', '.join(f'{k}={d.describe()}' for k, d in self.dims.items())})"
        rows = ["{" + ", ".join(f"{k}={int(v)}" for k, v in zip(self.names, row)) + "}" for row in self._configs]
        if len(rows) > 6:
            rows = rows[:3] + [f"... {len(rows)} configs ..."] + rows[-1:]
        w = "" if self._weights is None else f", weights=({', '.join(f'{x:g}' for x in self._weights)})"
        return f"Pool(configs=[{', '.join(rows)}]{w})"

    @classmethod
    def from_configs(cls, configs, weights=None, limits=None) -> Pool:
        return cls(configs=configs, weights=weights, limits=limits)

    def max(self) -> dict[str, int]:
        """The largest size of each dimension (the full model within the pool)."""
        if self.dims is not None:
            return {k: max(d.support) for k, d in self.dims.items()}
        return {k: int(self._configs[:, i].max()) for i, k in enumerate(self.names)}

    def sample(self, key: jax.Array) -> SubModel:
        """Draw one sub-model (jit-compatible; sizes come out as traced int32 scalars)."""
        if self.dims is not None:
            keys = jax.random.split(key, len(self.names))
            out = {}
            for k, name in zip(keys, self.names):
                d = self.dims[name]
                out[name] = jax.random.choice(k, jnp.asarray(d.support, jnp.int32), p=jnp.asarray(d.probs, jnp.float32))
            return SubModel(**out)
        i = jax.random.choice(key, len(self._configs), p=jnp.asarray(self._config_probs, jnp.float32))
        row = jnp.asarray(self._configs)[i]
        return SubModel(**{name: row[j] for j, name in enumerate(self.names)})

    def configs(self) -> list[dict[str, int]]:
        """Every sub-model in the pool (Cartesian product of supports for per-dim pools)."""
        if self.dims is not None:
            combos = itertools.product(*(self.dims[n].support for n in self.names))
            return [dict(zip(self.names, c)) for c in combos]
        return [dict(zip(self.names, map(int, row))) for row in self._configs]

    def stacked(self) -> SubModel:
        """All configs as one SubModel whose fields are int32 vectors (for ``lax.map``)."""
        cfgs = self.configs()
        return SubModel(**{n: jnp.asarray([c[n] for c in cfgs], jnp.int32) for n in self.names})

    def supports(self) -> dict[str, tuple[int, ...]]:
        """Each dimension's support, ascending (a config pool: the sizes its configs use)."""
        if self.dims is not None:
            return {k: tuple(sorted(set(d.support))) for k, d in self.dims.items()}
        return {k: tuple(sorted(set(map(int, self._configs[:, i])))) for i, k in enumerate(self.names)}

    def targeted(self, sub: SubModel) -> tuple[SubModel, jax.Array]:
        """Theta-perp(sub): the sub-models ``sub`` targets (thesis Algorithm 2, stochastic summation).

        Along each dimension ``d`` of the pool: ``sub`` truncated to every size of ``d``'s support
        smaller than ``sub.d``, every other dimension kept at ``sub``'s size. ``sub`` may be traced,
        so the count varies; the answer keeps a static shape: every candidate (each support size of
        each dimension) stacked into one SubModel of int32 vectors, with a bool vector saying which
        candidates are truncations (``size < sub.d``). :meth:`targeted_configs` lists them concretely.
        """
        fields, valid = {n: [] for n in DIMS}, []
        for name, support in self.supports().items():
            for s in support:
                for n in DIMS:
                    v = jnp.asarray(s, jnp.int32) if n == name else getattr(sub, n)
                    fields[n].append(None if v is None else jnp.asarray(v, jnp.int32))
                valid.append(jnp.asarray(s, jnp.int32) < getattr(sub, name))
        stacked = {n: None if any(v is None for v in vs) else jnp.stack(vs) for n, vs in fields.items()}
        return SubModel(**stacked), jnp.stack(valid)

    def targeted_configs(self, sizes: Mapping[str, int]) -> list[dict[str, int]]:
        """The sub-models a concrete ``sizes`` targets, as dicts (see :meth:`targeted`)."""
        missing = [n for n in self.names if n not in sizes]
        if missing:
            raise ValueError(f"sizes {dict(sizes)} lack pool dimension {missing[0]!r}; the pool has {self.names}")
        out = []
        for name, support in self.supports().items():
            out += [{**{k: int(v) for k, v in sizes.items()}, name: s} for s in support if s < int(sizes[name])]
        return out
