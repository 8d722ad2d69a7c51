"""A small BERT pre-trained here by masked language modelling, saved as a Hugging Face checkpoint.

Stands in for a downloaded BERT / RoBERTa when nothing can be downloaded: :func:`sortedjax.data.tokenizer.build_tokenizer`
makes a word-level ``[CLS] a [SEP] b [SEP]`` tokenizer over the text, :func:`pretrain` trains a
:class:`~sortedjax.models.encoder.Encoder` with the BERT masked-LM objective (15% of the tokens
chosen; 80% of them ``[MASK]``, 10% a random word, 10% kept; the output layer tied to the word
embeddings) on :func:`sortedjax.data.nlu.tasks.corpus`, and writes it with
:func:`sortedjax.models.encoder.save_pretrained` plus the tokenizer, so it is loaded back through
``encoder.from_pretrained`` / ``AutoTokenizer.from_pretrained`` exactly like a real checkpoint
(:func:`base_model` does all of it, and reuses a directory that already holds one).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sortedjax.data.nlu.tasks as nlu_tasks
from sortedjax.data.tokenizer import SPECIAL_TOKENS as TOKENIZER_SPECIALS
from sortedjax.data.tokenizer import build_tokenizer
from sortedjax.models import encoder
from sortedjax.train import ArrayBatches, TrainConfig, train

SPECIAL_TOKENS = TOKENIZER_SPECIALS["bert"]  # ids 0..4


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 128
    max_len: int = 32
    num_docs: int = 6000
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 2e-3
    mask_prob: float = 0.15
    seed: int = 0

    def __post_init__(self):
        for f in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_len", "num_docs", "batch_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"PretrainConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")


def mask_tokens(ids_BxL, real_BxL, key, *, mask_id: int, vocab_size: int, num_special: int, prob: float):
    """BERT masking inside jit: ``(inputs, chosen)``; ``chosen`` marks the positions to predict."""
    k1, k2, k3 = jax.random.split(key, 3)
    can = real_BxL & (ids_BxL >= num_special)
    chosen = can & (jax.random.uniform(k1, ids_BxL.shape) < prob)
    u = jax.random.uniform(k2, ids_BxL.shape)
    rand = jax.random.randint(k3, ids_BxL.shape, num_special, vocab_size)
    inputs = jnp.where(chosen & (u < 0.8), mask_id, jnp.where(chosen & (u < 0.9), rand, ids_BxL))
    return inputs, chosen


def mlm_loss(tok_info: dict, prob: float):
    """``loss_fn(model, batch, key)``: masked-LM cross-entropy on the chosen positions."""

    def loss_fn(model, batch, key):
        ids, real = batch["ids"], batch["mask"].astype(bool)
        inputs, chosen = mask_tokens(ids, real, key, prob=prob, **tok_info)
        h = model.hidden_states(inputs, [model.num_layers], attention_mask=batch["mask"])[0]
        logits = model.embed.attend(h).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
        w = chosen.astype(jnp.float32)
        loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
        acc = jnp.sum((jnp.argmax(logits, -1) == ids) * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, {"mlm_accuracy": acc}

    return loss_fn


def pretrain(out_dir: str, cfg: PretrainConfig, *, workdir: str, texts: list[str] | None = None) -> dict:
    """Masked-LM pre-training of a BERT on ``texts`` (default :func:`sortedjax.data.nlu.tasks.corpus`),
    saved to ``out_dir`` (``config.json``, ``model.safetensors``, tokenizer files). Training runs
    in ``workdir`` (orbax resume). Returns the last logged metrics."""

    texts = nlu_tasks.corpus(cfg.num_docs, seed=cfg.seed) if texts is None else texts
    tok = build_tokenizer(texts, nlu_tasks.WORDS, style="bert")
    enc = tok(texts, truncation=True, max_length=cfg.max_len, padding="max_length")
    arrays = {"ids": np.asarray(enc["input_ids"], np.int32), "mask": np.asarray(enc["attention_mask"], np.int32)}
    mcfg = encoder.EncoderConfig(
        model_type="bert",
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(64, cfg.max_len),
        pad_token_id=tok.pad_token_id,
    )
    model = encoder.Encoder(mcfg, rngs=nnx.Rngs(cfg.seed))
    info = dict(mask_id=tok.mask_token_id, vocab_size=len(tok), num_special=len(SPECIAL_TOKENS))
    tcfg = TrainConfig.finetune(
        workdir=workdir,
        steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        desc="mlm pre-training",
        weight_decay=0.01,
    )
    res = train(
        model,
        mlm_loss(info, cfg.mask_prob),
        ArrayBatches(arrays, min(cfg.batch_size, len(texts)), seed=cfg.seed),
        tcfg,
        run_config={"pretrain": dataclasses.asdict(cfg)},
    )
    encoder.save_pretrained(res.model, out_dir)
    tok.save_pretrained(out_dir)
    return res.history[-1] if res.history else {}


def base_model(workdir: str, cfg: PretrainConfig | None = None) -> str:
    """``WORKDIR/base/hf``: the pre-trained small BERT, built by :func:`pretrain` unless it is there."""
    cfg = cfg or PretrainConfig()
    out = os.path.join(workdir, "base", "hf")
    if not (os.path.exists(os.path.join(out, "config.json")) and os.path.exists(os.path.join(out, "tokenizer.json"))):
        pretrain(out, cfg, workdir=os.path.join(workdir, "base", "train"))
    return out
