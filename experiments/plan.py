"""Memory plan of a LLaMA SoFT / SFT fine-tuning step at full size, without allocating any weights.

Run (LLaMA-2 13B on 8-way FSDP, 2048-token sequences, 8 sequences per optimizer step)::

    python -m experiments.plan --model llama2-13b --mesh data:1,fsdp:8 --seq 2048 --batch 8 --mode soft

``--model`` is a preset (llama2-7b, llama2-13b, llama3-8b) or a Hugging Face ``config.json`` (file or
directory). The train step ``experiments.soft`` runs (:func:`sortedjax.train.make_train_step` with the
SoFT / SFT loss, AdamW, gradient clipping) is lowered for abstract arguments carrying the shardings
training gives them and compiled for the mesh on simulated CPU devices; XLA's ``memory_analysis()``
gives per-device argument, output, aliased (donated) and temporary bytes. ``--remat search`` compiles
remat policies x micro-batches (gradient accumulation) and keeps the largest micro-batch that fits
``--accelerator``, with the least recomputation. The other mode is then compiled with the chosen
settings and SoFT / SFT per-device memory is printed next to the thesis' 1.27x (8 V100-32GB: SoFT
125.7 GB vs SFT 99.2 GB in all).

Expected runtime: a few minutes on a 2-core CPU for the command above (4 compiles: remat none, dots,
full, then SFT; measured 3:53 wall, 32 s of CPU time, on a machine with load average 20; each 13B
compile 12-25 s when the machine is quiet). Output: one line per compile, then::

    chosen: soft: remat full          micro-batch    8 | GiB per device: args 15.15 out 15.15 aliased 15.15 temp 16.68 total 31.84 (56.1s compile)
    accelerator |   GiB | fits
    V100-32GB   |  32.0 | yes
    ...
    soft over sft per device: 0.99x (thesis, whole job: 1.27x)

and ``--out FILE`` (JSON: ``per_device_bytes``, ``fits``, ``remat``, ``micro_batch``, ``grad_accum``,
``tried``, ``compare``). CPU caveat: XLA's CPU backend computes bfloat16 dots in float32, so some
temporaries are float32 where a TPU / GPU keeps bfloat16: the figures are an upper bound.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from experiments.common import flags
from sortedjax import sharding as shd
from sortedjax.planning import memory, plan

REMATS = ("search", "none", "dots_no_batch", "dots", "full")
THESIS_SOFT_OVER_SFT = 125.7 / 99.2  # LLaMA-2 13B on 8 V100-32GB, total memory


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanExperiment:
    model: str = flags.option(
        "llama2-13b", help="preset (llama2-7b, llama2-13b, llama3-8b) or a Hugging Face config.json file or directory"
    )
    mesh: str = flags.option("data:1,fsdp:8", help='device mesh, e.g. "8" or "data:2,fsdp:4,tensor:1"')
    seq: int = flags.option(2048, help="sequence length in tokens")
    batch: int = flags.option(8, help="sequences per optimizer step (global); a multiple of data*fsdp")
    mode: str = flags.option("soft", help="loss: SoFT (mean over exits) or SFT (last layer)", choices=("soft", "sft"))
    exits: str | None = flags.option(None, help='exit layers, e.g. "12,16,40"; none = every 4th from 12 (scaled)')
    response_len: int | None = flags.option(
        None, help="logits only at this many response positions per sequence; none = every position"
    )
    dtype: str = flags.option("bfloat16", help="parameter and compute dtype", choices=("float32", "bfloat16"))
    opt_state_dtype: str = flags.option(
        "float32", help='Adam moments: "float32" or "param" (the parameter dtype)', choices=("float32", "param")
    )
    remat: str = flags.option("search", help="per-layer remat policy, or search for one", choices=REMATS)
    grad_accum: int = flags.option(1, help="micro-batches per step when --remat is not search")
    accelerator: str = flags.option("V100-32GB", help="what the search must fit", choices=tuple(memory.ACCELERATORS))
    policies: str = flags.option("none,dots,full", help="remat policies the search tries")
    compare: bool = flags.option(True, help="also compile the other mode with the chosen settings (SoFT / SFT ratio)")
    out: str | None = flags.option(None, help="write the plan as JSON to this file")

    def __post_init__(self):
        for f in ("seq", "batch", "grad_accum"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.batch % self.grad_accum:
            raise ValueError(f"batch {self.batch} must be divisible by grad_accum {self.grad_accum}")
        shd.parse_mesh_spec(self.mesh)
        bad = [p for p in self.policies.split(",") if p not in REMATS[1:]]
        if bad:
            raise ValueError(f"policies: {bad[0]!r} unknown; allowed: {REMATS[1:]}")


def parse_args(argv=None) -> PlanExperiment:
    return flags.parse(PlanExperiment, argv, __doc__)


def _line(tag: str, r: dict) -> str:
    b = r["per_device_bytes"]
    return (
        f"{tag}: remat {r['remat']:<13} micro-batch {r['micro_batch']:>4} | GiB per device: args "
        f"{memory.gib(b['arguments'])} out {memory.gib(b['outputs'])} aliased {memory.gib(b['aliased'])} "
        f"temp {memory.gib(b['temporaries'])} total {memory.gib(b['total'])} ({r['compile_s']}s compile)"
    )


def fits_table(total: int) -> str:
    rows = ["accelerator |   GiB | fits", "-" * 27]
    for name, cap in memory.ACCELERATORS.items():
        rows.append(f"{name:<11} | {cap / memory.GiB:5.1f} | {'yes' if total <= cap else 'no'}")
    return "\n".join(rows)


def run(cfg: PlanExperiment) -> dict:
    mesh = shd.make_mesh(cfg.mesh)  # before any JAX work: simulated CPU devices

    t0 = time.time()
    mcfg = plan.model_config(cfg.model, dtype=cfg.dtype)
    exits = None if cfg.exits is None else tuple(int(e) for e in cfg.exits.split(","))
    spec = plan.StepSpec(
        mode=cfg.mode, batch=cfg.batch, seq=cfg.seq, grad_accum=cfg.grad_accum, response_len=cfg.response_len,
        exits=exits, opt_state_dtype=None if cfg.opt_state_dtype == "param" else "float32",
    )  # fmt: skip
    n = plan.num_params(mcfg)
    print(
        f"{cfg.model}: {n / 1e9:.2f}B parameters, {mcfg.num_hidden_layers} layers, {cfg.dtype}; mesh {dict(mesh.shape)}"
    )
    if cfg.remat == "search":
        out = plan.search(
            mcfg, mesh, spec, cfg.accelerator, policies=tuple(cfg.policies.split(",")),
            progress=lambda t, r: print(_line(cfg.mode, r), flush=True),
        )  # fmt: skip
    else:
        out = plan.plan(dataclasses.replace(mcfg, remat=cfg.remat), mesh, spec)
        print(_line(cfg.mode, out), flush=True)
    out.update(model=cfg.model, params=n, mesh=dict(mesh.shape), mode=cfg.mode, batch=cfg.batch, seq=cfg.seq)
    out["dtype"], out["opt_state_dtype"] = cfg.dtype, cfg.opt_state_dtype
    print(f"chosen: {_line(cfg.mode, out)}")
    print(fits_table(plan.total_bytes(out)))
    if cfg.compare:
        other = "sft" if cfg.mode == "soft" else "soft"
        ospec = dataclasses.replace(spec, mode=other, grad_accum=out["grad_accum"])
        o = plan.plan(dataclasses.replace(mcfg, remat=out["remat"]), mesh, ospec)
        print(_line(other, o))
        soft_r, sft_r = (out, o) if cfg.mode == "soft" else (o, out)
        r = plan.ratio(soft_r, sft_r)
        out["compare"] = {
            other: o["per_device_bytes"],
            "soft_over_sft": r,
            "thesis_soft_over_sft": THESIS_SOFT_OVER_SFT,
        }
        print(f"soft over sft per device: {r:.2f}x (thesis, whole job: {THESIS_SOFT_OVER_SFT:.2f}x)")
    out["wall_s"] = round(time.time() - t0, 1)
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {cfg.out}")
    return out


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
