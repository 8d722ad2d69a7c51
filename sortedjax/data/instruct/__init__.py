"""Instruction data for Sorted LLaMA: one import for the three modules that hold it.

* :mod:`sortedjax.data.instruct.loaders` -- the Alpaca template, :class:`Example`, loaders of
  Alpaca / TriviaQA records through ``datasets`` (local files or hub names).
* :mod:`sortedjax.data.instruct.task` -- the offline built-in task (QA about an invented world,
  one-digit sums), its pre-training corpus, and the word-level tokenizer of its base model.
* :mod:`sortedjax.data.instruct.encode` -- response-only-masked training arrays, LM arrays,
  left-padded prompts, decoding of generated ids, step-indexed batches.
"""

from sortedjax.data.instruct.encode import (
    Encoded,
    decode_responses,
    encode_lm,
    encode_prompts,
    encode_sft,
    pad_id_of,
    step_batches,
)
from sortedjax.data.instruct.loaders import (
    ALPACA_HUB,
    ALPACA_PROMPT,
    ALPACA_PROMPT_INPUT,
    TRIVIAQA_HUB,
    Example,
    alpaca_examples,
    alpaca_prompt,
    load_alpaca,
    load_dataset_examples,
    load_records,
    load_triviaqa,
    triviaqa_examples,
)
from sortedjax.data.instruct.task import (
    SPECIAL_TOKENS,
    BuiltinTask,
    builtin_corpus,
    builtin_task,
    task_tokenizer,
)

__all__ = [
    "ALPACA_HUB",
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_INPUT",
    "SPECIAL_TOKENS",
    "TRIVIAQA_HUB",
    "BuiltinTask",
    "Encoded",
    "Example",
    "alpaca_examples",
    "alpaca_prompt",
    "task_tokenizer",
    "builtin_corpus",
    "builtin_task",
    "decode_responses",
    "encode_lm",
    "encode_prompts",
    "encode_sft",
    "load_alpaca",
    "load_dataset_examples",
    "load_records",
    "load_triviaqa",
    "pad_id_of",
    "step_batches",
    "triviaqa_examples",
]
