"""Test setup: 8 simulated CPU devices, set before any JAX backend starts."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# symreg turns JAX's persistent compilation cache on for the whole process; the tests keep it off
# (tests/test_symreg_cache.py turns it on in temporary directories and resets JAX's cache after):
# a persistent cache shared across the suite's differently configured processes is not under test.
os.environ.setdefault("SYMREG_COMPILATION_CACHE", "off")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
# implicit rank promotion hides shape bugs, so library code broadcasts explicitly
jax.config.update("jax_numpy_rank_promotion", "raise")
