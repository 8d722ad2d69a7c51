"""Jitted, batched SymbolicGPT decoding with a KV cache, and the neural candidate source.

:func:`sample_skeletons` encodes B point sets once, repeats each code ``n_samples`` times and
decodes all ``B * n_samples`` sequences together, one token per step, through a KV cache
(``lax.while_loop``, stopping as soon as every sequence has emitted the end token). Sampling
is ``"top_k"`` (thesis: k=40), ``"top_p"`` (nucleus) or ``"greedy"``, all drawn by the shared
sampler :func:`sortedjax.sampling.sample`. One compiled program
serves every call with the same shapes; point counts are padded to powers of two so that
problems of different sizes share programs.

:class:`NeuralCandidateSource` plugs a trained model into ``SymbolicGPTRegressor``: its
``propose(X, y, n)`` returns up to ``n`` distinct parsed skeletons for the regressor to fit.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sortedjax.sampling import sample
from symreg.checkpoint import load_pretrained
from symreg.model import SymbolicGPT, init_cache, make_points
from symreg.tokenizer import SkeletonTokenizer

METHODS = ("top_k", "top_p", "greedy")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    method: str = "top_k"
    top_k: int = 40
    top_p: float = 0.9
    temperature: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"SamplingConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.top_k < 1:
            raise ValueError(f"SamplingConfig.top_k must be >= 1, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"SamplingConfig.temperature must be > 0, got {self.temperature}")

    def sample_args(self) -> dict:
        """The ``temperature`` / ``top_k`` / ``top_p`` arguments of :func:`sortedjax.sampling.sample`."""
        if self.method == "greedy":
            return {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
        if self.method == "top_k":
            return {"temperature": self.temperature, "top_k": self.top_k, "top_p": 1.0}
        return {"temperature": self.temperature, "top_k": 0, "top_p": self.top_p}


@functools.partial(jax.jit, static_argnames=("graphdef", "n_samples", "sampling", "start_id", "end_id", "pad_id"))
def _generate(graphdef, state, points, mask, key, control, *, n_samples, sampling, start_id, end_id, pad_id):
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    z_BxE = model.encode(points, mask)
    z_SxE = jnp.repeat(z_BxE, n_samples, axis=0)  # S = B * n_samples, problem-major
    extra = () if control is None else (jnp.repeat(control, n_samples, axis=0),)  # C-SymbolicGPT
    s = z_SxE.shape[0]
    tokens = jnp.full((s, cfg.max_len), pad_id, jnp.int32).at[:, 0].set(start_id)
    banned = jnp.zeros((cfg.vocab_size,), bool).at[jnp.array([pad_id, start_id])].set(True)

    def cond(carry):
        t, _, _, done, _ = carry
        return (t < cfg.max_len - 1) & ~jnp.all(done)

    def body(carry):
        t, tokens, cache, done, key = carry
        current_Sx1 = jax.lax.dynamic_slice_in_dim(tokens, t, 1, axis=1)
        logits, cache = model.decode(current_Sx1, z_SxE, *extra, start=t, cache=cache)
        key, sub = jax.random.split(key)
        nxt = sample(jnp.where(banned, -jnp.inf, logits[:, 0]), sub, **sampling.sample_args())
        nxt = jnp.where(done, pad_id, nxt)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], t + 1, axis=1)
        return t + 1, tokens, cache, done | (nxt == end_id), key

    carry = (jnp.int32(0), tokens, init_cache(cfg, s, z_SxE.dtype), jnp.zeros((s,), bool), key)
    _, tokens, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens.reshape(-1, n_samples, cfg.max_len)


def sample_skeletons(
    model: SymbolicGPT,
    points_BxNxF,
    mask_BxN,
    key: jax.Array,
    *,
    n_samples: int,
    sampling: SamplingConfig = SamplingConfig(),
    start_id: int = 1,
    end_id: int = 2,
    pad_id: int = 0,
    control_BxF=None,
) -> np.ndarray:
    """Token ids ``B x n_samples x max_len`` (start token first, pad after the end token).

    ``control_BxF``: the node controls of a :class:`symreg.conditional.CSymbolicGPT` (one row
    per problem); None for the unconditional model."""
    graphdef, state = nnx.split(model)
    if control_BxF is not None:
        control_BxF = jnp.asarray(control_BxF, jnp.float32)
        if control_BxF.ndim != 2 or control_BxF.shape[0] != np.shape(points_BxNxF)[0]:
            raise ValueError(f"control must be (batch={np.shape(points_BxNxF)[0]}, F), got {control_BxF.shape}")
    out = _generate(
        graphdef,
        state,
        jnp.asarray(points_BxNxF),
        jnp.asarray(mask_BxN),
        key,
        control_BxF,
        n_samples=n_samples,
        sampling=sampling,
        start_id=start_id,
        end_id=end_id,
        pad_id=pad_id,
    )
    return np.asarray(out)


def _bucket(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (int(n) - 1).bit_length())


class NeuralCandidateSource:
    """Candidate skeletons from a trained SymbolicGPT (the regressor's ``candidate_source``).

    ``propose(X, y, n)`` draws ``n`` samples for one problem (points beyond ``max_points`` are
    subsampled at random) and returns the distinct ones that parse, in order of first draw.
    """

    def __init__(
        self,
        model,
        tokenizer,
        n_samples: int = 50,
        sampling: SamplingConfig = SamplingConfig(),
        max_points: int = 512,
        seed: int = 0,
        check_valid: bool = True,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.n_samples, self.sampling, self.max_points = n_samples, sampling, max_points
        self.check_valid = check_valid
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the sampling and point-subsampling streams: the same seed, the same samples
        (``SymbolicGPTRegressor.fit`` calls it so that refitting the same data is deterministic)."""
        self._rng = np.random.default_rng(seed)
        self._key = jax.random.key(seed)

    @classmethod
    def from_pretrained(cls, workdir: str, n_samples: int | None = None, seed: int = 0, **kwargs):
        """The source for the model saved in ``workdir`` (or ``workdir/model``) by training,
        with the sampling settings and sample count stored next to it unless overridden."""

        path = os.path.join(workdir, "model")
        path = path if os.path.exists(os.path.join(path, "config.json")) else workdir
        model, config = load_pretrained(path)
        sampling = kwargs.pop("sampling", None) or SamplingConfig(**config.get("sampling", {}))
        n = n_samples or config.get("n_samples", 50)
        return cls(model, SkeletonTokenizer(), n_samples=n, sampling=sampling, seed=seed, **kwargs)

    def propose_many(self, problems, n: int | None = None, controls=None) -> list[list[str]]:
        """Skeletons for several ``(X, y)`` problems, decoded in one batch (``controls``: one
        node-control row per problem, for a C-SymbolicGPT)."""
        n = n or self.n_samples
        insts = []
        for X, y in problems:
            X = np.asarray(X, np.float32).reshape(len(y), -1)
            y = np.asarray(y, np.float32).reshape(-1)
            if len(y) > self.max_points:
                idx = self._rng.choice(len(y), self.max_points, replace=False)
                X, y = X[idx], y[idx]
            insts.append({"X": X, "y": y})
        n_pts = _bucket(max(len(inst["y"]) for inst in insts))
        points, mask = make_points(insts, self.model.cfg.max_vars, n_points=n_pts)
        self._key, key = jax.random.split(self._key)
        tok = self.tokenizer
        ids = sample_skeletons(
            self.model,
            points,
            mask,
            key,
            n_samples=n,
            sampling=self.sampling,
            start_id=tok.start_id,
            end_id=tok.end_id,
            pad_id=tok.pad_id,
            control_BxF=controls,
        )
        out = []
        for rows in ids:
            seen: dict[str, None] = {}
            for row in rows:
                s = tok.decode(row)
                if s and s not in seen and (not self.check_valid or tok.is_valid(s)):
                    seen[s] = None
            out.append(list(seen))
        return out

    def propose(self, X, y, n: int | None = None) -> list[str]:
        return self.propose_many([(X, y)], n)[0]
