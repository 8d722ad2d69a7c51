"""Sentence(-pair) classification and regression for encoders (thesis ch. 3, NLU).

* :mod:`~sortedjax.data.nlu.glue` -- GLUE through ``datasets`` (or a local file), each task's
  thesis metric, encoding with any Hugging Face tokenizer, :func:`task_loss`, :func:`predict`,
  :func:`evaluate` at any sub-model / rank;
* :mod:`~sortedjax.data.nlu.tasks` -- generated offline tasks and :func:`task_spec`, the spec of a
  GLUE config or a generated task (an unknown name raises ``ValueError`` listing the allowed ones);
* :mod:`~sortedjax.data.nlu.pretrain` -- a small encoder pre-trained here by masked LM and saved as
  a Hugging Face checkpoint.
"""

from sortedjax.data.nlu.glue import (
    GLUE,
    METRICS,
    Example,
    TaskSpec,
    accuracy,
    encode,
    evaluate,
    f1,
    glue_spec,
    load_glue,
    matthews,
    metric,
    pearson,
    predict,
    task_loss,
)
from sortedjax.data.nlu.tasks import TASKS, GeneratedTask, make_task, task_spec

__all__ = [
    "GLUE",
    "METRICS",
    "TASKS",
    "Example",
    "GeneratedTask",
    "TaskSpec",
    "accuracy",
    "encode",
    "evaluate",
    "f1",
    "glue_spec",
    "load_glue",
    "make_task",
    "matthews",
    "metric",
    "pearson",
    "predict",
    "task_loss",
    "task_spec",
]
