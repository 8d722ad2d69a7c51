"""The phases of ``experiments.soft``: base model, fine-tuning, decoding at every exit, scores.

Each phase works in its own sub-directory of the workdir (orbax checkpoints and
``metrics.jsonl``) and resumes there; :func:`setup` gathers what every phase shares into a
:class:`Context`. Every function records its wall time in ``Context.times``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any

from experiments.soft.config import SoftExperiment

# sharding imports jax but starts no backend: make_mesh can still make simulated CPU devices.
from sortedjax import decoding, distributed, hf, sharding
from sortedjax.data import instruct as idata
from sortedjax.methods import soft
from sortedjax.metrics import evaluation as ev
from sortedjax.models import llama
from sortedjax.train import ArrayBatches, TrainConfig, train


def log(msg: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(msg, flush=True)


@contextlib.contextmanager
def timed(times: dict[str, float], name: str):
    t0 = time.time()
    try:
        yield
    finally:
        times[name] = time.time() - t0


@dataclasses.dataclass
class Context:
    """What every phase shares: the config, mesh, data, base checkpoint, tokenizer and exits."""

    cfg: SoftExperiment
    mesh: Any
    train_ex: list
    eval_ex: list
    base: str  # HF directory (or hub id) of the base model every phase starts from
    tok: Any
    num_layers: int
    exits: tuple[int, ...]
    data: Any  # ArrayBatches of the encoded training set
    num_truncated: int
    main: bool  # process 0: the one that writes
    times: dict[str, float]
    t_start: float
    judge: Any = None  # (judge, its name) once experiments.soft.report.judge_of made it

    @property
    def inner(self) -> tuple[int, ...]:
        """The exits before the last layer (the ones SFT+ICT trains heads for)."""
        return tuple(e for e in self.exits if e < self.num_layers)


def setup(cfg: SoftExperiment) -> Context:
    """Mesh, examples, the base model (built or reused), its tokenizer, exits and batches."""
    t_start = time.time()
    if cfg.distributed:
        distributed.initialize()  # TPU pods: coordinator and process ids come from the environment
    import jax

    # make_mesh calls ensure_devices first: simulated CPU devices on a laptop.
    mesh = sharding.make_mesh(str(jax.device_count()) if cfg.mesh == "all" else cfg.mesh)
    os.makedirs(cfg.workdir, exist_ok=True)
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices; workdir {cfg.workdir}")
    times: dict[str, float] = {}
    task, train_ex, eval_ex = load_examples(cfg)
    if not eval_ex:
        raise ValueError("no evaluation examples")
    with timed(times, "base"):
        base = cfg.model if cfg.model is not None else build_base(cfg, mesh, task)
    tok = hf.load_tokenizer(base)
    if tok is None:
        raise ValueError(f"no tokenizer files in {base!r}; a Hugging Face LLaMA checkpoint needs its tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    num_layers = int(hf.load_config(hf.resolve(base))["num_hidden_layers"])
    exits = soft.parse_exits(cfg.exits, num_layers)
    log(f"base {base}: {num_layers} layers; exits {list(exits)}; {len(train_ex)} train / {len(eval_ex)} eval examples")
    enc = idata.encode_sft(tok, train_ex, max_len=cfg.max_len, max_response_len=cfg.max_response_len)
    bs = min(cfg.batch_size, len(train_ex) // cfg.grad_accum * cfg.grad_accum)
    data = ArrayBatches(enc.arrays(), bs, seed=cfg.seed)
    return Context(
        cfg=cfg,
        mesh=mesh,
        train_ex=train_ex,
        eval_ex=eval_ex,
        base=base,
        tok=tok,
        num_layers=num_layers,
        exits=exits,
        data=data,
        num_truncated=enc.num_truncated,
        main=jax.process_index() == 0,
        times=times,
        t_start=t_start,
    )


def describe(ctx: Context) -> dict:
    """The head of ``results.json``: what was run on what."""
    return {
        "exits": list(ctx.exits),
        "num_layers": ctx.num_layers,
        "model": ctx.base,
        "dataset": ctx.cfg.dataset,
        "num_train": len(ctx.train_ex),
        "num_eval": len(ctx.eval_ex),
        "num_truncated": ctx.num_truncated,
        "config": dataclasses.asdict(ctx.cfg),
    }


def load_examples(cfg: SoftExperiment):
    """``(builtin task or None, train examples, eval examples)`` for ``--dataset``."""

    if cfg.dataset == "builtin":
        task = idata.builtin_task(seed=cfg.seed)
        return task, task.train, task.eval[: cfg.eval_limit]
    train = idata.load_dataset_examples(cfg.dataset)
    if cfg.eval_dataset:
        ev = idata.load_dataset_examples(cfg.eval_dataset, split="validation", limit=cfg.eval_limit or 500)
    else:  # hold out the last 5% (at most 500) of the training records
        n = max(1, min(500, len(train) // 20))
        train, ev = train[:-n], train[-n:]
    return None, train, ev[: cfg.eval_limit]


# ------------------------------------------------------------------------------ training


def _train_cfg(cfg: SoftExperiment, sub: str, steps: int, lr: float, **kw):
    """The shared fine-tuning recipe (:meth:`TrainConfig.finetune`) with SoFT's warmup, checkpoint
    interval, gradient accumulation and optimizer-state dtype."""

    return TrainConfig.finetune(
        workdir=os.path.join(cfg.workdir, sub),
        steps=steps,
        learning_rate=lr,
        seed=cfg.seed,
        desc=sub,
        warmup_steps=min(20, steps // 10),
        grad_accum=cfg.grad_accum,
        opt_state_dtype=None if cfg.opt_state_dtype == "param" else cfg.opt_state_dtype,
        checkpoint_every=100,
        log_every=10,
        **kw,
    )


def build_base(cfg: SoftExperiment, mesh, task) -> str:
    """The offline base model: word tokenizer + LM training on generated text -> HF dir."""
    import jax
    from flax import nnx

    out = os.path.join(cfg.workdir, "base", "hf")
    if os.path.exists(os.path.join(out, "config.json")) and os.path.exists(os.path.join(out, "tokenizer.json")):
        log(f"reusing base model {out}")
        return out
    corpus = idata.builtin_corpus(task, num_docs=cfg.base_docs, seed=cfg.seed)
    tok = idata.task_tokenizer(corpus + [e.prompt + " " + e.output for e in task.train + task.eval])
    mcfg = llama.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.base_hidden,
        intermediate_size=cfg.base_hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=cfg.base_layers,
        num_attention_heads=cfg.base_heads,
        num_key_value_heads=max(1, cfg.base_heads // 2),
        max_position_embeddings=256,
        rope_theta=10000.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = llama.Llama(mcfg, rngs=nnx.Rngs(cfg.seed))
    data = ArrayBatches(idata.encode_lm(tok, corpus, max_len=cfg.max_len).arrays(), cfg.batch_size, seed=cfg.seed)
    loss = soft.make_loss(soft.SoftConfig(mode="sft", exits=(cfg.base_layers,), num_layers=cfg.base_layers))
    res = train(
        model,
        loss,
        data,
        _train_cfg(cfg, "base/train", cfg.base_steps, cfg.base_learning_rate),
        mesh=mesh if cfg.base_sharded else None,
    )
    llama.save_pretrained(res.model, out)  # every process: it gathers the parameters, process 0 writes
    if jax.process_index() == 0:
        tok.save_pretrained(out)
    log(f"base model: {cfg.base_layers} layers, final LM loss {res.history[-1]['loss']:.3f}, saved to {out}")
    return out


def finetune(ctx: Context, mode: str, init_path: str, exits, *, steps: int, lr: float, **load_kw):
    """One fine-tuning phase in its own sub-workdir (resumes); returns (model, last metrics)."""

    cfg = ctx.cfg
    model = llama.from_pretrained(init_path, dtype=cfg.dtype, mesh=ctx.mesh, remat=cfg.remat, **load_kw)
    scfg = soft.SoftConfig(mode=mode, exits=exits, num_layers=ctx.num_layers, response_len=cfg.max_response_len)
    name = mode if mode != "extracted" else f"extracted_{exits[0]}"
    kw = {"trainable": soft.head_filter()} if mode == "sft_ict" else {}
    t0 = time.time()
    run = {
        "mode": mode,
        "exits": list(exits),
        "init": os.path.relpath(init_path, cfg.workdir),
        "response_len": scfg.response_len,
    }
    res = train(
        model, soft.make_loss(scfg), ctx.data, _train_cfg(cfg, name, steps, lr), mesh=ctx.mesh, run_config=run, **kw
    )
    last = res.history[-1] if res.history else {}
    log(f"{name}: {steps} steps, loss {last.get('loss', float('nan')):.3f} ({time.time() - t0:.0f}s)")
    return res.model, last


def finetune_and_decode(ctx: Context, mode: str):
    """SFT or SoFT from the base model, saved as a HF checkpoint, decoded and scored at every exit."""

    with timed(ctx.times, mode):
        cfg = ctx.cfg
        model, last = finetune(ctx, mode, ctx.base, ctx.exits, steps=cfg.steps, lr=cfg.learning_rate)
        # sft/hf is where SFT+ICT starts; soft/hf is what experiments.export cuts (every process gathers)
        llama.save_pretrained(model, os.path.join(cfg.workdir, mode, "hf"))
        if ctx.main and mode == "soft":
            ctx.tok.save_pretrained(os.path.join(cfg.workdir, mode, "hf"))
        outputs = generate_at_exits(ctx, model, ctx.exits)
        return model, outputs, {**score(outputs, ctx.eval_ex), "final_train_loss": last}


def sft_ict(ctx: Context, sft_outputs: dict[int, list[str]]):
    """SFT+ICT: a separate norm + head per intermediate exit, SFT body frozen; last exit = SFT.

    Returns (model, outputs per exit, scores), or None when there is no intermediate exit."""
    import jax

    with timed(ctx.times, "sft_ict"):
        inner, cfg = ctx.inner, ctx.cfg
        if not inner:
            return None
        if jax.process_count() > 1:  # every host reads the SFT export written by process 0
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("sft_export")
        ict, last = finetune(
            ctx,
            "sft_ict",
            os.path.join(cfg.workdir, "sft", "hf"),
            inner,
            steps=cfg.ict_steps,
            lr=cfg.ict_learning_rate,
            exit_head_layers=inner,
        )
        outputs = {**generate_at_exits(ctx, ict, inner), ctx.num_layers: sft_outputs[ctx.num_layers]}
        return ict, outputs, {**score(outputs, ctx.eval_ex), "final_train_loss": last}


def extracted_depths(ctx: Context) -> tuple[int, ...]:
    spec = ctx.cfg.extracted
    if spec.strip() == "auto":
        return (ctx.exits[(len(ctx.exits) - 1) // 2],) if len(ctx.exits) > 1 else ()

    return soft.parse_exits(spec, ctx.num_layers) if spec else ()


def extracted(ctx: Context) -> tuple[dict[str, dict[int, list[str]]], dict[str, dict]]:
    """Extracted fine-tuning: the first n layers fine-tuned alone, at the same budget.

    Returns ``({"extracted_n": outputs}, {"n": scores})``."""
    outputs, results = {}, {}
    with timed(ctx.times, "extracted"):
        for n in extracted_depths(ctx):
            m, last = finetune(ctx, "extracted", ctx.base, (n,), steps=ctx.cfg.steps, lr=ctx.cfg.learning_rate)
            o = generate_at_exits(ctx, m, (n,))
            outputs[f"extracted_{n}"] = o
            results[str(n)] = {**{k: v[0] for k, v in score(o, ctx.eval_ex).items()}, "final_train_loss": last}
    return outputs, results


# ------------------------------------------------------------------- decoding and scores


def eval_batches(ctx: Context) -> tuple[list[tuple[Any, Any]], int]:
    """The eval prompts as generation batches ``[(ids, attention mask), ...]`` (left-padded; the
    last batch is filled up with the first prompts so that every batch has one shape) and the
    number of real prompts: the first ``n`` rows of the concatenated outputs."""
    import numpy as np

    cfg, tok, examples = ctx.cfg, ctx.tok, ctx.eval_ex
    plen = max(len(tok(e.prompt, add_special_tokens=False)["input_ids"]) + 1 for e in examples)
    ids, att = idata.encode_prompts(tok, examples, max_len=min(plen, cfg.max_len))
    n, bs = len(examples), min(cfg.eval_batch_size, len(examples))
    pad = (-n) % bs
    ids, att = np.concatenate([ids, ids[:pad]]), np.concatenate([att, att[:pad]])
    return [(ids[i : i + bs], att[i : i + bs]) for i in range(0, len(ids), bs)], n


def decode_kwargs(ctx: Context) -> dict:
    """What every evaluation decoding shares: length, stop token and pad id."""

    return dict(
        max_new_tokens=ctx.cfg.max_new_tokens, stop_tokens=(ctx.tok.eos_token_id,), pad_id=idata.pad_id_of(ctx.tok)
    )


def generate_at_exits(ctx: Context, model, exits) -> dict[int, list[str]]:
    """Greedy responses to every eval prompt at every exit."""
    import numpy as np

    batches, n = eval_batches(ctx)
    out = {}
    for e in exits:
        toks = [
            decoding.generate(model, ids, attention_mask=att, exit_layer=e, temperature=0.0, **decode_kwargs(ctx))
            for ids, att in batches
        ]
        out[e] = idata.decode_responses(ctx.tok, np.concatenate(toks)[:n])
    return out


def score(outputs: dict[int, list[str]], examples) -> dict:
    """Exact match (%) and mean best ROUGE-L (x100) per exit, in exit order."""

    refs = [e.references for e in examples]
    exits = sorted(outputs)
    return {
        "exact_match": [ev.exact_match_accuracy(outputs[e], refs) for e in exits],
        "rouge_l": [
            100.0 * sum(ev.best_rouge_l(p, r) for p, r in zip(outputs[e], refs)) / max(len(refs), 1) for e in exits
        ],
    }


if __name__ == "__main__":
    raise SystemExit("experiments.soft.phases is part of python -m experiments.soft, not a command of its own")
