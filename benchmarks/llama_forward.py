"""Tokens/s of our jitted LLaMA forward (prefill) and KV-cache decoding vs transformers PyTorch.

    python benchmarks/llama_forward.py [--out benchmarks/results/llama_forward.json]

Same random checkpoint (saved with transformers, loaded with ours), float32, this CPU,
measured in one run after warm-up (compilation excluded). Takes ~1-2 min on a 2-core CPU.
Prints one line per configuration with the ratios ours / PyTorch (> 1: ours is faster).
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from sortedjax import decoding  # noqa: E402
from sortedjax.models import llama  # noqa: E402

CONFIGS = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}


def best_of(fns, repeats):
    """Best time of each function, alternating them so that load changes hit both alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t_list, fn in zip(times, fns):
            t = time.perf_counter()
            fn()
            t_list.append(time.perf_counter() - t)
    return [min(t) for t in times]


def run(name, hf_kw, batch, prompt_len, new_tokens, repeats):
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_kw, max_position_embeddings=1024)).eval()
        ref.save_pretrained(d)
        model = llama.from_pretrained(d)
    tokens = np.random.default_rng(0).integers(3, hf_kw["vocab_size"], (batch, prompt_len))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    jt, tt = jnp.asarray(tokens), torch.tensor(tokens)
    fwd(state, jt).block_until_ready()
    with torch.no_grad():
        ours_prefill, torch_prefill = best_of([lambda: fwd(state, jt).block_until_ready(), lambda: ref(tt)], repeats)

    gen = lambda: decoding.generate(model, tokens, max_new_tokens=new_tokens)  # noqa: E731
    ours_tokens = gen()
    mask = torch.ones_like(tt)
    hf_gen = lambda: ref.generate(
        tt,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=new_tokens,  # noqa: E731
        min_new_tokens=new_tokens,
        pad_token_id=0,
    )
    with torch.no_grad():
        theirs = hf_gen()[:, prompt_len:].numpy()
        ours_decode, torch_decode = best_of([gen, hf_gen], repeats)
    r = dict(
        config=name,
        batch=batch,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        prefill_tok_s_ours=batch * prompt_len / ours_prefill,
        prefill_tok_s_torch=batch * prompt_len / torch_prefill,
        decode_tok_s_ours=batch * new_tokens / ours_decode,
        decode_tok_s_torch=batch * new_tokens / torch_decode,
        greedy_tokens_equal=bool(np.array_equal(ours_tokens, theirs)),
    )
    r["prefill_ratio"] = r["prefill_tok_s_ours"] / r["prefill_tok_s_torch"]
    r["decode_ratio"] = r["decode_tok_s_ours"] / r["decode_tok_s_torch"]
    print(
        f"{name:6s} B={batch} P={prompt_len} new={new_tokens}: prefill {r['prefill_tok_s_ours']:9.0f} vs "
        f"{r['prefill_tok_s_torch']:9.0f} tok/s (x{r['prefill_ratio']:.2f}); decode "
        f"{r['decode_tok_s_ours']:7.0f} vs {r['decode_tok_s_torch']:7.0f} tok/s (x{r['decode_ratio']:.2f}); "
        f"greedy equal: {r['greedy_tokens_equal']}",
        flush=True,
    )
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / f"{Path(__file__).stem}.json"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS))
    a = p.parse_args(argv)
    results = [run(n, CONFIGS[n], a.batch, a.prompt_len, a.new_tokens, a.repeats) for n in a.configs.split(",")]
    meta = dict(
        device=str(jax.devices()[0]),
        jax=jax.__version__,
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        load_average_1min=os.getloadavg()[0],
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
