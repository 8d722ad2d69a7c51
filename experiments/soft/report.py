"""The comparisons of ``experiments.soft`` and what it leaves for a person: pairwise judging,
KL / cosine analysis, figures, the table and ``results.json``. Only process 0 writes."""

from __future__ import annotations

import json
import os
import time

import experiments.soft.table52 as soft_table52
from experiments.soft.config import SoftExperiment
from experiments.soft.phases import Context, timed
from sortedjax import decoding, hf
from sortedjax.data import instruct as idata
from sortedjax.metrics import analysis
from sortedjax.metrics import evaluation as ev
from sortedjax.models import llama

METHODS = ("sft", "soft", "sft_ict")


def make_judge(cfg: SoftExperiment, mesh):
    """(judge, its name): exact match then ROUGE-L, or an LLM judge loaded from ``--judge``."""

    if cfg.judge is None:
        return ev.ExactMatchJudge(), "exact_match, then ROUGE-L"
    import numpy as np

    jmodel = llama.from_pretrained(cfg.judge, dtype=cfg.dtype, mesh=mesh)
    jtok = hf.load_tokenizer(cfg.judge)

    def generate(prompt: str) -> str:
        ids = np.asarray([[jtok.bos_token_id] + jtok(prompt, add_special_tokens=False)["input_ids"]], np.int32)
        out = decoding.generate(jmodel, ids, max_new_tokens=8, stop_tokens=(jtok.eos_token_id,), pad_id=0)
        return jtok.decode(out[0], skip_special_tokens=True)

    return ev.LLMJudge(generate), f"LLM judge {cfg.judge}"


def judge_of(ctx: Context):
    """:func:`make_judge`, made once per run (pairwise scores and Table 5.2 share it)."""
    if ctx.judge is None:
        ctx.judge = make_judge(ctx.cfg, ctx.mesh)
    return ctx.judge


def pairwise(ctx: Context, outputs: dict[str, dict[int, list[str]]], depths) -> tuple[dict, dict[str, list[str]]]:
    """Pairwise scores (W-L)/(W+L+T) over both presentation orders: SoFT against SFT at every
    pair of exits, against SFT+ICT and extracted fine-tuning at the same exit.

    Returns (the ``pairwise`` entry of ``results.json``, every system's outputs by ``method@exit``)."""
    import numpy as np

    with timed(ctx.times, "pairwise"):
        judge, judge_name = judge_of(ctx)
        systems = {f"{m}@{e}": outs[e] for m, outs in outputs.items() for e in outs}
        ins = [e.prompt for e in ctx.eval_ex]
        refs = [e.references for e in ctx.eval_ex]
        soft_rows, sft_cols = [f"soft@{e}" for e in ctx.exits], [f"sft@{e}" for e in ctx.exits]
        mat = ev.pairwise_matrix(systems, soft_rows, sft_cols, ins, refs, judge)
        pair = {
            "judge": judge_name,
            "rows": soft_rows,
            "cols": sft_cols,
            "soft_vs_sft_matrix": mat.tolist(),
            "soft_vs_sft_same_exit": np.diag(mat).tolist(),
            "soft_vs_sft_last": mat[:, -1].tolist(),
        }
        if "sft_ict" in outputs:
            pair["soft_vs_sft_ict_same_exit"] = [
                ev.pairwise_score(ins, systems[f"soft@{e}"], systems[f"sft_ict@{e}"], refs, judge) for e in ctx.exits
            ]
        for n in depths:
            pair[f"soft_vs_extracted_{n}"] = ev.pairwise_score(
                ins, systems[f"soft@{n}"], systems[f"extracted_{n}@{n}"], refs, judge
            )
    return pair, systems


def analyse(cfg: SoftExperiment, models: dict, tok, examples, exits, figdir: str, write: bool = True) -> dict:
    """KL to the last layer and hidden-state cosine per position (Figs. 5.4 / 5.5).

    ``models``: ``{name: (model, exits that have their own head)}``. Runs on every process
    (the arrays span the pod); only ``write`` draws the PNGs."""
    import jax.numpy as jnp

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
            for kind, per_pos, what in (
                ("kl", kl, "KL(last || exit)"),
                ("cosine", cos, "cosine(hidden at exit, last layer)"),
            ):
                path = os.path.join(figdir, f"{kind}_{name}.png")
                figs.append(
                    analysis.heatmap(
                        per_pos,
                        path,
                        title=f"{name}: {what} per position",
                        row_labels=exits,
                        col_labels=range(length),
                        xlabel="position",
                        ylabel="exit",
                        annotate=False,
                    )
                )
            figs.append(
                analysis.heatmap(
                    cos_mat,
                    os.path.join(figdir, f"cosine_matrix_{name}.png"),
                    title=f"{name}: hidden-state cosine between exits",
                    row_labels=exits,
                    col_labels=exits,
                )
            )
        summary[name] = {
            "kl_mean_per_exit": kl.mean(1).tolist(),
            "cosine_to_last_per_exit": cos.mean(1).tolist(),
            "cosine_matrix": cos_mat.tolist(),
        }
    return {"per_method": summary, "figures": figs}


