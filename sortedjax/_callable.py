"""Modules that are also their main function: ``sortedjax.train`` and ``sortedjax.extract``.

``sj.train(...)`` and ``sj.extract(model, sub)`` are the public API, but ``sortedjax.train`` is a
package and ``sortedjax.extract`` a module: once either is imported, Python binds the module to
that attribute of ``sortedjax``. Making the module call its function keeps both readings true:
``sj.train(model, loss_fn, data, cfg)`` and ``from sortedjax.train import TrainConfig``.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)


def make_callable(module_name: str, fn: Callable) -> None:
    """Make module ``module_name`` call ``fn``; its signature and doc are ``fn``'s for ``help``/``inspect``."""
    module = sys.modules[module_name]
    module.__class__ = _CallableModule
    module.__wrapped__ = fn
    module.__signature__ = inspect.signature(fn)
