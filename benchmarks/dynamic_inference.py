"""ms/token of self-speculative and early-exit (dynamic) decoding vs our autoregressive decoding
and vs transformers' ``generate`` / ``generate(assistant_early_exit=E)`` (issue 12, thesis Table 5.2).

    python benchmarks/dynamic_inference.py [--quick] [--out benchmarks/results/dynamic_inference.json]

Models: (a) the main job's architecture (8 layers, hidden 64) and (b) a deeper one where compute
dominates dispatch (24 layers, hidden 512). Both are random-weight models whose residual branches
are scaled down (``--residual-scale``) so that early exits mostly agree with the last layer, as a
SoFT-trained model's do; they are NOT trained (a SoFT fine-tune of (b) does not fit a 2-core CPU
budget), so acceptance rates and the EM drop say how the machinery behaves at such agreement, not
what SoFT training gives. Greedy, 32 new tokens, prompts of 16 random tokens, float32; every
ratio is measured in one run after warm-up (compilation excluded), median of ``--reps``. The
"exact match" of dynamic inference is the share of rows whose output equals autoregressive
decoding. Takes ~3-5 min on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from sortedjax import decoding  # noqa: E402
from sortedjax.models import llama  # noqa: E402

MODELS = {
    "a_main_job": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=8, num_attention_heads=4),
    "b_deep": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=24, num_attention_heads=8),
}


def build(name, residual_scale, vocab):
    kw = MODELS[name]
    cfg = llama.LlamaConfig(
        vocab_size=vocab, num_key_value_heads=kw["num_attention_heads"] // 2, max_position_embeddings=256, **kw
    )
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    layers = model.layers.layers
    for lin in (layers.attn.o, layers.mlp.down):  # small residual updates: exits agree with the last layer
        lin.kernel.value = lin.kernel.value * residual_scale
    model.embed.embedding.value = model.embed.embedding.value * 20.0  # peaked next-token distributions
    return model


def timed(fn, reps):
    out = fn()  # warm-up: compilation
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def run_model(name, args):
    model = build(name, args.residual_scale, args.vocab)
    N = model.num_layers
    tmp = tempfile.mkdtemp()
    llama.save_pretrained(model, tmp)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    T = args.new_tokens
    exits = [e for e in range(N // 4, N, N // 8)]  # e.g. 6, 9, ..., 21 of 24
    drafts = sorted({N // 4, N // 2, 3 * N // 4})
    res = {"layers": N, "hidden": model.cfg.hidden_size, "new_tokens": T, "exits": exits}
    for B in args.batches:
        prompts = rng.integers(3, args.vocab, (B, args.prompt_len)).astype(np.int32)
        row = {}
        ar_s, ar = timed(lambda: decoding.generate(model, prompts, max_new_tokens=T), args.reps)  # noqa: B023 (called at once)
        row["ours_autoregressive_ms_per_token"] = 1e3 * ar_s / T
        spec = {}
        for e in drafts:
            for label, kw in (("k4", dict(num_draft=4, max_draft=4)), ("adaptive", dict(num_draft=4, adaptive=True))):
                s, (out, st) = timed(
                    lambda: decoding.speculative_generate(model, prompts, max_new_tokens=T, draft_exit=e, **kw),  # noqa: B023 (called at once)
                    args.reps,
                )
                spec[f"exit{e}_{label}"] = {
                    "ms_per_token": 1e3 * s / T,
                    "speedup": ar_s / s,
                    "identical_tokens": bool(np.array_equal(out, ar)),
                    **{k: st[k] for k in ("acceptance_rate", "rejection_ratio", "tokens_per_verify")},
                }
        row["speculative"] = spec
        thr = decoding.thesis_thresholds(exits, N)
        s, (out, used) = timed(
            lambda: decoding.early_exit_generate(model, prompts, max_new_tokens=T, exits=exits, threshold=thr),  # noqa: B023 (called at once)
            args.reps,
        )
        em = 100.0 * float(np.mean((out == ar).all(1)))
        row["dynamic"] = {
            "thresholds": list(thr),
            "ms_per_token": 1e3 * s / T,
            "speedup": ar_s / s,
            "exact_match_vs_autoregressive": em,
            "em_drop_points": 100.0 - em,
            "mean_exit_layer": float(used[:, 1:].mean()),
        }
        with torch.no_grad():
            pt = torch.tensor(prompts, dtype=torch.long)
            gen = dict(do_sample=False, max_new_tokens=T, min_new_tokens=T, pad_token_id=0, eos_token_id=None)
            hf_s, hf_out = timed(lambda: ref.generate(pt, **gen), args.reps)  # noqa: B023 (called at once)
            row["transformers_autoregressive_ms_per_token"] = 1e3 * hf_s / T
            row["transformers_identical_tokens"] = bool(np.array_equal(hf_out[:, -T:].numpy(), ar))
            row["ours_over_transformers_autoregressive"] = hf_s / ar_s
            if B == 1:  # transformers' assisted generation is batch 1 only
                best = max(spec, key=lambda k: spec[k]["speedup"])
                e = int(best.split("_")[0][4:])
                hfs_s, _ = timed(lambda: ref.generate(pt, assistant_early_exit=e, **gen), args.reps)  # noqa: B023 (called at once)
                row["transformers_speculative"] = {"draft_exit": e, "ms_per_token": 1e3 * hfs_s / T}
                row["ours_over_transformers_speculative"] = hfs_s / (spec[best]["ms_per_token"] * T / 1e3)
        res[f"batch{B}"] = row
        print(name, f"batch {B}:", json.dumps(row, indent=1), flush=True)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/dynamic_inference.json")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--residual-scale", type=float, default=0.3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
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
            "dynamic_em_drop": b["dynamic"]["em_drop_points"],
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
