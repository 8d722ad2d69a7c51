"""The configuration of ``python -m experiments.symbolicgpt``: its flags are these fields."""

from __future__ import annotations

import dataclasses
import os

from experiments.common import flags

PROTOCOLS = ("ours", "thesis")
SETTINGS = {"1var": 1, "2var": 2, "3var": 3, "general": (1, 9), "general2": (1, 9)}
TRAIN_SETTING = {"general2": "general"}  # settings evaluated with another setting's model
BASELINES = ("gplearn", "mlp", "operon")
METHODS = ("symbolicgpt",) + BASELINES
THRESHOLDS = (-10, -5, -2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    setting: tuple[str, ...] = flags.option(
        ("1var", "3var"),
        choices=tuple(SETTINGS),
        help="comma-separated settings, each trained (general2 uses general's model) and evaluated in "
        "WORKDIR/<setting>: 1var, 2var, 3var, general (1 to 9 variables), general2 (benchmark skeletons)",
    )
    protocol: tuple[str, ...] = flags.option(
        PROTOCOLS,
        choices=PROTOCOLS,
        help="SymbolicGPT inference protocols: ours (best of --n-samples samples, --n-starts-start BFGS, "
        "scale-robust objective) and thesis (one sample, SciPy BFGS from all-ones, one start, plain MSE)",
    )
    workdir: str = flags.option(
        "runs/symbolicgpt", help="directory for the generated data, the trained models, records, results and figures"
    )
    model_from: str | None = flags.option(
        None, help="evaluate the models trained in this other workdir (none: train / use this --workdir's)"
    )
    # data and model
    n_train: int = flags.option(10000, help="generated training equations")
    preset: str = flags.option("cpu", help="model size preset of symreg.model (tiny, cpu, small, thesis)")
    max_len: int = flags.option(48, help="longest skeleton in tokens; longer training equations are dropped")
    max_points: int = flags.option(
        128,
        help="points per problem the model reads (training: the first N of each instance, inference: a random N; "
        "constants are fitted on all); the thesis' 3var instances have 500",
    )
    # training (AdamW, warmup + cosine)
    steps: int = flags.option(600, help="training steps (AdamW, warmup + cosine decay)")
    batch_size: int = flags.option(64, help="training batch size")
    learning_rate: float = flags.option(2e-3, help="peak learning rate")
    warmup_steps: int = flags.option(40, help="linear warmup steps")
    weight_decay: float = flags.option(0.01, help="AdamW weight decay")
    conditional: bool = flags.option(
        False, help="also train C-SymbolicGPT (node-control layers, appendix A) on the same data and compare (Fig A.3)"
    )
    # evaluation
    n_test: int = flags.option(20, help="generated test problems per setting (the thesis uses 1000)")
    fit_points: int | None = flags.option(
        None, help="points each method fits on (none: the test instance's count, 30 / 200 / 500 / U{20..250})"
    )
    test_points: int | None = flags.option(
        None, help="fresh held-out points per problem, |x| in [3, 5] (none: the test split's own points)"
    )
    n_samples: int = flags.option(50, help="skeletons SymbolicGPT samples per problem (protocol ours); best fit kept")
    sampling: str = flags.option("top_k", help="how skeletons are sampled: top_k, top_p or greedy")
    top_k: int = flags.option(40, help="k of top-k sampling")
    top_p: float = flags.option(0.9, help="p of nucleus (top-p) sampling")
    n_starts: int = flags.option(8, help="BFGS restarts per candidate skeleton (protocol ours)")
    methods: tuple[str, ...] = flags.option(METHODS, choices=METHODS, help="comma-separated methods to evaluate")
    benchmarks: tuple[str, ...] = flags.option(
        ("nguyen",),
        choices=("nguyen", "feynman"),
        help="comma-separated benchmark families evaluated besides the generated test set (empty: none)",
    )
    gplearn_population: int = flags.option(1000, help="gplearn baseline: population size")
    gplearn_generations: int = flags.option(10, help="gplearn baseline: generations")
    operon_generations: int = flags.option(
        200, help="pyoperon baseline: generations (200 keeps the default run in budget; the bar uses 1000)"
    )
    operon_population: int = flags.option(1000, help="pyoperon baseline: population size")
    sweep_problems: int = flags.option(
        10, help="problems used for the samples and points sweeps of Figs. 2.3b / 2.3c (0: skip them)"
    )
    seed: int = flags.option(0, help="seed of data generation, training, sampling and the baselines")
    workers: int = flags.option(2, help="processes generating data (for 2000 equations or more)")
    progress: bool = flags.option(True, help="show progress bars")

    def __post_init__(self):
        if isinstance(self.setting, str):  # Config(setting="1var") is one setting
            object.__setattr__(self, "setting", (self.setting,))
        bad = [s for s in self.setting if s not in SETTINGS]
        if bad or not self.setting:
            raise ValueError(f"setting must be a non-empty subset of {tuple(SETTINGS)}, got {self.setting!r}")
        bad = [p for p in self.protocol if p not in PROTOCOLS]
        if bad or not self.protocol:
            raise ValueError(f"protocol must be a non-empty subset of {PROTOCOLS}, got {self.protocol!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"methods must be a subset of {METHODS}, got unknown {sorted(unknown)}")
        unknown = set(self.benchmarks) - {"nguyen", "feynman"}
        if unknown:
            raise ValueError(f"benchmarks must be a subset of ('nguyen', 'feynman'), got {sorted(unknown)}")
        for name in ("n_train", "steps", "batch_size", "n_test", "n_samples", "max_len", "n_starts", "max_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("fit_points", "test_points"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 or none, got {getattr(self, name)}")

    @property
    def current(self) -> str:
        """The one setting of a per-setting config (see :func:`for_setting`)."""
        if len(self.setting) != 1:
            raise ValueError(f"this config holds several settings {self.setting}; use for_setting(cfg, s)")
        return self.setting[0]

    @property
    def max_vars(self) -> int:
        v = SETTINGS[self.current]
        return v if isinstance(v, int) else v[1]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def for_setting(cfg: Config, setting: str) -> Config:
    """The config of one setting, working in ``WORKDIR/<setting>``."""
    model_from = cfg.model_from and os.path.abspath(cfg.model_from)
    return dataclasses.replace(
        cfg, setting=(setting,), workdir=os.path.join(cfg.workdir, setting), model_from=model_from
    )


QUICK = {
    "n_train": 1500,
    "preset": "tiny",
    "steps": 150,
    "batch_size": 32,
    "n_test": 6,
    "n_samples": 16,
    "gplearn_population": 200,
    "gplearn_generations": 5,
    "operon_generations": 50,
    "operon_population": 200,
    "sweep_problems": 3,
}


# ----------------------------------------------------------------------------- train


if __name__ == "__main__":
    raise SystemExit(
        "experiments.symbolicgpt.config is part of python -m experiments.symbolicgpt, not a command of its own"
    )
