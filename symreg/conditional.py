"""C-SymbolicGPT: SymbolicGPT whose decoder is conditioned on a node-control vector
(thesis appendix A, conditional generative models with node-control layers, Fig. A.3).

What is implemented (the issue names eqs. A.9-A.13 but does not reproduce them, so this is
the mechanism it describes, written out here exactly):

* **Control vector** ``c`` in {-1, 0, +1}^F, one entry per feature of
  :data:`CONTROL_FEATURES`: the operator nodes ``sin cos exp log sqrt asin pow div``, the
  presence of a constant ``C`` and of each variable ``x1..x9``. ``+1``: the equation must
  contain that node, ``-1``: it must not, ``0``: unknown / no constraint.
  :func:`control_vector` reads it off a skeleton.
* **Node-control layers.** With ``u = c`` (F values) the decoder input becomes
  ``h_0 = W_t[tok] + W_p[t] + z + U_in u`` and after block ``l`` (output ``h_l``)
  ``h_l <- h_l * (1 + G_l u) + B_l u``, i.e. a FiLM modulation per layer whose scale and shift
  are linear, bias-free functions of the control (``U_in``: F -> E, ``G_l, B_l``: F -> E for
  each of the L blocks; one :class:`sortedjax.nn.Linear` F -> L x 2 x E). The decoder is the
  base model's own :meth:`SymbolicGPT.decode`: ``U_in u`` is its ``input_bias``, the FiLM
  (:func:`film_hook`) its ``hook`` (run by :class:`sortedjax.nn.LayerStack` after each block).
* **Guarantee**: because every control map is linear without bias, the neutral control
  ``c = 0`` leaves the decoder exactly the unconditional SymbolicGPT with the same weights
  (``CSymbolicGPT.base``), whatever the control weights; a non-zero control changes the logits.
* **Training** (:func:`make_conditional_loss_fn`): the base loss
  (:func:`symreg.train.make_loss_fn`) with the true control of each target skeleton as an extra
  input, every entry hidden (set to 0) with probability ``p_hide`` and the whole vector hidden
  with probability ``p_neutral``: one model serves full, partial and no conditioning.
  :func:`train_conditional` is :func:`symreg.train.train_symbolicgpt` with that loss.

    model = CSymbolicGPT(ModelConfig(...), rngs=nnx.Rngs(0))
    logits = model(points, mask, tokens, control)          # control: B x F
    src = ControlledSource(NeuralCandidateSource(model, tok), control_vector("C*sin(C*x1)"))
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sortedjax import nn
from symreg.model import ModelConfig, SymbolicGPT, fan_in_init
from symreg.train import make_loss_fn, train_symbolicgpt

FUNCTIONS = ("sin", "cos", "exp", "log", "sqrt", "asin")
CONTROL_FEATURES = FUNCTIONS + ("pow", "div", "const") + tuple(f"x{i}" for i in range(1, 10))
_PATTERNS = (
    {f: re.compile(rf"(?<![a-z]){f}\(") for f in FUNCTIONS}
    | {
        "pow": re.compile(r"\*\*|\^"),
        "div": re.compile(r"/"),
        "const": re.compile(r"C"),
    }
    | {f"x{i}": re.compile(rf"x{i}(?!\d)") for i in range(1, 10)}
)


def control_vector(skeleton: str) -> np.ndarray:
    """+1 / -1 per :data:`CONTROL_FEATURES` entry: whether the skeleton has that node."""
    if not isinstance(skeleton, str) or not skeleton:
        raise ValueError(f"skeleton must be a non-empty string, got {skeleton!r}")
    return np.array([1.0 if _PATTERNS[f].search(skeleton) else -1.0 for f in CONTROL_FEATURES], np.float32)


def neutral_control(batch: int = 1) -> np.ndarray:
    """All-unknown controls (``0``): the conditional model behaves as the unconditional one."""
    return np.zeros((batch, len(CONTROL_FEATURES)), np.float32)


class NodeControl(nnx.Module):
    """The control maps: ``U_in`` (F -> E) and ``[G_l, B_l]`` (F -> L x 2 x E), bias-free."""

    def __init__(self, cfg: ModelConfig, n_features: int = len(CONTROL_FEATURES), *, rngs: nnx.Rngs):
        e = cfg.embed
        self.n_features = n_features
        self.inp = nn.Linear(n_features, e, names=(None, "embed"), use_bias=False, kernel_init=fan_in_init(), rngs=rngs)
        self.film = nn.Linear(
            n_features,
            (cfg.n_layers, 2, e),
            names=(None, "layers", None, "embed"),
            use_bias=False,
            kernel_init=fan_in_init(0.1),
            rngs=rngs,
        )

    def __call__(self, control_BxF: jax.Array):
        c = control_BxF.astype(jnp.float32)
        if c.ndim != 2 or c.shape[1] != self.n_features:
            raise ValueError(f"control must be (batch, {self.n_features}), got shape {tuple(c.shape)}")
        return self.inp(c), self.film(c)  # B x E, B x L x 2 x E


def film_hook(i, h_in, h_out, film_BxLx2xE):
    """The :class:`sortedjax.nn.LayerStack` hook of the node-control layers: after block ``i``,
    ``h <- h * (1 + G_i u) + B_i u`` (``film_BxLx2xE`` from :class:`NodeControl`, passed through)."""
    del h_in
    gb_Bx2xE = jax.lax.dynamic_index_in_dim(film_BxLx2xE, i, axis=1, keepdims=False)
    return h_out * (1.0 + gb_Bx2xE[:, None, 0]) + gb_Bx2xE[:, None, 1], film_BxLx2xE


class CSymbolicGPT(nnx.Module):
    """SymbolicGPT (``self.base``) plus node-control layers (``self.control``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.base = SymbolicGPT(cfg, rngs=rngs)
        self.control = NodeControl(cfg, rngs=rngs)

    def encode(self, points_BxNxF, mask_BxN):
        return self.base.encode(points_BxNxF, mask_BxN)

    def decode(self, tokens_BxT, z_BxE, control_BxF=None, *, start=0, cache: nn.KVCache | None = None):
        """:meth:`SymbolicGPT.decode` of ``self.base``, conditioned on ``control_BxF`` (None: neutral):
        ``U_in c`` as its ``input_bias``, the per-block FiLM as its ``hook``."""
        if control_BxF is None:
            control_BxF = jnp.zeros((tokens_BxT.shape[0], self.control.n_features), jnp.float32)
        cin_BxE, film_BxLx2xE = self.control(control_BxF)
        return self.base.decode(
            tokens_BxT, z_BxE, start=start, cache=cache, input_bias=cin_BxE, hook=film_hook, hook_state=film_BxLx2xE
        )

    def __call__(self, points_BxNxF, mask_BxN, tokens_BxT, control_BxF=None):
        logits, _ = self.decode(tokens_BxT, self.encode(points_BxNxF, mask_BxN), control_BxF)
        return logits


def hide_controls(control_BxF: jax.Array, key: jax.Array, p_hide: float, p_neutral: float) -> jax.Array:
    """Each entry set to 0 with probability ``p_hide``, each whole row with ``p_neutral``."""
    k1, k2 = jax.random.split(key)
    keep = jax.random.bernoulli(k1, 1.0 - p_hide, control_BxF.shape)
    row = jax.random.bernoulli(k2, 1.0 - p_neutral, control_BxF.shape[:1] + (1,))
    return control_BxF * (keep & row).astype(control_BxF.dtype)


def make_conditional_loss_fn(pad_id: int = 0, p_hide: float = 0.5, p_neutral: float = 0.25):
    """The next-token loss of :func:`symreg.train.make_loss_fn`, with the (partly hidden) true control."""
    for name, p in (("p_hide", p_hide), ("p_neutral", p_neutral)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    return make_loss_fn(pad_id, lambda batch, key: (hide_controls(batch["control"], key, p_hide, p_neutral),))


def add_controls(arrays: dict, skeletons: list[str]) -> dict:
    """``arrays`` (from :func:`symreg.train.make_arrays`) plus ``"control"`` (B x F)."""
    if len(skeletons) != len(arrays["tokens"]):
        raise ValueError(f"{len(skeletons)} skeletons for {len(arrays['tokens'])} token rows")
    return {**arrays, "control": np.stack([control_vector(s) for s in skeletons])}


def train_conditional(
    model_cfg: ModelConfig, arrays: dict, train_cfg, *, batch_size: int, p_hide=0.5, p_neutral=0.25, restart=False
):
    """Train a fresh C-SymbolicGPT on ``arrays`` (with ``"control"``) with
    :func:`symreg.train.train_symbolicgpt`; returns the TrainResult."""

    if "control" not in arrays:
        raise ValueError("arrays need a 'control' entry; build them with add_controls(arrays, skeletons)")
    return train_symbolicgpt(
        model_cfg,
        arrays,
        train_cfg,
        batch_size=batch_size,
        restart=restart,
        model_type=CSymbolicGPT,
        loss_fn=make_conditional_loss_fn(model_cfg.pad_id, p_hide, p_neutral),
        run_extra={"conditional": {"p_hide": p_hide, "p_neutral": p_neutral, "features": list(CONTROL_FEATURES)}},
    )


class ControlledSource:
    """A candidate source that samples a :class:`CSymbolicGPT` under a fixed ``control``
    (``None``: neutral); wraps a :class:`symreg.decoding.NeuralCandidateSource`."""

    def __init__(self, source, control=None):
        self.source = source
        self.control = None if control is None else np.asarray(control, np.float32).reshape(1, -1)

    def reseed(self, seed: int) -> None:
        if hasattr(self.source, "reseed"):
            self.source.reseed(seed)

    def propose(self, X, y, n):
        ctrl = neutral_control(1) if self.control is None else self.control
        return self.source.propose_many([(X, y)], n, controls=ctrl)[0]
