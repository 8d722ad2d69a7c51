"""The thesis' training rules: :mod:`~sortedjax.methods.objectives` (SortedNet, Algorithm 2),
:mod:`~sortedjax.methods.dylora` (DyLoRA, Algorithm 1), :mod:`~sortedjax.methods.soft` (SoFT),
:mod:`~sortedjax.methods.slimmable` (NS / US baselines), :mod:`~sortedjax.methods.retune`
(per-sub-model classifier re-tuning)."""
