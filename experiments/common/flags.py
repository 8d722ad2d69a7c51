"""Command-line flags from a frozen config dataclass: the one place flags are defined.

Every experiment describes its settings as a ``@dataclasses.dataclass(frozen=True,
kw_only=True)`` whose fields carry their help text (and, where the values are a fixed set,
the allowed values)::

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config:
        workdir: str = flags.option("runs/x", help="where checkpoints and results go")
        dtype: str = flags.option("float32", help="parameter dtype", choices=("float32", "bfloat16"))
        exits: tuple[int, ...] = flags.option((2, 4), help="exit layers")

    cfg = flags.parse(Config, argv, description=__doc__)

``flags.option(default, help=..., choices=...)`` is ``dataclasses.field`` with
``metadata={"help": ..., "choices": ...}``; either spelling works. :func:`parser_for`
gives each field one ``--kebab-case`` flag, typed from its annotation:

* ``int``, ``float``, ``str``; ``bool`` as ``--x / --no-x``;
* ``X | None``: the word ``none`` gives ``None``;
* ``tuple[int, ...]`` (or ``float`` / ``str``): a comma-separated list, ``--seeds 0,1,2``;
  with ``choices`` every element must be one of them.

A field without help text is an error when the parser is built, so no flag goes
undocumented. Defaults and allowed values are shown in ``--help``; the description's first
paragraph (the module docstring's summary) comes above the flags, the rest (run command,
runtime, expected output) below them, and the program is named ``python -m <module>``. :func:`config_from`
builds the config and turns its ``__post_init__`` ``ValueError`` into an argparse error
(exit status 2) that names the flags concerned, instead of a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_NONE_WORDS = ("none", "null")


def option(
    default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[Any] | None = None, metavar: str | None = None
) -> Any:
    """``dataclasses.field`` with the flag's help text (and allowed values) as metadata."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if metavar is not None:
        meta["metavar"] = metavar
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _strip_none(tp) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` / ``Optional[X]``, else ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == len(typing.get_args(tp)) - 1 and len(args) == 1:
            return args[0], True
        raise TypeError(f"unsupported union type {tp!r}: only X | None")
    return tp, False


def _named(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    fn.__name__ = name  # argparse says "invalid <name> value: ..."
    return fn


def _scalar(tp, name: str) -> Callable[[str], Any]:
    if tp not in (int, float, str):
        raise TypeError(
            f"field {name!r}: unsupported flag type {tp!r} (int, float, str, bool, X | None, tuple[int|float|str, ...])"
        )
    return tp


def _tuple_type(elem: Callable[[str], Any], choices: tuple | None) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        items = [s.strip() for s in text.split(",") if s.strip()]
        try:
            values = tuple(elem(s) for s in items)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {elem.__name__}, got {text!r}"
            ) from None
        if choices is not None:
            bad = [v for v in values if v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"invalid value(s) {', '.join(map(repr, bad))} (each must be one of "
                    f"{', '.join(map(repr, choices))})"
                )
        return values

    return _named(parse, f"{elem.__name__} list")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "(empty)"
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


def parser_for(
    config_cls: type,
    description: str | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    parser: argparse.ArgumentParser | None = None,
    **parser_kw: Any,
) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one flag per field of ``config_cls``.

    ``description``: the experiment's docstring (its first paragraph is the summary; the rest
    is shown as written). ``defaults`` overrides field defaults (e.g. a ``--quick`` preset).
    ``parser``: add the flags to an existing parser instead of a new one.
    """
    if not (dataclasses.is_dataclass(config_cls) and isinstance(config_cls, type)):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    hints = typing.get_type_hints(config_cls)
    defaults = dict(defaults or {})
    unknown = set(defaults) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:
        raise ValueError(f"defaults for unknown fields of {config_cls.__name__}: {sorted(unknown)}")
    if parser is None:
        parser_kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        parser_kw.setdefault("prog", _prog(config_cls))
        if description and "epilog" not in parser_kw:  # summary above the flags, details below
            summary, _, rest = inspect.cleandoc(description).partition("\n\n")
            description, parser_kw["epilog"] = summary, rest or None
        parser = argparse.ArgumentParser(description=description, **parser_kw)
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        help_text = f.metadata.get("help")
        if not help_text or not str(help_text).strip():
            raise ValueError(
                f"{config_cls.__name__}.{f.name} has no help text: declare it with "
                f"flags.option(..., help=...) or field(metadata={{'help': ...}})"
            )
        flag = flag_name(f.name)
        choices = f.metadata.get("choices")
        choices = tuple(choices) if choices is not None else None
        if f.name in defaults:
            default, required = defaults[f.name], False
        elif f.default is not dataclasses.MISSING:
            default, required = f.default, False
        elif f.default_factory is not dataclasses.MISSING:
            default, required = f.default_factory(), False
        else:
            default, required = None, True
        tp, optional = _strip_none(hints[f.name])
        kw: dict[str, Any] = {"dest": f.name, "default": default, "required": required}
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        elif tp in (int, float) and choices is None:
            kw["metavar"] = "N" if tp is int else "X"
        shown = [] if required else [f"default: {_show(default)}"]
        if tp is bool:
            if optional:
                raise TypeError(f"field {f.name!r}: bool | None flags are not supported")
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            if len(args) != 2 or args[1] is not Ellipsis:
                raise TypeError(f"field {f.name!r}: only variable-length tuple[X, ...] flags are supported")
            convert = _tuple_type(_scalar(args[0], f.name), choices)
            kw.setdefault("metavar", "A,B,..." if args[0] is str else "N,N,...")
            if choices is not None:
                shown.append(f"each one of: {', '.join(map(str, choices))}")
        else:
            convert = _scalar(tp, f.name)
            if choices is not None:
                kw["choices"] = choices + ((None,) if optional else ())
        if tp is not bool:
            if optional:
                base = convert
                convert = _named(
                    lambda s, base=base: None if s.strip().lower() in _NONE_WORDS else base(s),
                    getattr(base, "__name__", "value"),
                )
                if default is not None and not required:
                    shown.append("or 'none'")
            kw["type"] = convert
        help_text = str(help_text).strip()
        if shown:
            help_text += " (" + "; ".join(shown) + ")"
        kw["help"] = help_text.replace("%", "%%")
        parser.add_argument(flag, **kw)
    return parser


def _prog(config_cls: type) -> str | None:
    """``python -m experiments.x`` for a config defined in ``experiments.x`` or ``experiments/x/config.py``."""
    module = config_cls.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else None
    if module is None:
        return None
    module = module.removesuffix(".__main__")
    package, _, leaf = module.rpartition(".")
    if leaf == "config" and importlib.util.find_spec(f"{package}.__main__") is not None:
        module = package  # experiments/<name>/config.py belongs to the command python -m experiments.<name>
    return f"python -m {module}"


def _flags_named(config_cls: type, message: str) -> list[str]:
    """The flags of the fields a validation message talks about, in order of mention."""
    found = []
    for f in dataclasses.fields(config_cls):
        flag = flag_name(f.name)
        hits = [m.start() for m in re.finditer(rf"(?<![\w-]){re.escape(f.name)}(?!\w)", message)]
        if flag in message:
            hits.append(message.index(flag))
        if hits:
            found.append((min(hits), flag))
    return [flag for _, flag in sorted(found)]


def config_from(parser: argparse.ArgumentParser, config_cls: type, namespace: argparse.Namespace, **overrides: Any):
    """``config_cls`` from the parsed flags; a ``ValueError`` from its validation becomes
    ``parser.error`` (exit status 2) naming the flags concerned."""
    names = [f.name for f in dataclasses.fields(config_cls) if f.init]
    kw = {n: getattr(namespace, n) for n in names if hasattr(namespace, n)}
    kw.update(overrides)
    try:
        return config_cls(**kw)
    except ValueError as e:
        named = _flags_named(config_cls, str(e))
        prefix = f"argument {named[0]}: " if len(named) == 1 else f"arguments {', '.join(named)}: " if named else ""
        parser.error(f"{prefix}{e}")


def parse(
    config_cls: type,
    argv: Sequence[str] | None = None,
    description: str | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    **parser_kw: Any,
):
    """Parse ``argv`` (``sys.argv[1:]`` when None) into a validated ``config_cls``."""
    parser = parser_for(config_cls, description, defaults=defaults, **parser_kw)
    return config_from(parser, config_cls, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit("experiments.common.flags is part of python -m experiments.<name>, not a command of its own")
