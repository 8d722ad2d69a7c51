"""Character-level skeleton tokenizer, as in the SymbolicGPT thesis.

A skeleton such as ``C*sin(C*x1)+C`` is split into single characters; ``C`` is the
constant token. Three special tokens frame a sequence: pad (id 0), start and end.

    tok = SkeletonTokenizer()
    ids = tok.encode("C*x1+C", max_len=16)   # [start, 'C', '*', 'x', '1', '+', 'C', end, pad...]
    tok.decode(ids) == "C*x1+C"

The vocabulary is fixed (not learned from data) so that ids are stable across datasets
and checkpoints: digits, lowercase letters (function names, ``x``), ``C``, ``E``, ``I``
and the punctuation sympy prints (``+ - * / ^ ( ) . ,`` and space).
"""

from __future__ import annotations

import string

from symreg.expressions import parse_skeleton

PAD, START, END = "<pad>", "<s>", "</s>"
CONST = "C"
CHARS = tuple(string.digits + string.ascii_lowercase + "CEI" + "+-*/^().,= ")
MAX_VARS = 9


class SkeletonTokenizer:
    """Maps skeleton strings to int ids and back, one id per character."""

    def __init__(self):
        self.itos: tuple[str, ...] = (PAD, START, END) + CHARS
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.start_id, self.end_id = 0, 1, 2
        self.const_token = CONST
        self.const_id = self.stoi[CONST]
        self.vocab_size = len(self.itos)

    def encode(self, skeleton: str, max_len: int | None = None) -> list[int]:
        bad = sorted({ch for ch in skeleton if ch not in self.stoi or len(ch) != 1})
        if bad:
            raise ValueError(f"skeleton {skeleton!r} has characters outside the vocabulary: {bad}")
        ids = [self.start_id] + [self.stoi[ch] for ch in skeleton] + [self.end_id]
        if max_len is not None:
            if len(ids) > max_len:
                raise ValueError(
                    f"skeleton {skeleton!r} needs {len(ids)} tokens with start/end, more than max_len={max_len}"
                )
            ids += [self.pad_id] * (max_len - len(ids))
        return ids

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside the vocabulary of size {self.vocab_size}")
            out.append(self.itos[i])
        return "".join(out)

    def is_valid(self, skeleton: str) -> bool:
        """True if the skeleton uses only vocabulary characters and sympy parses it into an
        expression in x1..x9 and C (no other free symbols)."""

        if not skeleton or any(ch not in self.stoi for ch in skeleton):
            return False
        try:
            expr, _ = parse_skeleton(skeleton, max_vars=MAX_VARS)
        except ValueError:
            return False
        return expr is not None
