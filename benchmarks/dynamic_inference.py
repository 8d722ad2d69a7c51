"""ms/token of self-speculative and early-exit (dynamic) decoding vs our autoregressive decoding
and vs transformers' ``generate`` / ``generate(assistant_early_exit=E)`` (issue 12, thesis Table 5.2).

    python benchmarks/dynamic_inference.py [--reps 5] [--batches 1 8] [--models b_deep] [--retrain]

Models (``benchmarks/dynamic_inference_model.py``): (a) the main job's architecture (8 layers,
hidden 64) and (b) a deeper one where weight reads, not dispatch, dominate a token (24 layers,
hidden 384), both briefly SoFT-trained (every exit's loss through the shared head) as language
models on the built-in task's generated text, so their exits agree with the last layer. The first
run trains them (about 1 min for (a) and 10 min for (b) on a quiet 2-core CPU)
and caches the weights in ``~/.cache/sortedjax/dynamic_inference`` keyed by the configuration;
later runs load them (``--retrain`` trains again). Prompts: the first 16 tokens of held-out
generated documents. Greedy, 32 new tokens, float32, no stop token. Speculative decoding with
every inner exit as the draft, fixed K=4 and adaptive K (start 4, chunk 8); dynamic inference over
the same exits with the thesis' thresholds scaled to the depth. Every ratio is measured in one run
after a warm-up (compilation excluded): the modes take turns in each of ``--reps`` rounds, best;
transformers and our autoregressive and best speculative mode are timed again in shared rounds.
``weight_read_model_speedup``: what the speedup would be if a token cost only its layers' weight
reads (:func:`weight_read_speedup`). ``continuation_identical_percent``: the share of timed rows
whose whole continuation equals autoregressive decoding's (coarse: B rows). ``dynamic_em_drop``: exact-match points
lost on the built-in task's 259 questions (:func:`task_em`). Takes ~1.5 min on a quiet 2-core CPU once the models are cached.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dynamic_inference_model as dm  # noqa: E402 (benchmarks/ is on sys.path when run as a script)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from sortedjax import decoding  # noqa: E402
from sortedjax.metrics import evaluation
from sortedjax.models import llama  # noqa: E402


def timed_modes(modes: dict, reps: int) -> tuple[dict, dict]:
    """``({name: best seconds}, {name: output})``: a warm-up call of each mode (compilation, the
    output), then ``reps`` rounds in which the modes take turns (a change in load hits them alike).
    The fastest round counts: on a shared machine other processes only ever add time."""
    outs = {k: fn() for k, fn in modes.items()}
    ts = {k: [] for k in modes}
    for _ in range(reps):
        for k, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: float(np.min(v)) for k, v in ts.items()}, outs


def weight_read_speedup(tokens_per_verify: float, mean_k: float, draft: int, layers: int) -> float:
    """The speedup over autoregressive decoding if a token's cost were its layers' weight reads
    (batch-1 decoding is memory bound): a round runs ``K + 1`` draft passes of ``draft`` layers
    and one verification of the other ``layers - draft`` (the chunk reads each weight once), and
    makes ``tokens_per_verify`` tokens. What the measured speedup is compared with: where they
    agree, the loop adds no overhead beyond the model's own layer costs."""
    return tokens_per_verify / (((mean_k + 1) * draft + layers - draft) / layers)


@functools.partial(jax.jit, static_argnums=(0, 3, 6))
def _passes(graphdef, state, cache, T, first, last, reps):
    """``reps`` dependent passes of ``T`` tokens through layers ``first+1..last`` with the cache
    (``forward_cached``, written at slot 16): what one draft step or one verification costs alone."""
    m = nnx.merge(graphdef, state)

    def body(_, c):
        h0 = jnp.zeros((1, T, m.cfg.hidden_size), jnp.float32) + c[0]
        h, cache = m.forward_cached(
            jnp.zeros((1, T), jnp.int32),
            c[1],
            start=jnp.int32(16),
            positions_BxT=jnp.arange(T)[None] + 16,
            exit_layer=last,
            start_layer=first,
            h_BxTxD=h0,
        )
        return h[0, 0, 0] * 0, cache

    return jax.lax.fori_loop(0, reps, body, (jnp.float32(0), cache))


