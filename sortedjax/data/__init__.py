"""Data: real loaders (``datasets``, ``tensorflow-datasets``) and the generated offline tasks.

:mod:`~sortedjax.data.instruct` (Alpaca / TriviaQA and the built-in instruction task),
:mod:`~sortedjax.data.nlu` (GLUE and generated sentence tasks, a small BERT pre-trained here),
:mod:`~sortedjax.data.nlg` (E2E NLG and a generated data-to-text task),
:mod:`~sortedjax.data.vision` (CIFAR-10 through tfds, scikit-learn's digits offline).
"""
