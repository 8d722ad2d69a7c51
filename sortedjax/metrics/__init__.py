"""Scores: :mod:`~sortedjax.metrics.text` (BLEU-4, ROUGE-L), :mod:`~sortedjax.metrics.evaluation`
(exact match, pairwise judge), :mod:`~sortedjax.metrics.analysis` (KL / cosine between exits)."""