def round_accounting(model, prompts, draft: int, K: int, T: int, ar_s: float, spec_s: float, verifies: int) -> dict:
    """Where a batch-1 speculative run's time goes: the prefill (timed alone, host work included),
    one token through all layers, one draft pass (``draft`` layers) and one verification of
    ``K + 1`` tokens through the other layers, each timed alone in a compiled loop of 50. The
    predicted round, ``(K + 1)`` draft passes + 1 verification, is compared with the measured
    one, ``(run - prefill) / verifications``; ``speedup_after_prefill`` is the ratio of the
    token loops alone (the prefill is the same in every mode and dilutes the end-to-end ratio)."""
    from sortedjax.decoding import common

    def best_ms(fn, reps=5):
        jax.block_until_ready(fn())
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - t0)
        return 1e3 * min(ts)

    N = model.num_layers
    graphdef, state = nnx.split(model)
    cache = model.init_cache(1, common.BUCKET)
    n = 50

    def per_pass(T_, first, last):
        return best_ms(lambda: _passes(graphdef, state, cache, T_, jnp.int32(first), jnp.int32(last), n)) / n

    prefill = best_ms(lambda: common.start(model, prompts, None, 0, T, None, extra=K + 1).logits)
    full, d, v = per_pass(1, 0, N), per_pass(1, 0, draft), per_pass(K + 1, draft, N)
    ar_ms, spec_ms = 1e3 * ar_s, 1e3 * spec_s
    return {
        "draft_exit": draft,
        "num_draft": K,
        "prefill_ms": prefill,
        "full_token_ms": full,
        "draft_pass_ms": d,
        "verify_ms": v,
        "predicted_round_ms": (K + 1) * d + v,
        "measured_round_ms": (spec_ms - prefill) / verifies,
        "measured_ar_token_ms": (ar_ms - prefill) / (T - 1),
        "speedup_after_prefill": (ar_ms - prefill) / (spec_ms - prefill),
    }


def task_em(model, tok, spec, exits) -> dict:
    """The accuracy cost of dynamic inference as the thesis scores it (Table 5.2's exact match):
    every question of the built-in task (259) answered greedily by autoregressive decoding and by
    dynamic inference with the thresholds that are timed; exact match of each against the gold
    answers, the drop in points, and the share of questions whose answer changed at all (an upper
    bound on the points any answer metric can lose, however well the model knows the facts).
    Rows leave at their own exits, so the batch gives each question the answer it gets alone."""
    ids, att, gold = dm.task_questions(tok, spec)
    thr = decoding.thesis_thresholds(exits, model.num_layers)
    ar = dm.answers(tok, decoding.generate(model, ids, attention_mask=att, max_new_tokens=8))
    out, used = decoding.early_exit_generate(
        model, ids, attention_mask=att, max_new_tokens=8, exits=exits, threshold=thr
    )
    dyn = dm.answers(tok, out)
    em_ar, em_dyn = evaluation.exact_match_accuracy(ar, gold), evaluation.exact_match_accuracy(dyn, gold)
    return {
        "questions": len(gold),
        "thresholds": list(thr),
        "em_autoregressive": em_ar,
        "em_dynamic": em_dyn,
        "em_drop_points": em_ar - em_dyn,
        "answers_changed_points": 100.0 * float(np.mean([a != b for a, b in zip(ar, dyn)])),
        "mean_exit_layer": float(used[:, 1:].mean()),
    }


