"""Sorted LLaMA (thesis ch. 5): SoFT against SFT, SFT+ICT and extracted fine-tuning.

Run (offline, 8 simulated CPU devices, FSDP)::

    python -m experiments.soft --mesh=8

Expected runtime: under 10 minutes on a 2-core CPU from a fresh workdir (measured 8:53 wall,
8.5 CPU-minutes, on a 2-core machine shared with other jobs); a rerun reuses the base model
and every finished phase. On a TPU pod with a real LLaMA-2 13B::

    python -m experiments.soft --mesh=data:4,fsdp:8 --model meta-llama/Llama-2-13b-hf \\
        --dataset alpaca:tatsu-lab/alpaca --eval-dataset triviaqa --dtype bfloat16 \\
        --steps 2000 --batch-size 64 --grad-accum 4 --max-len 512 --max-response-len 256 \\
        --learning-rate 2e-5 --distributed

(hours; see ``tpu_scripts/soft_pod.sh``).

What it does: builds (or reuses from ``WORKDIR/base/hf``) a small LLaMA-architecture base
model by ordinary language-model training on generated text about an invented world, saves
it with its word-level tokenizer as a Hugging Face checkpoint, loads it back through
``llama.from_pretrained`` (the path a real LLaMA-2 takes), then at an equal budget
fine-tunes it with SFT and SoFT (mean of the exit losses, shared head), trains SFT+ICT heads
on the frozen SFT body, extracted fine-tuning of the first (middle-exit) layers, and greedily
decodes the 37 held-out questions at every exit. Output of the default run (seed 0)::

    exit |     sft EM% |    soft EM% | sft_ict EM% | soft vs sft
    ------------------------------------------------------------
       2 |        13.5 |        73.0 |        21.6 |       +0.59
       3 |        13.5 |        73.0 |        29.7 |       +0.59
       4 |        27.0 |        73.0 |        29.7 |       +0.46
       5 |        16.2 |        75.7 |        29.7 |       +0.59
       6 |        32.4 |        75.7 |        43.2 |       +0.43
       7 |        51.4 |        75.7 |        64.9 |       +0.24
       8 |        75.7 |        78.4 |        75.7 |       +0.03
    extracted fine-tuning of the first 5 layers: EM 75.7% (soft vs extracted: +0.00)

plus ``WORKDIR/results.json`` (per-exit exact match and ROUGE-L per method, pairwise scores
(W-L)/(W+L+T) over both presentation orders, KL / cosine summaries, wall times) and PNGs:
``pairwise_soft_vs_sft.png`` (Fig. 5.1), ``kl_{sft,soft}.png`` and ``cosine_{sft,soft}.png``
(Figs. 5.4 / 5.5). Every phase has its own sub-workdir with orbax checkpoints and
``metrics.jsonl``; rerunning the command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

# Simulated CPU devices must exist before JAX starts its backends.
from sortedjax import sharding  # noqa: E402  (imports jax but starts no backend)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftExperiment:
    workdir: str = "runs/soft"
    mesh: str = "8"  # "8" = 8-way FSDP; "data:2,fsdp:4,tensor:1"; "all" = FSDP over every device
    model: str | None = None  # HF dir or hub id; None -> build the small offline base model
    dataset: str = "builtin"
    eval_dataset: str | None = None
    eval_limit: int | None = None
    exits: str | None = None  # "2,4,8"; None -> default_exits (12..40 step 4 of 40, scaled)
    dtype: str = "float32"
    steps: int = 100
    batch_size: int = 32
    grad_accum: int = 1
    learning_rate: float = 1e-3
    ict_steps: int = 60
    ict_learning_rate: float = 3e-3
    extracted: str = "auto"  # layer counts for extracted fine-tuning: "3,5"; "auto" = the middle exit; "" = none
    max_len: int = 48
    max_response_len: int = 8
    max_new_tokens: int = 6
    eval_batch_size: int = 64
    judge: str | None = None  # HF dir of an LLM judge (PandaLM); None -> exact match + ROUGE-L
    seed: int = 0
    distributed: bool = False
    # the offline base model
    base_layers: int = 8
    base_hidden: int = 64
    base_heads: int = 4
    base_steps: int = 500
    base_learning_rate: float = 3e-3
    base_docs: int = 4000
    # The base model stands in for a downloaded LLaMA-2, so by default it trains on one device
    # (on simulated CPU devices every collective costs a thread rendezvous); fine-tuning is sharded.
    base_sharded: bool = False

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        for f in ("steps", "batch_size", "grad_accum", "ict_steps", "max_len", "max_response_len",
                  "max_new_tokens", "eval_batch_size", "base_layers", "base_hidden", "base_heads", "base_docs"):
            if getattr(self, f) < (0 if f in ("steps", "ict_steps") else 1):
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        if self.model is None and self.dataset != "builtin":
            raise ValueError("the built-in base model only knows the built-in task; give --model with --dataset")


def parse_args(argv=None) -> SoftExperiment:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SoftExperiment()
    for f in dataclasses.fields(SoftExperiment):
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if isinstance(d, bool):
            p.add_argument(flag, action="store_true", default=d)
        else:
            t = str(f.type)
            typ = int if t.startswith("int") else float if t.startswith("float") else str
            p.add_argument(flag, type=typ, default=d)
    return SoftExperiment(**vars(p.parse_args(argv)))


# ------------------------------------------------------------------------------ phases


def _log(msg: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(msg, flush=True)


def _train_cfg(cfg: SoftExperiment, sub: str, steps: int, lr: float, **kw):
    from sortedjax.train import TrainConfig

    return TrainConfig(workdir=os.path.join(cfg.workdir, sub), steps=steps, learning_rate=lr,
                       schedule="warmup_cosine", warmup_steps=min(20, steps // 10), end_lr_factor=0.1,
                       optimizer="adamw", grad_clip_norm=1.0, grad_accum=cfg.grad_accum,
                       checkpoint_every=100, log_every=10, seed=cfg.seed, desc=sub, **kw)


def build_base(cfg: SoftExperiment, mesh, task) -> str:
    """The offline base model: word tokenizer + LM training on generated text -> HF dir."""
    from flax import nnx

    from sortedjax import instruct_data as idata
    from sortedjax import soft
    from sortedjax.models import llama
    from sortedjax.train import ArrayBatches, train

    out = os.path.join(cfg.workdir, "base", "hf")
    if os.path.exists(os.path.join(out, "config.json")) and os.path.exists(os.path.join(out, "tokenizer.json")):
        _log(f"reusing base model {out}")
        return out
    corpus = idata.builtin_corpus(task, num_docs=cfg.base_docs, seed=cfg.seed)
    tok = idata.build_tokenizer(corpus + [e.prompt + " " + e.output for e in task.train + task.eval])
    mcfg = llama.LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.base_hidden, intermediate_size=cfg.base_hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=cfg.base_layers, num_attention_heads=cfg.base_heads,
        num_key_value_heads=max(1, cfg.base_heads // 2), max_position_embeddings=256, rope_theta=10000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = llama.Llama(mcfg, rngs=nnx.Rngs(cfg.seed))
    data = ArrayBatches(idata.encode_lm(tok, corpus, max_len=cfg.max_len).arrays(), cfg.batch_size, seed=cfg.seed)
    loss = soft.make_loss(soft.SoftConfig(mode="sft", exits=(cfg.base_layers,), num_layers=cfg.base_layers))
    res = train(model, loss, data, _train_cfg(cfg, "base/train", cfg.base_steps, cfg.base_learning_rate),
                mesh=mesh if cfg.base_sharded else None)
    import jax

    if jax.process_index() == 0:
        llama.save_pretrained(res.model, out)
        tok.save_pretrained(out)
    _log(f"base model: {cfg.base_layers} layers, final LM loss {res.history[-1]['loss']:.3f}, saved to {out}")
    return out


def load_examples(cfg: SoftExperiment):
    from sortedjax import instruct_data as idata

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


def finetune(cfg: SoftExperiment, mesh, mode: str, init_path: str, exits, num_layers, data, *, steps, lr, **load_kw):
    """One fine-tuning phase in its own sub-workdir (resumes); returns the trained model."""
    from sortedjax import soft
    from sortedjax.models import llama
    from sortedjax.train import train

    model = llama.from_pretrained(init_path, dtype=cfg.dtype, mesh=mesh, **load_kw)
    scfg = soft.SoftConfig(mode=mode, exits=exits, num_layers=num_layers, response_len=cfg.max_response_len)
    name = mode if mode != "extracted" else f"extracted_{exits[0]}"
    trainable = soft.head_filter() if mode == "sft_ict" else None
    kw = {"trainable": trainable} if trainable is not None else {}
    t0 = time.time()
    res = train(model, soft.make_loss(scfg), data, _train_cfg(cfg, name, steps, lr), mesh=mesh, **kw)
    last = res.history[-1] if res.history else {}
    _log(f"{name}: {steps} steps, loss {last.get('loss', float('nan')):.3f} ({time.time() - t0:.0f}s)")
    return res.model, last


def generate_at_exits(cfg: SoftExperiment, model, tok, examples, exits) -> dict[int, list[str]]:
    """Greedy responses to every eval prompt at every exit."""
    import numpy as np

    from sortedjax import instruct_data as idata
    from sortedjax.models import llama

    plen = max(len(tok(e.prompt, add_special_tokens=False)["input_ids"]) + 1 for e in examples)
    ids, att = idata.encode_prompts(tok, examples, max_len=min(plen, cfg.max_len))
    n, bs = len(examples), min(cfg.eval_batch_size, len(examples))
    pad = (-n) % bs
    ids, att = np.concatenate([ids, ids[:pad]]), np.concatenate([att, att[:pad]])
    out = {}
    for e in exits:
        toks = [llama.generate(model, ids[i : i + bs], attention_mask=att[i : i + bs], max_new_tokens=cfg.max_new_tokens,
                               exit_layer=e, temperature=0.0, stop_tokens=(tok.eos_token_id,),
                               pad_id=idata.pad_id_of(tok)) for i in range(0, len(ids), bs)]
        out[e] = idata.decode_responses(tok, np.concatenate(toks)[:n])
    return out


def score(outputs: dict[int, list[str]], examples) -> dict:
    from sortedjax import evaluation as ev

    refs = [e.references for e in examples]
    exits = sorted(outputs)
    return {
        "exact_match": [ev.exact_match_accuracy(outputs[e], refs) for e in exits],
        "rouge_l": [100.0 * sum(ev.best_rouge_l(p, r) for p, r in zip(outputs[e], refs)) / max(len(refs), 1) for e in exits],
    }


def make_judge(cfg: SoftExperiment, mesh):
    from sortedjax import evaluation as ev

    if cfg.judge is None:
        return ev.ExactMatchJudge(), "exact_match, then ROUGE-L"
    import numpy as np

    from sortedjax import hf
    from sortedjax.models import llama

    jmodel = llama.from_pretrained(cfg.judge, dtype=cfg.dtype, mesh=mesh)
    jtok = hf.load_tokenizer(cfg.judge)

    def generate(prompt: str) -> str:
        ids = np.asarray([[jtok.bos_token_id] + jtok(prompt, add_special_tokens=False)["input_ids"]], np.int32)
        out = llama.generate(jmodel, ids, max_new_tokens=8, stop_tokens=(jtok.eos_token_id,), pad_id=0)
        return jtok.decode(out[0], skip_special_tokens=True)

    return ev.LLMJudge(generate), f"LLM judge {cfg.judge}"


def analyse(cfg: SoftExperiment, models: dict, tok, examples, exits, figdir: str, write: bool = True) -> dict:
    """KL to the last layer and hidden-state cosine per position (Figs. 5.4 / 5.5).

    Runs on every process (the arrays span the pod); only ``write`` draws the PNGs."""
    import jax.numpy as jnp

    from sortedjax import analysis
    from sortedjax import instruct_data as idata

    enc = idata.encode_sft(tok, examples[:32], max_len=cfg.max_len, max_response_len=cfg.max_response_len, warn=False)
    att = (enc.inputs != idata.pad_id_of(tok)).astype("int32")
    att[:, 0] = 1
    length = int(att.sum(1).max())
    tokens, att = jnp.asarray(enc.inputs[:, :length]), jnp.asarray(att[:, :length])
    summary, figs = {}, []
    for name, (model, own) in models.items():
        heads = [own.index(e) if e in own else None for e in exits]
        kl = analysis.exit_kl(model, tokens, exits, attention_mask=att, heads=heads)
        cos, cos_mat = analysis.hidden_cosine(model, tokens, exits, attention_mask=att)
        if write:
            figs.append(analysis.heatmap(kl, os.path.join(figdir, f"kl_{name}.png"), title=f"{name}: KL(last || exit) per position",
                                         row_labels=exits, col_labels=range(length), xlabel="position", ylabel="exit", annotate=False))
            figs.append(analysis.heatmap(cos, os.path.join(figdir, f"cosine_{name}.png"),
                                         title=f"{name}: cosine(hidden at exit, last layer)", row_labels=exits,
                                         col_labels=range(length), xlabel="position", ylabel="exit", annotate=False))
            figs.append(analysis.heatmap(cos_mat, os.path.join(figdir, f"cosine_matrix_{name}.png"),
                                         title=f"{name}: hidden-state cosine between exits", row_labels=exits, col_labels=exits))
        summary[name] = {"kl_mean_per_exit": kl.mean(1).tolist(), "cosine_to_last_per_exit": cos.mean(1).tolist(),
                         "cosine_matrix": cos_mat.tolist()}
    return {"per_method": summary, "figures": figs}


# -------------------------------------------------------------------------------- main


def run(cfg: SoftExperiment) -> dict:
    t_start = time.time()
    if cfg.distributed:
        import jax

        jax.distributed.initialize()  # TPU pods: coordinator and process ids come from the environment
    import jax

    # make_mesh calls ensure_devices first: simulated CPU devices on a laptop.
    mesh = sharding.make_mesh(str(jax.device_count()) if cfg.mesh == "all" else cfg.mesh)
    import numpy as np

    from sortedjax import analysis, hf, soft
    from sortedjax import evaluation as ev
    from sortedjax import instruct_data as idata
    from sortedjax.models import llama
    from sortedjax.train import ArrayBatches

    main = jax.process_index() == 0
    os.makedirs(cfg.workdir, exist_ok=True)
    _log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices; workdir {cfg.workdir}")
    times = {}
    task, train_ex, eval_ex = load_examples(cfg)
    if not eval_ex:
        raise ValueError("no evaluation examples")
    t0 = time.time()
    base = cfg.model if cfg.model is not None else build_base(cfg, mesh, task)
    times["base"] = time.time() - t0
    tok = hf.load_tokenizer(base)
    if tok is None:
        raise ValueError(f"no tokenizer files in {base!r}; a Hugging Face LLaMA checkpoint needs its tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    num_layers = int(hf.load_config(hf.resolve(base))["num_hidden_layers"])
    exits = soft.parse_exits(cfg.exits, num_layers)
    _log(f"base {base}: {num_layers} layers; exits {list(exits)}; {len(train_ex)} train / {len(eval_ex)} eval examples")

    enc = idata.encode_sft(tok, train_ex, max_len=cfg.max_len, max_response_len=cfg.max_response_len)
    bs = min(cfg.batch_size, len(train_ex) // cfg.grad_accum * cfg.grad_accum)
    data = ArrayBatches(enc.arrays(), bs, seed=cfg.seed)

    results: dict = {"exits": list(exits), "num_layers": num_layers, "model": base, "dataset": cfg.dataset,
                     "num_train": len(train_ex), "num_eval": len(eval_ex), "num_truncated": enc.num_truncated,
                     "config": dataclasses.asdict(cfg)}
    outputs: dict[str, dict[int, list[str]]] = {}
    trained = {}
    for mode in ("sft", "soft"):
        t0 = time.time()
        model, last = finetune(cfg, mesh, mode, base, exits, num_layers, data, steps=cfg.steps, lr=cfg.learning_rate)
        if mode == "sft" and main:
            llama.save_pretrained(model, os.path.join(cfg.workdir, "sft", "hf"))
        outputs[mode] = generate_at_exits(cfg, model, tok, eval_ex, exits)
        results[mode] = {**score(outputs[mode], eval_ex), "final_train_loss": last}
        trained[mode] = model
        times[mode] = time.time() - t0
    if main:
        llama.save_pretrained(trained["soft"], os.path.join(cfg.workdir, "soft", "hf"))
        tok.save_pretrained(os.path.join(cfg.workdir, "soft", "hf"))

    # SFT+ICT: a separate norm + head per intermediate exit, SFT body frozen; last exit = SFT.
    t0 = time.time()
    inner = tuple(e for e in exits if e < num_layers)
    if inner:
        if jax.process_count() > 1:  # every host reads the SFT export written by process 0
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("sft_export")
        ict, last = finetune(cfg, mesh, "sft_ict", os.path.join(cfg.workdir, "sft", "hf"), inner, num_layers, data,
                             steps=cfg.ict_steps, lr=cfg.ict_learning_rate, exit_head_layers=inner)
        outputs["sft_ict"] = {**generate_at_exits(cfg, ict, tok, eval_ex, inner), num_layers: outputs["sft"][num_layers]}
        results["sft_ict"] = {**score(outputs["sft_ict"], eval_ex), "final_train_loss": last}
        trained["sft_ict"] = ict
    times["sft_ict"] = time.time() - t0

    # Extracted fine-tuning: the first n layers fine-tuned alone, at the same budget.
    if cfg.extracted.strip() == "auto":
        depths = (exits[(len(exits) - 1) // 2],) if len(exits) > 1 else ()
    else:
        depths = soft.parse_exits(cfg.extracted, num_layers) if cfg.extracted else ()
    t0 = time.time()
    results["extracted"] = {}
    for n in depths:
        m, last = finetune(cfg, mesh, "extracted", base, (n,), num_layers, data, steps=cfg.steps, lr=cfg.learning_rate)
        o = generate_at_exits(cfg, m, tok, eval_ex, (n,))
        outputs[f"extracted_{n}"] = o
        results["extracted"][str(n)] = {**{k: v[0] for k, v in score(o, eval_ex).items()}, "final_train_loss": last}
    times["extracted"] = time.time() - t0

    # Pairwise scores (W-L)/(W+L+T), both presentation orders.
    t0 = time.time()
    judge, judge_name = make_judge(cfg, mesh)
    systems = {f"{m}@{e}": outs[e] for m, outs in outputs.items() for e in outs}
    ins = [e.prompt for e in eval_ex]
    refs = [e.references for e in eval_ex]
    soft_rows, sft_cols = [f"soft@{e}" for e in exits], [f"sft@{e}" for e in exits]
    mat = ev.pairwise_matrix(systems, soft_rows, sft_cols, ins, refs, judge)
    pair = {"judge": judge_name, "rows": soft_rows, "cols": sft_cols, "soft_vs_sft_matrix": mat.tolist(),
            "soft_vs_sft_same_exit": np.diag(mat).tolist(), "soft_vs_sft_last": mat[:, -1].tolist()}
    if "sft_ict" in outputs:
        pair["soft_vs_sft_ict_same_exit"] = [
            ev.pairwise_score(ins, systems[f"soft@{e}"], systems[f"sft_ict@{e}"], refs, judge) for e in exits]
    for n in depths:
        pair[f"soft_vs_extracted_{n}"] = ev.pairwise_score(ins, systems[f"soft@{n}"], systems[f"extracted_{n}@{n}"], refs, judge)
    results["pairwise"] = pair
    times["pairwise"] = time.time() - t0

    t0 = time.time()
    figs = []
    if main:
        figs.append(analysis.heatmap(mat, os.path.join(cfg.workdir, "pairwise_soft_vs_sft.png"),
                                     title="SoFT vs SFT: (W-L)/(W+L+T)", row_labels=soft_rows, col_labels=sft_cols,
                                     cmap="RdBu", center=0.0))
        em = np.array([results[m]["exact_match"] for m in ("sft", "soft", "sft_ict") if m in results])
        figs.append(analysis.heatmap(em, os.path.join(cfg.workdir, "exact_match.png"), title="exact match (%) per exit",
                                     row_labels=[m for m in ("sft", "soft", "sft_ict") if m in results], col_labels=exits,
                                     xlabel="exit layer"))
    ana = analyse(cfg, {"sft": (trained["sft"], ()), "soft": (trained["soft"], ()),
                        **({"sft_ict": (trained["sft_ict"], inner)} if "sft_ict" in trained else {})},
                  tok, eval_ex, exits, cfg.workdir, write=main)
    results["analysis"] = ana.get("per_method", {})
    results["figures"] = figs + ana.get("figures", [])
    times["analysis"] = time.time() - t0
    results["samples"] = [{"prompt": eval_ex[i].instruction, "reference": eval_ex[i].output,
                           **{k: systems[k][i] for k in sorted(systems)}} for i in range(min(4, len(eval_ex)))]
    times["total"] = time.time() - t_start
    results["wall_time_s"] = times
    if main:
        with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(table(results))
        print(f"wrote {os.path.join(cfg.workdir, 'results.json')} and {len(results['figures'])} figures "
              f"in {times['total']:.0f}s")
    return results


def table(results: dict) -> str:
    methods = [m for m in ("sft", "soft", "sft_ict") if m in results]
    head = "exit | " + " | ".join(f"{m + ' EM%':>11}" for m in methods) + " | soft vs sft"
    lines = [head, "-" * len(head)]
    for j, e in enumerate(results["exits"]):
        cells = " | ".join(f"{results[m]['exact_match'][j]:11.1f}" for m in methods)
        lines.append(f"{e:4d} | {cells} | {results['pairwise']['soft_vs_sft_same_exit'][j]:+11.2f}")
    for n, r in results.get("extracted", {}).items():
        lines.append(f"extracted fine-tuning of the first {n} layers: EM {r['exact_match']:.1f}% "
                     f"(soft vs extracted: {results['pairwise'][f'soft_vs_extracted_{n}']:+.2f})")
    return "\n".join(lines)


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
