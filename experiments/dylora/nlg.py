"""``python -m experiments.dylora --task nlg``: DyLoRA on GPT-2 data-to-text (thesis Table 3.6).

Offline default: a small GPT-2 built here (word-level tokenizer, LM pre-training on the reference
sentences of the generated restaurant task, saved as a Hugging Face checkpoint and read back through
``gpt2.from_pretrained``), then LoRA at every rank of ``--ranks`` and one DyLoRA model fine-tuned on
``mr = reference`` with the loss on the reference; every model is merged at every rank it can be
truncated to (``sortedjax.peft.merge``) and decodes the held-out meaning representations greedily
(``sortedjax.decoding.generate``), scored by corpus BLEU-4 and ROUGE-L against all references.
``--nlg-data e2e_nlg`` (or ``e2e_nlg:FILE``) reads E2E NLG through ``datasets``; ``--model gpt2``
fine-tunes a real GPT-2 (its own tokenizer). Prints Table 3.6 per metric and writes
``results.json`` (under ``WORKDIR``), ``score_vs_rank_bleu.png`` and ``score_vs_rank_rouge_l.png``.

Measured default run: 34 min wall on the shared 2-core CPU at 16% of it (215 s user + 131 s
system; about 5-6 min quiet). BLEU-4 / ROUGE-L at ranks 1 and 8: LoRA r=8 0.0 / 9.7 and 20.6 /
41.6; DyLoRA 18.7 / 39.2 and 20.5 / 41.5; best LoRA r=2 at its own rank 27.0 BLEU.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

import experiments.dylora.report as report
from experiments.common.results import run_once
from experiments.dylora.config import train_config
from sortedjax import decoding, hf
from sortedjax import peft as lora
from sortedjax.data import instruct as idata
from sortedjax.data import nlg as nlg_data
from sortedjax.methods import dylora
from sortedjax.methods.dylora import DyLoRAConfig
from sortedjax.metrics import text as text_metrics
from sortedjax.models import gpt2
from sortedjax.train import ArrayBatches, train

NLG_MAX_LEN = 64  # tokens per training sequence (MR + reference)


def build_base(cfg, texts: list[str], mr_texts: list[str]) -> str:
    """``WORKDIR/base/hf``: a small GPT-2 LM-trained on ``texts`` with a word-level tokenizer."""
    from flax import nnx

    out = os.path.join(cfg.workdir, "base", "hf")
    if os.path.exists(os.path.join(out, "config.json")) and os.path.exists(os.path.join(out, "tokenizer.json")):
        return out
    tok = idata.task_tokenizer([*texts, *mr_texts, "="])
    mcfg = gpt2.GPT2Config(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    arrays = idata.encode_lm(tok, texts, max_len=NLG_MAX_LEN).arrays()
    tcfg = dataclasses.replace(
        train_config(cfg, os.path.join(cfg.workdir, "base", "train"), 0, "gpt-2 pre-training"),
        steps=cfg.pretrain_steps,
        warmup_steps=min(50, cfg.pretrain_steps // 10),
        checkpoint_every=max(cfg.pretrain_steps, 1),
    )
    res = train(
        gpt2.GPT2(mcfg, rngs=nnx.Rngs(0)),
        lambda m, b, k: nlg_data.lm_loss(m, b, None),
        ArrayBatches(arrays, min(cfg.batch_size, len(texts))),
        tcfg,
    )
    gpt2.save_pretrained(res.model, out)
    tok.save_pretrained(out)
    return out


def load_records(cfg):
    if cfg.nlg_data == "generated":
        return nlg_data.generated(min(cfg.n_train, 5000), min(cfg.n_eval, 200), seed=0)
    kind, _, source = cfg.nlg_data.partition(":")
    if kind != "e2e_nlg":
        raise ValueError(f"nlg_data {cfg.nlg_data!r} unknown; allowed: 'generated', 'e2e_nlg[:FILE_OR_HUB_NAME]'")
    source = source or "e2e_nlg"
    train = [
        nlg_data.D2T(r.mr, (ref,))
        for r in nlg_data.load_e2e(source, "train", limit=cfg.n_train)
        for ref in r.references
    ]
    return train, nlg_data.load_e2e(source, "validation" if source == "e2e_nlg" else "train", limit=cfg.n_eval)


def generate_at_rank(model, rank: int, tok, eval_records, max_new_tokens: int) -> list[str]:
    """Greedy outputs of ``model`` merged at ``rank`` for every eval meaning representation."""

    merged = lora.merge(model, rank)
    plen = max(len(tok(r.prompt, add_special_tokens=False)["input_ids"]) + 1 for r in eval_records)
    ids, att = idata.encode_prompts(tok, eval_records, max_len=plen)
    out = decoding.generate(
        merged,
        ids,
        attention_mask=att,
        max_new_tokens=max_new_tokens,
        stop_tokens=(tok.eos_token_id,),
        pad_id=idata.pad_id_of(tok),
    )
    return idata.decode_responses(tok, np.asarray(out))


def run(cfg) -> dict:
    os.makedirs(cfg.workdir, exist_ok=True)
    train_recs, eval_recs = load_records(cfg)
    base = cfg.model or build_base(
        cfg, nlg_data.texts_for_pretraining(train_recs), [r.mr for r in train_recs + eval_recs]
    )
    tok = hf.load_tokenizer(base)
    if tok is None:
        raise ValueError(f"no tokenizer files in {base!r}; a GPT-2 checkpoint needs its tokenizer")
    enc = idata.encode_sft(tok, train_recs, max_len=NLG_MAX_LEN, max_response_len=NLG_MAX_LEN // 2, warn=False)
    refs = [list(r.references) for r in eval_recs]
    common = dict(alpha=cfg.alpha, target_modules=tuple(cfg.target_modules))
    runs: dict[str, dict] = {}
    for seed in cfg.seeds:
        data = ArrayBatches(enc.arrays(), min(cfg.batch_size, len(train_recs)), seed=seed)
        settings = {f"lora_r{r}": DyLoRAConfig.lora(r, **common) for r in sorted(cfg.ranks)}
        settings["dylora"] = DyLoRAConfig(r_max=cfg.r_max, **common)
        for name, dcfg in settings.items():
            dcfg = dataclasses.replace(dcfg, seed=seed)
            run_dir = os.path.join(cfg.workdir, f"seed{seed}", name)

            def compute(dcfg=dcfg, run_dir=run_dir, name=name, seed=seed, data=data):
                model = gpt2.from_pretrained(base, remat=cfg.remat)
                fit = dylora.fit(
                    model,
                    nlg_data.lm_loss,
                    data,
                    train_config(cfg, run_dir, seed, f"seed {seed} {name}"),
                    dcfg,
                    run_config={"task": "nlg", "model": base, "data": cfg.nlg_data},
                    base_model=base,
                )
                bleu, rouge, samples = {}, {}, {}
                for b in range(1, dcfg.r_max + 1):
                    outs = generate_at_rank(fit.model, b, tok, eval_recs, cfg.max_new_tokens)
                    bleu[str(b)] = text_metrics.corpus_bleu(outs, refs)
                    rouge[str(b)] = text_metrics.corpus_rouge_l(outs, refs)
                    samples[str(b)] = outs[:3]
                return {"seconds": fit.seconds, "bleu": bleu, "rouge_l": rouge, "samples": samples}

            r = runs.setdefault(name, {})[str(seed)] = run_once(run_dir, compute)
            print(
                f"seed {seed} {name}: BLEU per rank {[round(v, 1) for v in r['bleu'].values()]}, "
                f"ROUGE-L {[round(v, 1) for v in r['rouge_l'].values()]} ({r['seconds']:.0f}s)",
                flush=True,
            )
    results = {"task": "nlg", "model": base, "data": cfg.nlg_data, "config": dataclasses.asdict(cfg), "runs": runs}
    texts = []
    for key, metric in (("bleu", "BLEU-4"), ("rouge_l", "ROUGE-L")):
        res, text = report.report(cfg, metric, runs, key=key, suffix=f"_{key}")
        results[key] = res
        texts.append(text.replace("Table 3.2", "Table 3.6"))
    print("\n" + "\n\n".join(texts), flush=True)
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    raise SystemExit("experiments.dylora.nlg is part of python -m experiments.dylora, not a command of its own")
