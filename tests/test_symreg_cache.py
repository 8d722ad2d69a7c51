"""The persistent compilation cache symreg turns on (symreg.cache)."""

import os
import subprocess
import sys

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from symreg import cache


@pytest.fixture
def fresh_cache_state(monkeypatch):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    monkeypatch.setattr(cache, "_state", {"dir": None, "done": False})
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()  # JAX keeps the first directory it used until reset


def test_env_var_turns_it_off_or_moves_it(fresh_cache_state, monkeypatch, tmp_path):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(cache.ENV, "off")
    assert cache.enable_compilation_cache() is None and jax.config.jax_compilation_cache_dir is None
    monkeypatch.setattr(cache, "_state", {"dir": None, "done": False})
    monkeypatch.setenv(cache.ENV, str(tmp_path / "c"))
    assert cache.enable_compilation_cache() == str(tmp_path / "c") == jax.config.jax_compilation_cache_dir
    assert os.path.isdir(tmp_path / "c")
    assert cache.enable_compilation_cache() == str(tmp_path / "c")  # decided once


def test_default_dir_and_user_setting_wins(fresh_cache_state, monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_dir() == str(tmp_path / "sortedjax" / "jax")
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert cache.enable_compilation_cache() == str(tmp_path / "mine")  # a user's JAX setting is kept


@pytest.mark.slow
def test_a_fresh_process_fills_the_cache(tmp_path):
    code = "import numpy as np; from symreg import fit; x = np.linspace(-1, 1, 20); fit.fit_constants('C*x1+C', x[:, None], 2*x+1)"
    env = {**os.environ, cache.ENV: str(tmp_path / "c"), "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert len(os.listdir(tmp_path / "c")) >= 1
