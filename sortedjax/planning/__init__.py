"""Ahead-of-time memory plans: :mod:`~sortedjax.planning.plan` compiles the real train step without
weights; :mod:`~sortedjax.planning.memory` reads XLA's ``memory_analysis()`` and accelerator sizes."""
