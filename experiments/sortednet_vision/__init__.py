"""SortedNet on images (thesis ch. 4): Fig 4.2, Fig 4.5 / 4.3, Table 4.2, Table 4.5 / C.1, C.4.3.

Parts (``--parts``, in this order):

* ``grid`` (Fig 4.2): MobileNetV2 sorted in depth (blocks 2..17: 16 depths) and width (10
  levels) = 160 sub-models trained by SortedNet's stochastic rule, every one evaluated through
  one compiled program; accuracy and recovery % (of a separately trained full model, the
  baseline) heatmaps PNG, the width-only (full depth) and depth-only (full width) rows printed;
* ``subset`` (Fig 4.5 / 4.3): the sub-models whose recovery reaches ``--recovery-threshold``,
  their FLOPs Pareto front kept, retrained by SortedNet over that subset only, before / after;
* ``table42`` (Table 4.2): cPreResNet20 at 100/75/50/25 % width, InstanceNorm and BatchNorm,
  SortedNet vs NS (private BN) vs US / LCS-p (sandwich rule) vs plain training, equal numbers
  of updates, mean +- std over ``--seeds``, MFLOPs per width;
* ``gacc`` (Table 4.5 / C.1): SortedNet cPreResNet20 with g_acc = 1..4 at a fixed number of
  updates and at a fixed number of epochs (updates / g_acc);
* ``time`` (C.4.3): SortedNet vs LCS-p (US) wall time per epoch, from the Table 4.2 runs.

Data: offline default ``--data digits`` (scikit-learn's real 8x8 handwritten digits, upsampled
to 16x16x3: see :mod:`sortedjax.data.vision` for why), reduced widths (``--mbv2-width-mult``,
``--resnet-base``) and steps. The thesis protocol: ``--data cifar10 --mbv2-width-mult 1.4
--resnet-base 16 --steps 60000 --grid-steps 60000 --seeds 0,1,2`` (tfds must find cifar10 in
``--data-dir``).

Run::

    python -m experiments.sortednet_vision [--workdir runs/sortednet_vision] [--parts grid,table42]

Writes ``results.json``, ``fig4_2_accuracy.png``, ``fig4_2_recovery.png`` and
``fig4_5_subset.png`` to the workdir and prints the grid rows and the tables.

Expected runtime of the default: about 18 minutes on a 2-core CPU (the grid part takes half of it).
Its measured output, the thesis' numbers beside it and what differs are in ``docs/sortednet.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import experiments.sortednet_vision.parts as parts
from experiments.common import flags, requires
from experiments.sortednet_vision.config import Config  # noqa: F401 - the config, re-exported


def main(argv=None) -> dict:
    cfg = flags.parse(Config, argv, description=__doc__)
    if cfg.data == "cifar10":
        requires.require("tensorflow_datasets", why="--data cifar10")
    os.makedirs(cfg.workdir, exist_ok=True)
    data = parts.load_data(cfg)
    print(data.summary())
    results: dict = {"config": dataclasses.asdict(cfg), "data": data.summary(), "seconds": {}}
    for name in parts.PARTS:
        if name in cfg.parts:
            t0 = time.perf_counter()
            results[name] = parts.RUN[name](cfg, data, results)
            results["seconds"][name] = round(time.perf_counter() - t0, 1)
            print(f"[{name}: {results['seconds'][name]} s]")
            with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
                json.dump(results, f, indent=1)
    print(f"wrote {os.path.join(cfg.workdir, 'results.json')}")
    return results
