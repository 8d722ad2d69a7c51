"""Tokenized arrays for training and generation, decoding, and step-indexed batches.

* :func:`encode_sft` -- ``inputs`` / ``targets`` / ``mask`` arrays with the loss on response
  tokens only; over-long prompts are truncated from the left and counted in one warning.
* :func:`encode_lm` -- plain language-model arrays; :func:`encode_prompts` -- left-padded
  prompts for generation; :func:`decode_responses` -- generated ids back to strings.
* :func:`step_batches` -- ``step -> batch``, a pure function of the step (resumable).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from sortedjax.data.instruct.loaders import Example


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_id_of(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Next-token arrays, ``N x L``: ``mask`` is 1 where ``targets`` is a response token."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    num_truncated: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {"inputs": self.inputs, "targets": self.targets, "mask": self.mask}


def encode_sft(
    tokenizer,
    examples: Sequence[Example],
    *,
    max_len: int,
    max_response_len: int | None = None,
    warn: bool = True,
) -> Encoded:
    """Tokenize ``BOS prompt response EOS`` into inputs / targets / response-only mask.

    Responses longer than ``max_response_len`` (default ``max_len // 2``) are cut; prompts
    that do not fit in the rest are truncated from the left (BOS kept). Truncations are
    counted and reported in one warning.
    """
    if max_len < 4:
        raise ValueError(f"max_len must be >= 4, got {max_len}")
    max_resp = max_len // 2 if max_response_len is None else max_response_len
    if not 1 <= max_resp < max_len:
        raise ValueError(f"max_response_len must be in 1..{max_len - 1}, got {max_resp}")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id_of(tokenizer)
    n = len(examples)
    inputs = np.full((n, max_len), pad, np.int32)
    targets = np.full((n, max_len), pad, np.int32)
    mask = np.zeros((n, max_len), np.float32)
    truncated = 0
    for i, ex in enumerate(examples):
        prompt = ([bos] if bos is not None else []) + _ids(tokenizer, ex.prompt)
        resp = _ids(tokenizer, ex.output) + ([eos] if eos is not None else [])
        cut = False
        if len(resp) > max_resp:
            resp, cut = resp[:max_resp], True
        room = max_len + 1 - len(resp)  # sequence of length L+1 gives L (input, target) pairs
        if len(prompt) > room:
            keep = room - (1 if bos is not None else 0)
            prompt = ([bos] if bos is not None else []) + prompt[len(prompt) - keep :]
            cut = True
        truncated += cut
        seq = prompt + resp
        inputs[i, : len(seq) - 1] = seq[:-1]
        targets[i, : len(seq) - 1] = seq[1:]
        mask[i, len(prompt) - 1 : len(seq) - 1] = 1.0
    if truncated and warn:
        warnings.warn(
            f"{truncated} of {n} examples were longer than max_len={max_len} "
            f"(max_response_len={max_resp}) and were truncated",
            stacklevel=2,
        )
    return Encoded(inputs, targets, mask, truncated)


def encode_lm(tokenizer, texts: Sequence[str], *, max_len: int) -> Encoded:
    """Plain language-model arrays (loss on every real token) for base-model training."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id_of(tokenizer)
    n = len(texts)
    inputs = np.full((n, max_len), pad, np.int32)
    targets = np.full((n, max_len), pad, np.int32)
    mask = np.zeros((n, max_len), np.float32)
    truncated = 0
    for i, t in enumerate(texts):
        seq = ([bos] if bos is not None else []) + _ids(tokenizer, t) + ([eos] if eos is not None else [])
        if len(seq) > max_len + 1:
            seq, truncated = seq[: max_len + 1], truncated + 1
        inputs[i, : len(seq) - 1] = seq[:-1]
        targets[i, : len(seq) - 1] = seq[1:]
        mask[i, : len(seq) - 1] = 1.0
    return Encoded(inputs, targets, mask, truncated)


def encode_prompts(
    tokenizer, examples: Sequence[Example], *, max_len: int, warn: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids ``N x max_len`` and their attention mask, for generation."""
    bos, pad = tokenizer.bos_token_id, pad_id_of(tokenizer)
    ids = np.full((len(examples), max_len), pad, np.int32)
    att = np.zeros((len(examples), max_len), np.int32)
    truncated = 0
    for i, ex in enumerate(examples):
        p = ([bos] if bos is not None else []) + _ids(tokenizer, ex.prompt)
        if len(p) > max_len:
            p = ([bos] if bos is not None else []) + p[len(p) - max_len + (1 if bos is not None else 0) :]
            truncated += 1
        ids[i, max_len - len(p) :] = p
        att[i, max_len - len(p) :] = 1
    if truncated and warn:
        warnings.warn(
            f"{truncated} of {len(examples)} prompts longer than max_len={max_len} were truncated", stacklevel=2
        )
    return ids, att


def decode_responses(tokenizer, ids: np.ndarray, stop_ids: Sequence[int] = ()) -> list[str]:
    """Generated ids ``N x T`` to strings, cut at the first stop / EOS / pad token."""
    stops = {int(s) for s in stop_ids}
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    out = []
    for row in np.asarray(ids):
        toks = []
        for t in row.tolist():
            if t in stops:
                break
            toks.append(t)
        out.append(tokenizer.decode(toks, skip_special_tokens=True).strip())
    return out


def step_batches(arrays: dict[str, np.ndarray], batch_size: int, *, seed: int = 0) -> Callable[[int], dict]:
    """``step -> batch``: a fresh permutation each epoch, a pure function of the step."""
    n = len(next(iter(arrays.values())))
    if n == 0:
        raise ValueError("no examples to batch")
    per_epoch = max(1, n // batch_size)

    def get(step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(step), per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx = np.resize(perm, per_epoch * batch_size)[i * batch_size : (i + 1) * batch_size]
        return {k: v[idx] for k, v in arrays.items()}

    return get
