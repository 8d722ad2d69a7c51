"""Instruction records: the Alpaca template, :class:`Example`, loaders through ``datasets``.

* :func:`alpaca_prompt` -- the Stanford Alpaca prompt template (with / without input).
* :func:`load_alpaca`, :func:`load_triviaqa` -- records through ``datasets.load_dataset``,
  from a local JSON / JSON-lines / Parquet / CSV file (or a folder of them) or a hub name
  (``tatsu-lab/alpaca``; ``mandarjoshi/trivia_qa`` config ``rc.nocontext``: closed book).
* :func:`load_dataset_examples` -- the ``--dataset`` spellings of ``experiments.soft``.

A record missing a required field is reported with its index and the fields it has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

TRIVIAQA_HUB = ("mandarjoshi/trivia_qa", "rc.nocontext")
ALPACA_HUB = "tatsu-lab/alpaca"


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt for one record (the no-input variant when ``input`` is empty)."""
    if input and input.strip():
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT.format(instruction=instruction)


@dataclasses.dataclass(frozen=True)
class Example:
    """One instruction example; ``answers`` are every response that counts as correct."""

    instruction: str
    output: str
    input: str = ""
    answers: tuple[str, ...] = ()
    kind: str = ""

    @property
    def prompt(self) -> str:
        return alpaca_prompt(self.instruction, self.input)

    @property
    def references(self) -> tuple[str, ...]:
        return self.answers or (self.output,)


_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_records(source: str, *, config: str | None = None, split: str = "train", limit: int | None = None):
    """Rows of a dataset as dicts, through ``datasets.load_dataset``.

    ``source`` is a local file / folder (JSON, JSON lines, Parquet, CSV) or a hub name.
    """
    import datasets

    path = Path(source)
    if path.exists():
        files = sorted(p for p in path.iterdir() if p.suffix in _BUILDERS) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"no .json/.jsonl/.parquet/.csv files in data folder {source!r}")
        kinds = {_BUILDERS.get(p.suffix) for p in files}
        if None in kinds or len(kinds) != 1:
            raise ValueError(
                f"cannot read data file(s) {[str(p) for p in files]}: use one format of {sorted(_BUILDERS)}"
            )
        empty = [str(p) for p in files if p.stat().st_size == 0]
        if empty:
            raise ValueError(f"data file {empty[0]!r} is empty")
        kind = kinds.pop()
        try:
            ds = datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train")
        except Exception as e:  # datasets hides the cause ("An error occurred while generating the dataset")
            cause = e.__cause__ or e
            raise ValueError(f"cannot read {[str(p) for p in files]} as {kind}: {type(cause).__name__}: {cause}") from e
    else:
        ds = datasets.load_dataset(source, config, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(r) for r in ds]


def _require(record: dict, fields: Sequence[str], i: int, source: str) -> None:
    for f in fields:
        if f not in record or record[f] is None:
            raise ValueError(
                f"record {i} of {source!r} is missing required field {f!r} (it has fields {sorted(record)})"
            )


def alpaca_examples(records: Iterable[dict], source: str = "data") -> list[Example]:
    """Alpaca records (``instruction``, optional ``input``, ``output``) to examples."""
    out = []
    for i, r in enumerate(records):
        _require(r, ("instruction", "output"), i, source)
        out.append(Example(str(r["instruction"]), str(r["output"]), str(r.get("input") or ""), kind="alpaca"))
    return out


def triviaqa_examples(records: Iterable[dict], source: str = "data") -> list[Example]:
    """TriviaQA records (``question``, ``answer.value``, ``answer.aliases``), closed book."""
    out = []
    for i, r in enumerate(records):
        _require(r, ("question", "answer"), i, source)
        ans = r["answer"]
        if not isinstance(ans, dict) or not ans.get("value"):
            raise ValueError(f"record {i} of {source!r} is missing required field 'answer.value'")
        aliases = tuple(dict.fromkeys([ans["value"], *(ans.get("aliases") or [])]))
        out.append(Example(str(r["question"]), str(ans["value"]), answers=aliases, kind="triviaqa"))
    return out


def load_alpaca(source: str = ALPACA_HUB, *, split: str = "train", limit: int | None = None) -> list[Example]:
    return alpaca_examples(load_records(source, split=split, limit=limit), source)


def load_triviaqa(
    source: str = TRIVIAQA_HUB[0],
    *,
    config: str | None = TRIVIAQA_HUB[1],
    split: str = "train",
    limit: int | None = None,
) -> list[Example]:
    return triviaqa_examples(load_records(source, config=config, split=split, limit=limit), source)


def load_dataset_examples(spec: str, *, split: str = "train", limit: int | None = None) -> list[Example]:
    """``--dataset`` values: ``builtin``, ``alpaca[:SOURCE]``, ``triviaqa[:SOURCE]`` or a path /
    hub name whose records are recognised by their fields."""
    kind, _, source = spec.partition(":")
    if kind == "builtin":
        raise ValueError("use builtin_task() for the built-in task")
    if kind == "alpaca":
        return load_alpaca(source or ALPACA_HUB, split=split, limit=limit)
    if kind == "triviaqa":
        if source:
            return load_triviaqa(
                source, config=None if Path(source).exists() else TRIVIAQA_HUB[1], split=split, limit=limit
            )
        return load_triviaqa(split=split, limit=limit)
    records = load_records(spec, split=split, limit=limit)
    if records and "question" in records[0]:
        return triviaqa_examples(records, spec)
    return alpaca_examples(records, spec)
