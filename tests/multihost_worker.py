"""One process of a multi-process SoFT run on CPU (started by tests/test_multihost.py).

    python tests/multihost_worker.py --workdir W --out OUT.npz [--processes 2 --process-id I --port P]

A tiny LLaMA is SoFT-trained on an 8-device ``fsdp`` mesh: 8 simulated devices in one process, or
``8 / processes`` per process joined by :func:`sortedjax.distributed.initialize` (gloo collectives).
Process 0 writes the losses, the gathered parameters and where the run resumed from to ``--out``.
``--sleep`` waits after each logged step, so a test can kill the run between checkpoints.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--sleep", type=float, default=0.0)
    a = ap.parse_args()

    from sortedjax import distributed

    if a.processes > 1:
        distributed.initialize(f"127.0.0.1:{a.port}", a.processes, a.process_id, cpu_devices=8 // a.processes)
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    from flax import nnx

    from sortedjax import sharding
    from sortedjax.methods import soft
    from sortedjax.models.llama import Llama, LlamaConfig
    from sortedjax.train import ArrayBatches, TrainConfig, train

    mesh = sharding.make_mesh("data:1,fsdp:8")
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    model = Llama(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, (64, 17)).astype(np.int32)
    mask = (np.arange(16)[None, :] >= 8).astype(np.float32).repeat(64, 0)
    data = ArrayBatches({"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}, 16, seed=0)
    loss = soft.make_loss(soft.SoftConfig(mode="soft", exits=(2, 4), num_layers=4))
    tcfg = TrainConfig(
        workdir=a.workdir, steps=a.steps, learning_rate=1e-2, optimizer="adamw", grad_clip_norm=1.0,
        checkpoint_every=2, log_every=1, progress=False,
    )  # fmt: skip
    res = train(model, loss, data, tcfg, mesh=mesh, on_step=lambda s, row: time.sleep(a.sleep))
    params = distributed.gather(nnx.to_pure_dict(nnx.state(res.model, nnx.Param)))
    if distributed.is_main():
        flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        losses = np.asarray([r["loss"] for r in res.history], np.float64)
        resumed = -1 if res.resumed_from is None else res.resumed_from
        np.savez(a.out, losses=losses, resumed_from=resumed, processes=jax.process_count(), **flat)


if __name__ == "__main__":
    main()
