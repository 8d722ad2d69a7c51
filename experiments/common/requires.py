"""Optional dependencies, checked before any work: a missing one fails at once with the extra
that installs it, not after minutes of training."""

from __future__ import annotations

import importlib.util

EXTRAS = {  # importable module -> the pyproject extra that installs it
    "torch": "torch",
    "tensorflow_datasets": "vision",
    "gplearn": "baselines",
    "pyoperon": "baselines",
    "peft": "test",
}


def missing(modules) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(*modules: str, why: str) -> None:
    """SystemExit naming the missing modules of ``modules`` and the ``pip install`` that brings
    them, when any is missing; ``why``: what needs them (e.g. "--methods gplearn")."""
    unknown = [m for m in modules if m not in EXTRAS]
    if unknown:
        raise ValueError(f"no extra is known for {unknown}; known: {sorted(EXTRAS)}")
    gone = missing(modules)
    if gone:
        extras = ",".join(sorted({EXTRAS[m] for m in gone}))
        raise SystemExit(f'{why} needs {", ".join(gone)}, which is not installed: pip install -e ".[{extras}]"')