def run_model(name, args):
    spec = dm.MODELS[name]
    t0 = time.time()
    model, tok, held_out, record = dm.load_or_train(name, spec, cache=args.cache, retrain=args.retrain)
    record["seconds"] = time.time() - t0
    N = model.num_layers
    tmp = tempfile.mkdtemp()
    llama.save_pretrained(model, tmp)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).eval()
    T = args.new_tokens
    inner = [e for e in spec.exits if e < N]
    res = {"layers": N, "hidden": model.cfg.hidden_size, "new_tokens": T, "exits": inner, "training": record}
    res["dynamic_task_em"] = task_em(model, tok, spec, inner)
    for B in args.batches:
        prompts = dm.prompts(tok, held_out, B, args.prompt_len)
        thr = decoding.thesis_thresholds(inner, N)
        modes = {"ar": functools.partial(decoding.generate, model, prompts, max_new_tokens=T)}
        for e in inner:
            for label, kw in (("k4", dict(num_draft=4, max_draft=4)), ("adaptive", dict(num_draft=4, adaptive=True))):
                modes[f"exit{e}_{label}"] = functools.partial(
                    decoding.speculative_generate, model, prompts, max_new_tokens=T, draft_exit=e, **kw
                )
        modes["dynamic"] = functools.partial(
            decoding.early_exit_generate, model, prompts, max_new_tokens=T, exits=inner, threshold=thr
        )
        secs, outs = timed_modes(modes, args.reps)
        ar_s, ar = secs["ar"], outs["ar"]
        row = {"ours_autoregressive_ms_per_token": 1e3 * ar_s / T, "prompts": prompts.tolist()}
        spec_rows = {}
        for k in modes:
            if k.startswith("exit"):
                out, st = outs[k]
                spec_rows[k] = {
                    "ms_per_token": 1e3 * secs[k] / T,
                    "speedup": ar_s / secs[k],
                    "identical_tokens": bool(np.array_equal(out, ar)),
                    **{
                        s: st[s]
                        for s in ("acceptance_rate", "rejection_ratio", "tokens_per_verify", "verifies", "drafted")
                    },
                }
                if B == 1:  # one row: every round drafts the same K for it
                    e = int(k.split("_")[0][4:])
                    spec_rows[k]["weight_read_model_speedup"] = weight_read_speedup(
                        st["tokens_per_verify"], st["drafted"] / st["verifies"], e, N
                    )
        row["speculative"] = spec_rows
        if B == 1:
            k4 = max((k for k in spec_rows if k.endswith("_k4")), key=lambda k: spec_rows[k]["speedup"])
            row["round_accounting"] = round_accounting(
                model, prompts, int(k4.split("_")[0][4:]), 4, T, ar_s, secs[k4], spec_rows[k4]["verifies"]
            )
        out, used = outs["dynamic"]
        row["dynamic"] = {
            "thresholds": list(thr),
            "ms_per_token": 1e3 * secs["dynamic"] / T,
            "speedup": ar_s / secs["dynamic"],
            # rows whose whole continuation equals autoregressive decoding's (B rows: coarse)
            "continuation_identical_percent": 100.0 * float(np.mean((out == ar).all(1))),
            "token_agreement_vs_autoregressive": float(np.mean(out == ar)),
            "mean_exit_layer": float(used[:, 1:].mean()),  # token 0 comes from the full-depth prefill
            "exit_layer_histogram": {int(u): int(c) for u, c in zip(*np.unique(used[:, 1:], return_counts=True))},
        }
        with torch.no_grad():
            pt = torch.tensor(prompts, dtype=torch.long)
            gen = dict(do_sample=False, max_new_tokens=T, min_new_tokens=T, pad_token_id=0, eos_token_id=None)
            hf = {"hf_ar": lambda: ref.generate(pt, **gen)}  # noqa: B023 (called in this iteration)
            best = max(spec_rows, key=lambda k: spec_rows[k]["speedup"])
            e_best = int(best.split("_")[0][4:])
            if B == 1:  # transformers' assisted generation is batch 1 only
                hf["hf_spec"] = lambda: ref.generate(pt, assistant_early_exit=e_best, **gen)  # noqa: B023
            hf["ar"], hf[best] = modes["ar"], modes[best]  # ours again, in the same rounds
            hsecs, houts = timed_modes(hf, args.reps)
        row["transformers_autoregressive_ms_per_token"] = 1e3 * hsecs["hf_ar"] / T
        row["transformers_identical_tokens"] = bool(np.array_equal(houts["hf_ar"][:, -T:].numpy(), ar))
        row["ours_over_transformers_autoregressive"] = hsecs["hf_ar"] / hsecs["ar"]
        if B == 1:
            row["transformers_speculative"] = {
                "draft_exit": e_best,
                "ms_per_token": 1e3 * hsecs["hf_spec"] / T,
                "identical_tokens": bool(np.array_equal(houts["hf_spec"][:, -T:].numpy(), ar)),
            }
            row["ours_over_transformers_speculative"] = hsecs["hf_spec"] / hsecs[best]
        res[f"batch{B}"] = row
        print(name, f"batch {B}:", flush=True)
        print(table(row), flush=True)
        if "round_accounting" in row:
            a = row["round_accounting"]
            print(
                f"draft {a['draft_exit']} K=4: prefill {a['prefill_ms']:.2f} ms; alone: full token {a['full_token_ms']:.2f}, "
                f"draft pass {a['draft_pass_ms']:.2f}, verify {a['verify_ms']:.2f} ms -> round {a['predicted_round_ms']:.2f} "
                f"predicted, {a['measured_round_ms']:.2f} measured; speedup after the prefill "
                f"{a['speedup_after_prefill']:.2f}x",
                flush=True,
            )
    q = res["dynamic_task_em"]
    print(
        f"{name} dynamic inference on the task's {q['questions']} questions: EM {q['em_autoregressive']:.2f} "
        f"(autoregressive) -> {q['em_dynamic']:.2f}, drop {q['em_drop_points']:.2f} points, answers changed "
        f"{q['answers_changed_points']:.2f}%, mean exit {q['mean_exit_layer']:.1f} of {N}",
        flush=True,
    )
    return res


