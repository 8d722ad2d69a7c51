"""Table 5.2 of the thesis (5.5.3) in ``experiments.soft``: faster decoding with the SoFT exits.

For each of the SoFT and SFT models, on the held-out prompts in the batches
:func:`experiments.soft.phases.generate_at_exits` uses (same ``max_new_tokens`` and stop token),
greedy:

* ``autoregressive``: :func:`sortedjax.decoding.generate` at full depth, the reference;
* ``speculative``: :func:`sortedjax.decoding.speculative_generate` with each inner exit as the
  draft (``num_draft`` tokens drafted per verification). Greedy self-speculation must give the
  autoregressive tokens exactly: :func:`measure` raises ``RuntimeError`` when it does not;
* ``dynamic``: :func:`sortedjax.decoding.early_exit_generate` over every exit with the thesis'
  thresholds (0.95 ... 0.7 at layers 12..36 of 40) scaled to the model's depth.

Columns: ms per generated token (the best of ``repeats`` timed passes over every batch, after a
warm-up pass that also compiles; the modes take turns within each pass so that a change in load
hits them alike), speedup over autoregressive (ratio of ms/token), exact match % (scored as the
per-exit table scores), the pairwise score (W-L)/(W+L+T) against the autoregressive responses
with the job's judge, and the rejection ratio (rejected / drafted; speculative rows) or the mean
exit layer over the generated tokens (dynamic row). A generated token is one up to and including
a row's first stop token, of the real (not batch-filling) prompts; the mean exit layer counts
each response's first token too, which comes from the full-depth prefill
(``mean_exit_layer_after_first`` in ``results.json`` leaves it out).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.soft.phases import decode_kwargs, eval_batches, log, score, timed
from sortedjax import decoding
from sortedjax.data import instruct as idata
from sortedjax.metrics import evaluation as ev

REPEATS = 5  # timed passes per mode after the warm-up; the best one counts
NUM_DRAFT = 4  # speculative_generate's default


@dataclasses.dataclass
class Run:
    """One decoding mode on every eval prompt: what :func:`rows` turns into a table row."""

    mode: str  # "autoregressive", "speculative" or "dynamic"
    seconds: float  # the best timed pass over every batch
    tokens: np.ndarray  # n x max_new_tokens: the real prompts' generated ids (pad after a stop)
    outputs: list[str]  # the decoded responses
    draft_exit: int | None = None
    stats: dict = dataclasses.field(default_factory=dict)  # speculative_generate's, summed over batches
    exit_layers: np.ndarray | None = None  # dynamic: n x max_new_tokens, the layer each token left at
    thresholds: Sequence[float] | None = None

    @property
    def label(self) -> str:
        return f"speculative, draft {self.draft_exit}" if self.mode == "speculative" else self.mode


def generated(tokens: np.ndarray, stop_tokens: Sequence[int]) -> np.ndarray:
    """Which entries of ``tokens`` (n x T) were generated: everything up to and including a
    row's first stop token (what follows it is padding)."""
    tokens = np.asarray(tokens)
    hit = (
        np.isin(tokens, np.asarray(list(stop_tokens), dtype=tokens.dtype))
        if len(stop_tokens)
        else np.zeros_like(tokens, bool)
    )
    return ~((np.cumsum(hit, axis=1) - hit) > 0)


def rows(runs: Sequence[Run], examples, stop_tokens: Sequence[int], judge=None) -> list[dict]:
    """The table rows of one model; ``runs[0]`` is the autoregressive reference."""

    ar = runs[0]
    if ar.mode != "autoregressive":
        raise ValueError(f"the first run must be the autoregressive one, got {ar.mode!r}")
    ins, refs = [e.prompt for e in examples], [e.references for e in examples]
    judge = judge or ev.ExactMatchJudge()

    def ms_per_token(r: Run) -> tuple[float, int]:
        n = int(generated(r.tokens, stop_tokens).sum())
        return 1000.0 * r.seconds / max(n, 1), n

    ar_ms, _ = ms_per_token(ar)
    out = []
    for r in runs:
        ms, n = ms_per_token(r)
        row = {
            "mode": r.mode,
            "draft_exit": r.draft_exit,
            "ms_per_token": ms,
            "speedup": ar_ms / ms if ms > 0 else float("nan"),
            "exact_match": score({0: r.outputs}, examples)["exact_match"][0],
            "pairwise_vs_autoregressive": ev.pairwise_score(ins, r.outputs, ar.outputs, refs, judge),
            "identical_to_autoregressive": bool(np.array_equal(r.tokens, ar.tokens)),
            "rejection_ratio": None,
            "mean_exit_layer": None,
            "num_tokens": n,
            "seconds": r.seconds,
        }
        if r.mode == "speculative":
            row.update(
                rejection_ratio=r.stats["rejection_ratio"],
                acceptance_rate=r.stats["acceptance_rate"],
                tokens_per_verify=r.stats["tokens_per_verify"],
            )
        if r.mode == "dynamic":
            gen = generated(r.tokens, stop_tokens)
            row["mean_exit_layer"] = float(r.exit_layers[gen].mean())
            # the first token comes from the full-depth prefill; the rest from the early-exit loop
            row["mean_exit_layer_after_first"] = (
                float(r.exit_layers[:, 1:][gen[:, 1:]].mean()) if gen[:, 1:].any() else None
            )
            row["thresholds"] = [float(t) for t in r.thresholds]
        out.append(row)
    return out