def figures_and_analysis(ctx: Context, results: dict, trained: dict) -> dict:
    """The pairwise and exact-match heatmaps (process 0) and :func:`analyse` of every method.

    Returns the ``analysis`` and ``figures`` entries of ``results.json``."""
    import numpy as np

    cfg, exits = ctx.cfg, ctx.exits
    with timed(ctx.times, "analysis"):
        figs = []
        if ctx.main:
            pair = results["pairwise"]
            figs.append(
                analysis.heatmap(
                    np.asarray(pair["soft_vs_sft_matrix"]),
                    os.path.join(cfg.workdir, "pairwise_soft_vs_sft.png"),
                    title="SoFT vs SFT: (W-L)/(W+L+T)",
                    row_labels=pair["rows"],
                    col_labels=pair["cols"],
                    cmap="RdBu",
                    center=0.0,
                )
            )
            methods = [m for m in METHODS if m in results]
            em = np.array([results[m]["exact_match"] for m in methods])
            figs.append(
                analysis.heatmap(
                    em,
                    os.path.join(cfg.workdir, "exact_match.png"),
                    title="exact match (%) per exit",
                    row_labels=methods,
                    col_labels=exits,
                    xlabel="exit layer",
                )
            )
        models = {"sft": (trained["sft"], ()), "soft": (trained["soft"], ())}
        if "sft_ict" in trained:
            models["sft_ict"] = (trained["sft_ict"], ctx.inner)
        ana = analyse(cfg, models, ctx.tok, ctx.eval_ex, exits, cfg.workdir, write=ctx.main)
    return {"analysis": ana.get("per_method", {}), "figures": figs + ana.get("figures", [])}


def decoding_table(ctx: Context, trained: dict) -> dict:
    """Table 5.2 (:mod:`experiments.soft.table52`): autoregressive, self-speculative and dynamic
    decoding of the SoFT and SFT models, timed; the ``table_5_2`` entries of ``results.json``."""

    judge, judge_name = judge_of(ctx)
    rows, setup = soft_table52.table_5_2(ctx, {m: trained[m] for m in ("soft", "sft")}, judge)
    return {"table_5_2": rows, "table_5_2_setup": {**setup, "judge": judge_name}}


def finish(ctx: Context, results: dict, systems: dict[str, list[str]]) -> dict:
    """Add sample outputs and wall times; process 0 writes ``results.json`` and prints the table."""
    ex = ctx.eval_ex
    results["samples"] = [
        {"prompt": ex[i].instruction, "reference": ex[i].output, **{k: systems[k][i] for k in sorted(systems)}}
        for i in range(min(4, len(ex)))
    ]
    ctx.times["total"] = time.time() - ctx.t_start
    results["wall_time_s"] = ctx.times
    if ctx.main:
        path = os.path.join(ctx.cfg.workdir, "results.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(table(results))
        if "table_5_2" in results:
            print(soft_table52.format_table(results["table_5_2"], results.get("table_5_2_setup")))
        print(f"wrote {path} and {len(results['figures'])} figures in {ctx.times['total']:.0f}s")
    return results


def table(results: dict) -> str:
    """Exact match per exit and method, and SoFT's pairwise score against SFT at each exit."""
    methods = [m for m in METHODS if m in results]
    head = "exit | " + " | ".join(f"{m + ' EM%':>11}" for m in methods) + " | soft vs sft"
    lines = [head, "-" * len(head)]
    for j, e in enumerate(results["exits"]):
        cells = " | ".join(f"{results[m]['exact_match'][j]:11.1f}" for m in methods)
        lines.append(f"{e:4d} | {cells} | {results['pairwise']['soft_vs_sft_same_exit'][j]:+11.2f}")
    for n, r in results.get("extracted", {}).items():
        lines.append(
            f"extracted fine-tuning of the first {n} layers: EM {r['exact_match']:.1f}% "
            f"(soft vs extracted: {results['pairwise'][f'soft_vs_extracted_{n}']:+.2f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit("experiments.soft.report is part of python -m experiments.soft, not a command of its own")
