"""The benchmark models of ``benchmarks/dynamic_inference.py``: LLaMA-architecture models briefly
SoFT-trained (mean of the exit losses through the shared head, :mod:`sortedjax.methods.soft`) as language
models on the built-in task's generated text (:func:`sortedjax.data.instruct.task.builtin_corpus`), so
that their early exits agree with the last layer the way a SoFT model's do.

The trained weights are cached as a Hugging Face checkpoint in ``CACHE/<name>-<key>/hf`` (``CACHE``: ``$SORTEDJAX_CACHE/dynamic_inference``, default
``~/.cache/sortedjax/dynamic_inference``), ``key`` a
hash of everything that defines the model (architecture, exits, data, steps, learning rate, seed):
a rerun with the same settings loads them instead of training; ``retrain=True`` trains again
(``sortedjax.train.train(restart=True)``). Training resumes from its orbax checkpoints in
``CACHE/<name>-<key>/train`` when interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from sortedjax.data.instruct import encode as ienc
from sortedjax.data.instruct import task as itask
from sortedjax.methods import soft
from sortedjax.models import llama

# outside the repository: model (b) is ~300 MB
CACHE = os.path.join(os.environ.get("SORTEDJAX_CACHE", os.path.expanduser("~/.cache/sortedjax")), "dynamic_inference")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchModel:
    """One benchmark model and its SoFT training run."""

    layers: int
    hidden: int
    heads: int
    steps: int
    batch_size: int = 16
    learning_rate: float = 1e-3
    docs: int = 2000
    max_len: int = 56
    seed: int = 0

    def __post_init__(self):
        for f in ("layers", "hidden", "heads", "steps", "batch_size", "docs", "max_len"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} must be a multiple of heads {self.heads}")

    @property
    def exits(self) -> tuple[int, ...]:
        """Every eighth of the depth from a quarter on (6, 9, ..., 21 of 24), plus the last layer."""
        N = self.layers
        return tuple(sorted({max(1, e) for e in range(N // 4, N, max(1, N // 8))} | {N}))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


MODELS = {
    "a_main_job": BenchModel(layers=8, hidden=64, heads=4, steps=300, batch_size=32, learning_rate=3e-3),
    "b_deep": BenchModel(layers=24, hidden=384, heads=6, steps=400, batch_size=16, learning_rate=2e-3),
}


def task_text(spec: BenchModel):
    """(tokenizer, training documents, held-out documents) of the built-in task."""
    task = itask.builtin_task(seed=spec.seed)
    corpus = itask.builtin_corpus(task, num_docs=spec.docs, seed=spec.seed)
    held_out = itask.builtin_corpus(task, num_docs=64, seed=spec.seed + 1000)
    tok = itask.task_tokenizer(corpus + held_out)
    return tok, corpus, held_out


def prompts(tok, held_out, batch: int, length: int) -> np.ndarray:
    """``batch x length`` prompts: the first ``length`` tokens (after BOS) of held-out documents."""
    rows = []
    for doc in held_out:
        ids = [tok.bos_token_id] + tok(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            rows.append(ids[:length])
        if len(rows) == batch:
            return np.asarray(rows, np.int32)
    raise ValueError(f"only {len(rows)} held-out documents have {length} tokens; {batch} asked for")


def task_questions(tok, spec: BenchModel) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Every question of the built-in task (its train and eval splits) in the corpus' own Q/A
    format, ``question : <q> answer :``, left-padded: (ids, attention mask, gold answers)."""
    task = itask.builtin_task(seed=spec.seed)
    exs = [*task.eval, *task.train]
    rows = [
        [tok.bos_token_id] + tok(f"question : {e.instruction} answer :", add_special_tokens=False)["input_ids"]
        for e in exs
    ]
    L = max(map(len, rows))
    ids = np.full((len(rows), L), tok.pad_token_id, np.int32)
    att = np.zeros((len(rows), L), np.int32)
    for i, r in enumerate(rows):
        ids[i, L - len(r) :], att[i, L - len(r) :] = r, 1
    return ids, att, [tuple(e.answers) for e in exs]


def answers(tok, out: np.ndarray) -> list[str]:
    """The answer of each generated row: its text up to the first ``.`` (the corpus' end of answer)."""
    stop = tok.convert_tokens_to_ids(".")
    res = []
    for row in np.asarray(out).tolist():
        row = row[: row.index(stop)] if stop in row else row
        row = [t for t in row if t >= 0]  # generation pads with an id outside the vocabulary
        res.append(tok.decode(row, skip_special_tokens=True).strip())
    return res


def load_or_train(name: str, spec: BenchModel, *, cache: str = CACHE, retrain: bool = False):
    """(model, tokenizer, held-out documents, training record): trained once per ``spec``, then cached."""
    from flax import nnx

    from sortedjax.train import train
    from sortedjax.train.batches import ArrayBatches
    from sortedjax.train.config import TrainConfig

    tok, corpus, held_out = task_text(spec)
    root = os.path.join(cache, f"{name}-{spec.key()}")
    hf_dir = os.path.join(root, "hf")
    record_path = os.path.join(root, "record.json")
    if not retrain and os.path.exists(os.path.join(hf_dir, "config.json")) and os.path.exists(record_path):
        with open(record_path) as f:
            return llama.from_pretrained(hf_dir), tok, held_out, {**json.load(f), "cached": True}
    cfg = llama.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=max(1, spec.heads // 2),
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(spec.seed))
    enc = ienc.encode_lm(tok, corpus, max_len=spec.max_len)
    data = ArrayBatches(enc.arrays(), spec.batch_size, seed=spec.seed)
    loss = soft.make_loss(soft.SoftConfig(mode="soft", exits=spec.exits, num_layers=spec.layers))
    tcfg = TrainConfig(
        workdir=os.path.join(root, "train"),
        steps=spec.steps,
        learning_rate=spec.learning_rate,
        schedule="cosine",
        warmup_steps=min(20, spec.steps),
        end_lr_factor=0.1,
        grad_clip_norm=1.0,
        checkpoint_every=50,
        log_every=10,
        seed=spec.seed,
        desc=f"SoFT {name}",
    )
    res = train(model, loss, data, tcfg, restart=retrain)
    last = res.history[-1] if res.history else {}
    record = {"spec": dataclasses.asdict(spec), "exits": list(spec.exits), "final_metrics": last}
    llama.save_pretrained(res.model, hf_dir)
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1, default=float)
    return res.model, tok, held_out, {**record, "cached": False}
