"""SymbolicGPT in JAX: generator, tokenizer, constant fitting, metrics, regressor, baselines.

Imports are lazy so that ``python -m symreg.generate`` (and its worker processes) do not
start JAX."""

import importlib

_LAZY = {
    "SymbolicGPTRegressor": "symreg.regressor",
    "FixedCandidates": "symreg.candidates",
    "GeneratorCandidates": "symreg.candidates",
    "FitConfig": "symreg.fit",
    "fit_constants": "symreg.fit",
    "fit_many": "symreg.fit",
    "symbolic_recovery": "symreg.metrics",
    "enable_compilation_cache": "symreg.cache",
    "SkeletonTokenizer": "symreg.tokenizer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'symreg' has no attribute {name!r}")
