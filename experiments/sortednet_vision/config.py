"""The configuration of ``python -m experiments.sortednet_vision``: its flags are these fields."""

from __future__ import annotations

import dataclasses

from experiments.common import flags

PARTS = ("grid", "subset", "table42", "gacc", "time")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    workdir: str = flags.option("runs/sortednet_vision", help="where results.json and the PNGs go")
    parts: tuple[str, ...] = flags.option(
        ("grid", "subset", "table42", "gacc", "time"), help="which experiments to run", choices=PARTS
    )
    data: str = flags.option("digits", help="image data set", choices=("digits", "cifar10"))
    data_dir: str | None = flags.option(None, help="tfds data_dir holding cifar10 (--data cifar10)")
    steps: int = flags.option(
        200, help="optimizer updates per training run of Tables 4.2 / 4.5 (every rule gets the same)"
    )
    grid_steps: int = flags.option(
        1000, help="optimizer updates of Fig 4.2's MobileNetV2 runs (baseline, SortedNet, Fig 4.5's subset retraining)"
    )
    batch: int = flags.option(32, help="images per mini-batch")
    lr: float = flags.option(3e-3, help="Adam peak learning rate (cosine decay)")
    seeds: tuple[int, ...] = flags.option((0, 1), help="seeds for Table 4.2 (mean +- std)")
    mbv2_width_mult: float = flags.option(0.25, help="MobileNetV2 width multiplier (1.4 in the thesis)")
    mbv2_last: int = flags.option(128, help="MobileNetV2 head channels (1280 in the original)")
    mbv2_norm: str = flags.option("batch", help="MobileNetV2 norm", choices=("batch", "instance"))
    resnet_base: int = flags.option(8, help="cPreResNet20 first-stage channels (16 in the thesis)")
    table_methods: tuple[str, ...] = flags.option(
        ("sortednet", "ns", "us", "plain"), help="Table 4.2 rules", choices=("sortednet", "ns", "us", "plain")
    )
    table_norms: tuple[str, ...] = flags.option(
        ("instance", "batch"), help="Table 4.2 norms", choices=("instance", "batch")
    )
    recovery_threshold: float = flags.option(
        80.0, help="Fig 4.5: keep sub-models recovering at least this % of the baseline full model's accuracy"
    )
    g_accs: tuple[int, ...] = flags.option((1, 2, 3, 4), help="Table 4.5 / C.1 g_acc values")
    augment: str = flags.option(
        "auto",
        help="training augmentation: none, crop, crop_flip; auto = crop_flip on cifar10 (the thesis' "
        "protocol), none on digits (mirrored digits are other symbols, and 8x8 originals upsampled leave "
        "little to shift)",
        choices=("auto", "none", "crop", "crop_flip"),
    )
    progress: bool = flags.option(True, help="tqdm progress bars")

    @property
    def augmentation(self) -> str:
        """The augmentation training uses (``auto`` resolved by the data set)."""
        if self.augment != "auto":
            return self.augment
        return "crop_flip" if self.data == "cifar10" else "none"

    def __post_init__(self):
        for f in ("steps", "grid_steps", "batch", "resnet_base", "mbv2_last"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.mbv2_width_mult <= 0:
            raise ValueError(f"mbv2_width_mult must be > 0, got {self.mbv2_width_mult}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if any(g < 1 for g in self.g_accs):
            raise ValueError(f"g_accs must be >= 1, got {self.g_accs}")
        if not 0 < self.recovery_threshold <= 200:
            raise ValueError(f"recovery_threshold must be in (0, 200], got {self.recovery_threshold}")


if __name__ == "__main__":
    raise SystemExit(
        "experiments.sortednet_vision.config is part of python -m experiments.sortednet_vision, not a command of its own"
    )