def table(row) -> str:
    lines = [
        f"{'mode':18} | {'ms/token':>8} | {'speedup':>7} | {'accept':>6} | {'tok/verify':>10} | {'model':>6} | identical"
    ]
    lines.append(f"{'autoregressive':18} | {row['ours_autoregressive_ms_per_token']:8.2f} | {1:6.2f}x |")
    for k, r in row["speculative"].items():
        m = r.get("weight_read_model_speedup")  # batch 1 only: rows of a batch draft different K
        lines.append(
            f"{k:18} | {r['ms_per_token']:8.2f} | {r['speedup']:6.2f}x | {r['acceptance_rate']:6.2f} | "
            f"{r['tokens_per_verify']:10.2f} | {'-' if m is None else f'{m:5.2f}x':>6} | {r['identical_tokens']}"
        )
    d = row["dynamic"]
    lines.append(
        f"{'dynamic':18} | {d['ms_per_token']:8.2f} | {d['speedup']:6.2f}x | mean exit {d['mean_exit_layer']:.1f}, "
        f"identical continuations {d['continuation_identical_percent']:.0f}%"
    )
    lines.append(f"{'HF autoregressive':18} | {row['transformers_autoregressive_ms_per_token']:8.2f} |")
    if "transformers_speculative" in row:
        h = row["transformers_speculative"]
        lines.append(f"{'HF assistant ' + str(h['draft_exit']):18} | {h['ms_per_token']:8.2f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/dynamic_inference.json")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--cache", default=dm.CACHE, help="where the trained benchmark models are kept")
    p.add_argument("--retrain", action="store_true", help="train the models again even if cached")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--models", nargs="+", default=list(dm.MODELS), choices=list(dm.MODELS))
    p.add_argument(
        "--torch-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="PyTorch threads (1 on a loaded machine: oversubscribed torch threads slow it down many times over)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    load_start = os.getloadavg()[0]
    results = {name: run_model(name, args) for name in args.models}
    summary = {}
    if "b_deep" in results and "batch1" in results["b_deep"]:
        b = results["b_deep"]["batch1"]
        best = max(b["speculative"].values(), key=lambda r: r["speedup"])
        summary = {
            "speculative_speedup": best["speedup"],
            "identical_tokens": all(r["identical_tokens"] for r in b["speculative"].values()),
            "dynamic_speedup": b["dynamic"]["speedup"],
            "dynamic_em_drop": results["b_deep"]["dynamic_task_em"]["em_drop_points"],
            "ours_over_transformers_autoregressive": b["ours_over_transformers_autoregressive"],
            "ours_over_transformers_speculative": b.get("ours_over_transformers_speculative"),
        }
    out = {
        **summary,
        "machine": f"{os.cpu_count()}-core CPU, jax {jax.__version__}, torch {torch.__version__}",
        "load_average_start_end": [load_start, os.getloadavg()[0]],  # > 1 on 2 cores: ratios are noisy
        "models": results,
        "args": vars(args),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
