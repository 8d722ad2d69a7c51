"""BERT / RoBERTa sequence classifiers (``transformers``' ``BertForSequenceClassification`` /
``RobertaForSequenceClassification``) in Flax NNX, sorted along depth, hidden width and heads.

A composition of :mod:`sortedjax.nn` layers: embeddings (words + learned absolute positions +
token types, then LayerNorm), a :class:`~sortedjax.nn.LayerStack` of post-LN layers
(``LN(x + attention(x))``, ``LN(x + MLP(x))``, exact-erf GELU, bidirectional attention over the
tokens ``attention_mask`` keeps) and the head: ``dense + tanh`` on the first token, then a linear
classifier (``num_labels=1``: regression). BERT's pooler and RoBERTa's ``classifier.dense`` are the
same computation, so one model serves both; only the checkpoint names differ. RoBERTa's positions
start at ``pad_token_id + 1`` and skip pad tokens (transformers' ``create_position_ids_from_input_ids``).

``model(tokens, sub=SubModel.of(depth=n, width=w, heads=h))``: the first ``n`` layers, the first
``w`` hidden features (every LayerNorm's statistics over the kept ``w``, embeddings and every
projection truncated; the MLP's inner width is kept whole) and the first ``h`` heads; the head
reads the state after ``n`` layers. Traced sizes share one compiled program. Dropout is not
modelled (evaluation; train with the objectives' noise instead).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sortedjax.models.common as common
from sortedjax import hf, nn
from sortedjax.extract import extract
from sortedjax.models.encoder_config import EncoderConfig
from sortedjax.protocol import HFDescriptor
from sortedjax.submodel import SubModel

_init = lambda k, s, d: nnx.initializers.normal(0.02)(k, s, d)  # noqa: E731


def _one(name, value, alias, alias_value):
    """``value`` or its Hugging Face-named ``alias`` (a ``TypeError`` when both are given)."""
    if value is not None and alias_value is not None:
        raise TypeError(f"give {name} or {alias}, not both")
    if value is None and alias_value is None and name == "tokens_BxL":
        raise TypeError("the encoder needs the token ids: tokens_BxL (positional) or input_ids=")
    return alias_value if value is None else value


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EncoderOutput:
    """What ``Encoder(..., head=False)`` returns (transformers' ``BaseModelOutputWithPooling`` names):
    ``last_hidden_state`` ``B x L x D`` (post-LN, after the sub-model's layers; features past its
    width zero) and ``pooler_output`` ``B x D`` (``tanh(dense(h[:, 0]))``, BERT's pooler). Also
    indexable by name, ``out["last_hidden_state"]``."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array

    def __getitem__(self, name: str):
        if name not in ("last_hidden_state", "pooler_output"):
            raise KeyError(name)
        return getattr(self, name)


class EncoderLayer(nnx.Module):
    """Post-LN: ``x = LN(x + attention(x)); x = LN(x + MLP(x))``."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        D, dt, eps = cfg.hidden_size, cfg.jnp_dtype, cfg.layer_norm_eps
        kw = dict(use_bias=True, dtype=dt, kernel_init=_init, rngs=rngs)
        self.attn = nn.Attention(D, cfg.num_attention_heads, head_dim=cfg.head_dim, causal=False, **kw)
        self.attn_norm = nn.LayerNorm(D, eps=eps, dtype=dt)
        self.mlp = nn.MLP(D, cfg.intermediate_size, activation=cfg.activation, gated=False, **kw)
        self.mlp_norm = nn.LayerNorm(D, eps=eps, dtype=dt)

    def __call__(self, x, *, mask, width=None, heads=None, rank=None):
        x = self.attn_norm(x + self.attn(x, mask=mask, heads=heads, embed=width, rank=rank), size=width)
        return self.mlp_norm(x + self.mlp(x, embed=width, rank=rank), size=width)


class Encoder(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, dt = cfg.hidden_size, cfg.jnp_dtype
        self.embed = nn.Embed(cfg.vocab_size, D, dtype=dt, rngs=rngs)
        self.positions = nn.Embed(cfg.max_position_embeddings, D, names=("length", "embed"), dtype=dt, rngs=rngs)
        self.token_types = nn.Embed(cfg.type_vocab_size, D, names=(None, "embed"), dtype=dt, rngs=rngs)
        self.embed_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps, dtype=dt)
        self.layers = nn.LayerStack(
            lambda r: EncoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs=rngs, remat=cfg.remat
        )
        kw = dict(dtype=dt, kernel_init=_init, rngs=rngs)
        self.pooler = nn.Linear(D, D, names=("embed", "embed"), **kw)  # BERT pooler / RoBERTa classifier.dense
        self.classifier = nn.Linear(D, cfg.num_labels, names=("embed", "classes"), **kw)

    # -- the model protocol (sortedjax.protocol) ---------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.cfg.num_hidden_layers

    def hf_descriptor(self) -> HFDescriptor:
        """Hugging Face module names of the Linears in the layout of the checkpoint the model came
        from: ``Bert``/``RobertaForSequenceClassification``, or a headless ``BertModel`` /
        ``RobertaModel`` (``cfg.hf_prefix == ""``: no ``bert.`` prefix, no classifier)."""
        arch = self.cfg.model_type
        prefix = f"{arch}." if self.cfg.hf_prefix is None else self.cfg.hf_prefix
        headless = prefix == ""
        if arch == "bert":
            heads = (
                {"pooler": "pooler.dense"} if headless else {"pooler": "bert.pooler.dense", "classifier": "classifier"}
            )
        else:  # RobertaModel's own pooler is not our pooler (classifier.dense of the task model)
            heads = {} if headless else {"pooler": "classifier.dense", "classifier": "classifier.out_proj"}
        every = {name for _, name, _, _ in _hf_names(self.cfg, prefix)}
        head = {n.format(p=prefix) for n, _ in _HF_HEAD[arch].values()}
        tensors = (every - head) | {n for n in head if n.rsplit(".", 1)[0] in heads.values()}
        return HFDescriptor(
            architecture=arch,
            layer_prefix=f"{prefix}encoder.layer.",
            layer_linears=hf.hf_linears(_HF_LAYER),
            heads=heads,
            headless=headless,
            tensors=frozenset(tensors),
        )

    @property
    def limits(self) -> dict[str, int]:
        c = self.cfg
        return {"depth": c.num_hidden_layers, "width": c.hidden_size, "heads": c.num_attention_heads}

    def default_positions(self, tokens_BxL):
        """BERT: ``0..L-1``; RoBERTa: ``pad+1, pad+2, ...`` over non-pad tokens, ``pad`` on pads."""
        B, L = tokens_BxL.shape
        if self.cfg.model_type == "bert":
            return jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
        real = (tokens_BxL != self.cfg.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + self.cfg.pad_token_id

    def _check(self, tokens_BxL, token_type_ids, positions):
        c = self.cfg
        common.check_ids(tokens_BxL, c.vocab_size)
        common.check_ids(token_type_ids, c.type_vocab_size, "token type id", "type_vocab_size")
        common.check_ids(positions, c.max_position_embeddings, "position", "max_position_embeddings")
        if positions is None and np.shape(tokens_BxL)[-1] > c.max_length:
            raise ValueError(f"input length {np.shape(tokens_BxL)[-1]} exceeds the model's {c.max_length} positions")

    def _run(self, tokens_BxL, depth, exits, attention_mask, token_type_ids, positions, kw):
        B, L = tokens_BxL.shape
        mask_BxL = jnp.ones((B, L), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        types = jnp.zeros((B, L), jnp.int32) if token_type_ids is None else jnp.asarray(token_type_ids)
        pos = self.default_positions(tokens_BxL) if positions is None else jnp.asarray(positions)
        x = self.embed(tokens_BxL) + self.positions(pos) + self.token_types(types)
        x = self.embed_norm(x, size=kw["width"])
        return self.layers(x, depth=depth, exits=exits, mask=mask_BxL[:, None, :], **kw)

    def __call__(
        self,
        tokens_BxL=None,
        attention_mask=None,
        token_type_ids=None,
        positions=None,
        *,
        sub: SubModel | None = None,
        input_ids=None,
        position_ids=None,
        head: bool = True,
    ):
        """Classification logits ``B x num_labels`` (regression values when ``num_labels == 1``) of
        sub-model ``sub`` (``None``: the full model).

        Takes what a Hugging Face tokenizer returns, ``model(**tokenizer(texts, return_tensors="np"))``:
        ``input_ids`` (the same as ``tokens_BxL``), ``attention_mask``, ``token_type_ids`` and
        ``position_ids`` (the same as ``positions``) as numpy or jax arrays (or nested lists).
        ``head=False``: no head, an :class:`EncoderOutput` (``last_hidden_state``, the state after
        ``sub.depth`` layers, by default the last; ``pooler_output``), as transformers' ``BertModel``.
        """
        tokens_BxL = _one("tokens_BxL", tokens_BxL, "input_ids", input_ids)
        positions = _one("positions", positions, "position_ids", position_ids)
        tokens_BxL, attention_mask, token_type_ids, positions = (
            None if x is None else jnp.asarray(x) for x in (tokens_BxL, attention_mask, token_type_ids, positions)
        )
        depth, kw = common.sizes(sub, None, self.limits, self)
        self._check(tokens_BxL, token_type_ids, positions)
        args = (tokens_BxL, depth, attention_mask, token_type_ids, positions, kw)
        return nn.eager.jit_call(self, "_logits" if head else "_headless", *args)

    def _logits(self, tokens_BxL, depth, attention_mask, token_type_ids, positions, kw):
        h = self._run(tokens_BxL, depth, None, attention_mask, token_type_ids, positions, kw).hidden
        return self._head(h, kw["width"], kw["rank"])

    def _headless(self, tokens_BxL, depth, attention_mask, token_type_ids, positions, kw):
        h = self._run(tokens_BxL, depth, None, attention_mask, token_type_ids, positions, kw).hidden
        pooled = self.pooled(h, sub=SubModel(width=kw["width"], rank=kw["rank"]))
        return EncoderOutput(last_hidden_state=h, pooler_output=pooled)

    def last_hidden_state(self, *args, **kwargs):
        """``model(*args, **kwargs, head=False).last_hidden_state``: ``B x L x D`` after ``sub.depth`` layers."""
        return self(*args, **kwargs, head=False).last_hidden_state

    def hidden_states(self, tokens_BxL, exits, attention_mask=None, token_type_ids=None, positions=None, *, sub=None):
        """Hidden states ``E x B x L x D`` after each exit (1-based layer counts; post-LN, as HF's)."""
        if not isinstance(exits, jax.Array):
            self.layers.check_exits(exits)
        _, kw = common.sizes(sub, None, self.limits, self)
        self._check(tokens_BxL, token_type_ids, positions)
        exits_E = jnp.asarray(exits, jnp.int32)
        args = (tokens_BxL, exits_E, attention_mask, token_type_ids, positions, kw)
        return nn.eager.jit_call(self, "_hidden", *args)

    def _hidden(self, tokens_BxL, exits_E, attention_mask, token_type_ids, positions, kw):
        return self._run(tokens_BxL, jnp.max(exits_E), exits_E, attention_mask, token_type_ids, positions, kw).exits

    def pooled(self, h_BxLxD, *, sub: SubModel | None = None):
        """``tanh(dense(h[:, 0]))``: BERT's ``pooler_output`` (RoBERTa: the head's first half)."""
        sub = sub or SubModel()
        return jnp.tanh(self.pooler(h_BxLxD[:, 0], out_size=sub.width, rank=sub.rank))

    def _head(self, h_BxLxD, width, rank):
        pooled = self.pooled(h_BxLxD, sub=SubModel(width=width, rank=rank))
        return self.classifier(pooled, rank=rank).astype(jnp.float32)

    def logits_from_hidden(self, h_BxLxD, exit_index=None, *, sub: SubModel | None = None):
        """The classification head on hidden states (``sub.width``: the kept width they have)."""
        if exit_index is not None:
            raise ValueError("exit_index given but the encoder has one shared head (no separate exit heads)")
        sub = sub or SubModel()
        return self._head(h_BxLxD, sub.width, sub.rank)

    # -- extraction (sortedjax.extract) -------------------------------------------------------
    def sub_config(self, sizes) -> EncoderConfig:
        d, w, h = (sizes.get(k, lim) for k, lim in self.limits.items())
        return dataclasses.replace(
            self.cfg, num_hidden_layers=d, hidden_size=w, num_attention_heads=h, head_dim=self.cfg.head_dim
        )

    def axis_sizes(self, sizes) -> dict[str, int]:
        d, w, h = (sizes.get(k, lim) for k, lim in self.limits.items())
        return {"layers": d, "embed": w, "heads": h, "kv_heads": h}


# -- Hugging Face checkpoints ---------------------------------------------------------------
_HF_LAYER = {  # HF suffix -> (our per-layer paths, n_in: Linear input axes / 0 flat vector / None as is)
    "attention.self.query.weight": ([("attn", "q", "kernel")], 1),
    "attention.self.query.bias": ([("attn", "q", "bias")], 0),
    "attention.self.key.weight": ([("attn", "k", "kernel")], 1),
    "attention.self.key.bias": ([("attn", "k", "bias")], 0),
    "attention.self.value.weight": ([("attn", "v", "kernel")], 1),
    "attention.self.value.bias": ([("attn", "v", "bias")], 0),
    "attention.output.dense.weight": ([("attn", "o", "kernel")], 2),
    "attention.output.dense.bias": ([("attn", "o", "bias")], None),
    "attention.output.LayerNorm.weight": ([("attn_norm", "scale")], None),
    "attention.output.LayerNorm.bias": ([("attn_norm", "bias")], None),
    "intermediate.dense.weight": ([("mlp", "up", "kernel")], 1),
    "intermediate.dense.bias": ([("mlp", "up", "bias")], None),
    "output.dense.weight": ([("mlp", "down", "kernel")], 1),
    "output.dense.bias": ([("mlp", "down", "bias")], None),
    "output.LayerNorm.weight": ([("mlp_norm", "scale")], None),
    "output.LayerNorm.bias": ([("mlp_norm", "bias")], None),
}
LEGACY_NAMES = {".LayerNorm.gamma": ".LayerNorm.weight", ".LayerNorm.beta": ".LayerNorm.bias"}  # old BERT files
_HF_TOP = {  # our path -> (HF name after the model prefix, n_in)
    ("embed", "embedding"): ("embeddings.word_embeddings.weight", None),
    ("positions", "embedding"): ("embeddings.position_embeddings.weight", None),
    ("token_types", "embedding"): ("embeddings.token_type_embeddings.weight", None),
    ("embed_norm", "scale"): ("embeddings.LayerNorm.weight", None),
    ("embed_norm", "bias"): ("embeddings.LayerNorm.bias", None),
}
_HF_HEAD = {  # model type -> our path -> (HF name, n_in); the head may be absent from a base checkpoint
    "bert": {
        ("pooler", "kernel"): ("{p}pooler.dense.weight", 1),
        ("pooler", "bias"): ("{p}pooler.dense.bias", None),
        ("classifier", "kernel"): ("classifier.weight", 1),
        ("classifier", "bias"): ("classifier.bias", None),
    },
    "roberta": {
        ("pooler", "kernel"): ("classifier.dense.weight", 1),
        ("pooler", "bias"): ("classifier.dense.bias", None),
        ("classifier", "kernel"): ("classifier.out_proj.weight", 1),
        ("classifier", "bias"): ("classifier.out_proj.bias", None),
    },
}


def _hf_names(cfg: EncoderConfig, prefix: str) -> list:
    shapes = hf.param_shapes(lambda: Encoder(cfg, rngs=nnx.Rngs(0)))
    at = lambda path: shapes[path[0]][path[1]]  # noqa: E731
    out = [((path,), prefix + name, n_in, at(path)) for path, (name, n_in) in _HF_TOP.items()]
    out += hf.layer_entries(_HF_LAYER, shapes["layers"]["layers"], cfg.num_hidden_layers, f"{prefix}encoder.layer.")
    out += [((p,), n.format(p=prefix), n_in, at(p)) for p, (n, n_in) in _HF_HEAD[cfg.model_type].items()]
    return out


def from_pretrained(path_or_id: str, dtype: str = "float32", mesh=None, **overrides: Any) -> Encoder:
    """Load a BERT / RoBERTa checkpoint (local dir or hub id; ``*ForSequenceClassification`` or a base
    model, whose pooler / classifier then start fresh), params placed into ``mesh`` shardings.
    ``overrides`` replace config fields (e.g. ``num_labels=1`` for a regression head)."""
    mesh = hf.as_mesh(mesh)
    d = hf.resolve(path_or_id)
    cfg = EncoderConfig.from_hf(hf.load_config(d), dtype=dtype, **overrides)
    sd = common.Renamed(hf.load_state_dict(d), LEGACY_NAMES)
    t = cfg.model_type
    prefix = common.prefix_of(
        sd, {f"{t}.": f"{t}.embeddings.word_embeddings.weight", "": "embeddings.word_embeddings.weight"}, t
    )
    extra = sorted(k for k in sd if k.startswith(f"{prefix}encoder.layer.{cfg.num_hidden_layers}."))
    if extra:
        raise ValueError(
            f"checkpoint has tensor {extra[0]!r} but config.json says num_hidden_layers={cfg.num_hidden_layers}"
        )
    cfg = dataclasses.replace(cfg, hf_prefix=prefix)  # adapters are named for this checkpoint's layout
    entries = _hf_names(cfg, prefix)
    head = tuple(name for _, name, _, _ in entries[-4:])  # pooler, classifier: absent from a base model
    fresh = ()
    if "num_labels" in overrides:  # a new task: a classifier of another size starts fresh
        fresh = tuple(n for n in head[2:] if n in sd and sd[n].shape[0] != cfg.num_labels)
    params = hf.load_params(sd, entries, np.dtype(cfg.jnp_dtype), optional=head, fresh=fresh)
    model = hf.place(lambda: Encoder(cfg, rngs=nnx.Rngs(0)), params, mesh)
    new = [n for n in head if n in fresh or n not in sd]
    # our head modules that start fresh: sortedjax.train.train warns when they would stay frozen
    model.fresh_modules = tuple(p[0][0] for p, n, _, _ in entries[-4:] if n in new and p[0][-1] == "kernel")
    return model


def save_pretrained(model: Encoder, out_dir, sub: SubModel | None = None) -> None:
    """Write sub-model ``sub`` as a ``*ForSequenceClassification`` checkpoint transformers loads.

    transformers ties head_dim to hidden_size / num_attention_heads, so a sub-model with fewer heads
    is written with its kept heads followed by all-zero heads (same outputs; see :func:`common.hf_heads`).
    """

    small = model if sub is None else extract(model, sub)
    c = small.cfg
    n = common.hf_heads(c.hidden_size, c.num_attention_heads, c.head_dim, "BERT / RoBERTa")
    cfg = dataclasses.replace(c, num_attention_heads=n, head_dim=c.head_dim)
    pad = None if n == c.num_attention_heads else hf.param_shapes(lambda: Encoder(cfg, rngs=nnx.Rngs(0)))
    entries = _hf_names(cfg, f"{c.model_type}.")
    hf.write_checkpoint(out_dir, cfg.to_hf(), hf.checkpoint_tensors(small, entries, pad_to=pad))
