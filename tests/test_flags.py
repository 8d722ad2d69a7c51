"""experiments.common.flags: one flag per config field, with its help, default and allowed values."""

import dataclasses
import importlib

import pytest

from experiments.common import flags


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy:
    workdir: str = flags.option("runs/toy", help="where results go")
    dtype: str = flags.option("float32", help="parameter dtype", choices=("float32", "bfloat16"))
    steps: int = flags.option(100, help="training steps")
    learning_rate: float = flags.option(1e-3, help="peak learning rate, 100% at the top")
    limit: int | None = flags.option(None, help="at most this many examples; none = all")
    distributed: bool = flags.option(False, help="initialise jax.distributed first")
    progress: bool = dataclasses.field(default=True, metadata={"help": "show progress bars"})
    seeds: tuple[int, ...] = flags.option((0, 1, 2), help="training seeds")
    methods: tuple[str, ...] = flags.option(("sft", "soft"), help="methods to run", choices=("sft", "soft", "ict"))
    batch_size: int = flags.option(32, help="examples per step")
    grad_accum: int = flags.option(1, help="micro-batches per step")

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Required:
    out: str = flags.option(help="output directory")
    layers: int = flags.option(2, help="layers to keep")


def _error(capsys, argv, cls=Toy) -> str:
    with pytest.raises(SystemExit) as e:
        flags.parse(cls, argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_defaults_round_trip():
    assert flags.parse(Toy, []) == Toy()


def test_help_shows_text_defaults_and_choices():
    text = " ".join(flags.parser_for(Toy, "Toy experiment.\n\nRun: python -m toy").format_help().split())
    assert "--workdir WORKDIR where results go (default: runs/toy)" in text
    assert "--dtype {float32,bfloat16} parameter dtype (default: float32)" in text
    assert "--steps N training steps (default: 100)" in text
    assert "100% at the top (default: 0.001)" in text
    assert "--limit N at most this many examples; none = all (default: none)" in text
    assert "--distributed, --no-distributed initialise jax.distributed first (default: False)" in text
    assert "(default: sft,soft; each one of: sft, soft, ict)" in text
    assert text.index("Toy experiment.") < text.index("--workdir WORKDIR where") < text.index("Run: python -m toy")


def test_bad_choice_exits_naming_flag_and_allowed_values(capsys):
    err = _error(capsys, ["--dtype", "fp8"])
    assert "argument --dtype: invalid choice: 'fp8'" in err and "'float32', 'bfloat16'" in err
    err = _error(capsys, ["--methods", "sft,eureqa"])
    assert "argument --methods" in err and "'eureqa'" in err and "'sft', 'soft', 'ict'" in err
    assert "argument --steps: invalid int value: 'many'" in _error(capsys, ["--steps", "many"])


def test_values_parse_by_type():
    cfg = flags.parse(Toy, ["--workdir=/tmp/x", "--dtype", "bfloat16", "--steps", "7", "--learning-rate", "2e-5"])
    assert (cfg.workdir, cfg.dtype, cfg.steps, cfg.learning_rate) == ("/tmp/x", "bfloat16", 7, 2e-5)


def test_bool_flags():
    assert flags.parse(Toy, ["--distributed"]).distributed is True
    assert flags.parse(Toy, ["--distributed", "--no-distributed"]).distributed is False
    assert flags.parse(Toy, ["--no-progress"]).progress is False
    assert flags.parse(Toy, []).progress is True


def test_none_able_int(capsys):
    assert flags.parse(Toy, []).limit is None
    assert flags.parse(Toy, ["--limit", "5"]).limit == 5
    assert flags.parse(Toy, ["--limit", "5", "--limit", "none"]).limit is None
    assert "argument --limit: invalid int value: 'x'" in _error(capsys, ["--limit", "x"])


def test_tuples_are_comma_lists(capsys):
    assert flags.parse(Toy, ["--seeds", "3,4, 5"]).seeds == (3, 4, 5)
    assert flags.parse(Toy, ["--seeds", "7"]).seeds == (7,)
    assert flags.parse(Toy, ["--methods", "ict"]).methods == ("ict",)
    assert "argument --seeds: expected a comma-separated list of int" in _error(capsys, ["--seeds", "1,x"])


def test_required_field_is_a_required_flag(capsys):
    assert flags.parse(Required, ["--out", "o"]) == Required(out="o", layers=2)
    assert "the following arguments are required: --out" in _error(capsys, [], Required)


def test_defaults_override_field_defaults():
    p = flags.parser_for(Toy, defaults={"steps": 5})
    assert flags.config_from(p, Toy, p.parse_args([])).steps == 5
    assert flags.config_from(p, Toy, p.parse_args(["--steps", "9"])).steps == 9
    with pytest.raises(ValueError, match="unknown fields of Toy: \\['stepz'\\]"):
        flags.parser_for(Toy, defaults={"stepz": 5})


def test_field_without_help_raises():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Undocumented:
        steps: int = flags.option(1, help="steps")
        seed: int = 0

    with pytest.raises(ValueError, match="Undocumented.seed has no help text"):
        flags.parser_for(Undocumented)


def test_post_init_error_is_a_parser_error(capsys):
    err = _error(capsys, ["--steps", "-1"])
    assert "error: argument --steps: steps must be >= 0, got -1" in err
    assert "Traceback" not in err
    err = _error(capsys, ["--batch-size", "10", "--grad-accum", "4"])
    assert "error: arguments --batch-size, --grad-accum: batch_size 10 must be divisible by grad_accum 4" in err


@pytest.mark.parametrize(
    "module, cls",
    [
        ("experiments.soft", "SoftExperiment"),
        ("experiments.export", "ExportConfig"),
        ("experiments.sorting_order", "Config"),
        ("experiments.symbolicgpt", "Config"),
    ],
)
def test_every_experiment_flag_is_documented(module, cls):
    config_cls = getattr(importlib.import_module(module), cls)
    parser = flags.parser_for(config_cls, importlib.import_module(module).__doc__)
    assert parser.prog == f"python -m {module}"
    for f in dataclasses.fields(config_cls):
        assert len(f.metadata["help"]) > 10, f.name
        assert flags.flag_name(f.name) in parser.format_help()