def format_table(table: dict[str, list[dict]], setup: dict | None = None) -> str:
    """The printed Table 5.2: one block of rows per model."""
    head = (
        f"{'model':5} | {'mode':24} | {'ms/token':>8} | {'speedup':>7} | {'EM%':>5} | {'vs AR':>6} | "
        f"{'rejection':>9} | {'mean exit':>9}"
    )
    title = "Table 5.2: decoding speed and quality"
    if setup:
        title += (
            f" ({setup['num_prompts']} prompts in batches of {setup['batch_size']}, {setup['max_new_tokens']} new "
            f"tokens, greedy, {setup['num_draft']} drafted tokens per verification, best of {setup['repeats']} "
            "timed passes)"
        )
    lines = [title, head, "-" * len(head)]
    for model, model_rows in table.items():
        for r in model_rows:
            label = f"speculative, draft {r['draft_exit']}" if r["mode"] == "speculative" else r["mode"]
            rej = "-" if r.get("rejection_ratio") is None else f"{r['rejection_ratio']:.2f}"
            ex = "-" if r.get("mean_exit_layer") is None else f"{r['mean_exit_layer']:.2f}"
            lines.append(
                f"{model:5} | {label:24} | {r['ms_per_token']:8.3f} | {r['speedup']:6.2f}x | {r['exact_match']:5.1f} | "
                f"{r['pairwise_vs_autoregressive']:+6.2f} | {rej:>9} | {ex:>9}"
            )
    return "\n".join(lines)


def measure(ctx, model, name: str = "model", repeats: int = REPEATS, num_draft: int = NUM_DRAFT) -> list[Run]:
    """Every mode on every eval batch: a warm-up pass (the outputs), then ``repeats`` timed passes
    with the modes taking turns. Raises ``RuntimeError`` when a speculative output differs from
    the autoregressive one."""

    batches, n = eval_batches(ctx)
    kw = decode_kwargs(ctx)
    N = ctx.num_layers
    thresholds = decoding.thesis_thresholds(ctx.inner, N)

    def autoregressive():
        return [decoding.generate(model, ids, attention_mask=att, temperature=0.0, **kw) for ids, att in batches], {}

    def speculative(e):
        def go():
            res = [
                decoding.speculative_generate(
                    model, ids, attention_mask=att, draft_exit=e, num_draft=num_draft, temperature=0.0, **kw
                )
                for ids, att in batches
            ]
            return [t for t, _ in res], {"stats": [s for _, s in res]}

        return go

    def dynamic():
        res = [
            decoding.early_exit_generate(model, ids, attention_mask=att, exits=ctx.exits, **kw) for ids, att in batches
        ]
        return [t for t, _ in res], {"exit_layers": [u for _, u in res]}

    modes = [("autoregressive", None, autoregressive)]
    modes += [("speculative", e, speculative(e)) for e in ctx.inner]
    modes += [("dynamic", None, dynamic)] if ctx.inner else []

    first = [fn() for _, _, fn in modes]  # warm-up: compiles, and gives the outputs
    best = [float("inf")] * len(modes)
    for _ in range(repeats):
        for i, (_, _, fn) in enumerate(modes):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)

    runs = []
    for (mode, e, _), (toks, extra), secs in zip(modes, first, best):
        tokens = np.concatenate(toks)[:n]
        run = Run(mode, secs, tokens, idata.decode_responses(ctx.tok, tokens), draft_exit=e)
        if mode == "speculative":
            stats = extra["stats"]
            # summed over batches; K is fixed, so every row's verification drafted num_draft tokens
            drafted = sum(s["drafted"] for s in stats)
            accepted = sum(round(s["acceptance_rate"] * s["drafted"]) for s in stats)
            row_verifies = drafted // num_draft
            run.stats = {
                "rejection_ratio": (drafted - accepted) / max(drafted, 1),
                "acceptance_rate": accepted / max(drafted, 1),
                "tokens_per_verify": (accepted + row_verifies) / max(row_verifies, 1),
                "drafted": drafted,
            }
            if not np.array_equal(tokens, runs[0].tokens):
                bad = int((tokens != runs[0].tokens).any(1).sum())
                raise RuntimeError(
                    f"{name}: greedy self-speculative decoding with draft exit {e} differs from autoregressive "
                    f"decoding in {bad} of {n} responses; they must be identical"
                )
        if mode == "dynamic":
            run.exit_layers = np.concatenate(extra["exit_layers"])[:n]
            run.thresholds = thresholds
        runs.append(run)
    return runs


def table_5_2(ctx, models: dict[str, Any], judge=None, repeats: int = REPEATS) -> tuple[dict, dict]:
    """``({model name: rows}, setup)``: the ``table_5_2`` and ``table_5_2_setup`` entries of
    ``results.json``."""

    with timed(ctx.times, "table_5_2"):
        table = {}
        for name, model in models.items():
            t0 = time.time()
            runs = measure(ctx, model, name, repeats=repeats)
            table[name] = rows(runs, ctx.eval_ex, (ctx.tok.eos_token_id,), judge)
            log(f"table 5.2, {name}: {len(runs)} modes measured ({time.time() - t0:.0f}s)")
        batches, n = eval_batches(ctx)
        setup = {
            "num_prompts": n,
            "batch_size": int(batches[0][0].shape[0]),
            "num_batches": len(batches),
            "max_new_tokens": ctx.cfg.max_new_tokens,
            "num_draft": NUM_DRAFT,
            "repeats": repeats,
            "dynamic_exits": list(ctx.exits),
        }
    return table, setup


if __name__ == "__main__":
    raise SystemExit("experiments.soft.table52 is part of python -m experiments.soft, not a command of its own")
