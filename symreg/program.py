"""Skeletons as padded straight-line programs (run by :mod:`symreg.interpreter`).

``compile_skeleton("C*sin(C*x1)+C")`` walks the sympy tree (no string eval) and emits
instructions in SSA form, leaves first: variables / constants / literals (``imm_i``
names which), then operations ``op_i(v[a_i], v[b_i])`` on earlier values; the root is
last. ``pack_programs`` pads a batch to (leaf slots, operation slots) buckets; padding
operations copy the root, so the result is always the last slot. Because a program is
data (int32 / float32 arrays), ONE jit-compiled interpreter (``interpreter.evaluate``) serves every
skeleton of a bucket shape, and ``jax.vmap`` runs different skeletons side by side: no
compile per skeleton.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import sympy

import symreg.expressions as expressions

OPS = (
    "id",
    "var",
    "const",
    "lit",
    "add",
    "mul",
    "inv",
    "powi",
    "sqrt",
    "powf",
    "pow",
    "sin",
    "cos",
    "tan",
    "exp",
    "log",
    "asin",
    "acos",
    "atan",
    "tanh",
    "abs",
)
OP = {name: i for i, name in enumerate(OPS)}
_FUNC_OPS = {
    sympy.sin: "sin",
    sympy.cos: "cos",
    sympy.tan: "tan",
    sympy.exp: "exp",
    sympy.log: "log",
    sympy.asin: "asin",
    sympy.acos: "acos",
    sympy.atan: "atan",
    sympy.tanh: "tanh",
    sympy.Abs: "abs",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    skeleton: str
    expr: sympy.Expr  # constants as symbols c0..c{K-1}
    consts: tuple[sympy.Symbol, ...]
    op: np.ndarray  # int32 (L,)
    a: np.ndarray  # int32 (L,)
    b: np.ndarray  # int32 (L,)
    imm: np.ndarray  # float32 (L,)
    n_vars: int  # highest variable index used

    @property
    def length(self) -> int:
        return len(self.op)

    @property
    def n_consts(self) -> int:
        return len(self.consts)

    @property
    def n_leaves(self) -> int:  # variables, constants and literals come first
        return int(np.sum((self.op >= OP["var"]) & (self.op <= OP["lit"])))


class _Emitter:
    def __init__(self, const_index: dict):
        self.rows: list[tuple[int, int, int, float]] = []
        self.const_index = const_index
        self.n_vars = 0
        self.memo: dict = {}

    def emit(self, op: str, a: int = 0, b: int = 0, imm: float = 0.0) -> int:
        self.rows.append((OP[op], a, b, float(imm)))
        return len(self.rows) - 1

    def fold(self, op: str, args) -> int:
        idx = [self.walk(x) for x in args]
        out = idx[0]
        for j in idx[1:]:
            out = self.emit(op, out, j)
        return out

    def walk(self, e) -> int:
        if e in self.memo:  # shared subexpressions are computed once
            return self.memo[e]
        out = self._walk(e)
        self.memo[e] = out
        return out

    def _walk(self, e) -> int:
        if e.is_Symbol:
            if e in self.const_index:
                return self.emit("const", imm=self.const_index[e])
            name = str(e)
            if name.startswith("x") and name[1:].isdigit():
                j = int(name[1:])
                self.n_vars = max(self.n_vars, j)
                return self.emit("var", imm=j - 1)
            raise ValueError(f"unknown symbol {name}")
        if e.is_Number or e.is_NumberSymbol:
            v = complex(e)
            if v.imag != 0 or not np.isfinite(v.real):
                raise ValueError(f"non-real or infinite number {e}")
            return self.emit("lit", imm=v.real)
        if e.is_Add:
            return self.fold("add", e.args)
        if e.is_Mul:
            return self.fold("mul", e.args)
        if e.is_Pow:
            base, ex = e.args
            if ex.is_Integer:
                n = int(ex)
                if n == 0:
                    return self.emit("lit", imm=1.0)
                if abs(n) > 64:
                    raise ValueError(f"integer exponent {n} too large")
                out = self.walk(base) if abs(n) == 1 else self.emit("powi", self.walk(base), imm=abs(n))
                return self.emit("inv", out) if n < 0 else out
            if ex.is_Rational and abs(ex) == sympy.Rational(1, 2):
                out = self.emit("sqrt", self.walk(base))
                return self.emit("inv", out) if ex < 0 else out
            if ex.is_Number:
                return self.emit("powf", self.walk(base), imm=float(ex))
            if base == sympy.E:
                return self.emit("exp", self.walk(ex))
            return self.emit("pow", self.walk(base), self.walk(ex))
        if e.func in _FUNC_OPS and len(e.args) == 1:
            return self.emit(_FUNC_OPS[e.func], self.walk(e.args[0]))
        raise ValueError(f"unsupported function {e.func.__name__}")


@functools.lru_cache(maxsize=65536)
def compile_skeleton(skeleton: str, max_vars: int = expressions.MAX_VARS) -> Program:
    """Parses and compiles a skeleton; raises ValueError naming what is wrong."""
    expr, consts = expressions.parse_skeleton(skeleton, max_vars=max_vars)
    em = _Emitter({c: k for k, c in enumerate(consts)})
    em.walk(expr)
    rows = np.array(em.rows, dtype=np.float64).reshape(-1, 4)
    # Leaves first (they depend on nothing), so the interpreter loads them in one vector step.
    leaf = np.isin(rows[:, 0], [OP["var"], OP["const"], OP["lit"]])
    order = np.concatenate([np.flatnonzero(leaf), np.flatnonzero(~leaf)])
    remap = np.empty(len(rows), np.int64)
    remap[order] = np.arange(len(rows))
    rows = rows[order]
    rows[~leaf[order], 1:3] = remap[rows[~leaf[order], 1:3].astype(np.int64)]
    return Program(
        skeleton=skeleton,
        expr=expr,
        consts=tuple(consts),
        op=rows[:, 0].astype(np.int32),
        a=rows[:, 1].astype(np.int32),
        b=rows[:, 2].astype(np.int32),
        imm=rows[:, 3].astype(np.float32),
        n_vars=em.n_vars,
    )


def bucket(n: int, minimum: int) -> int:
    """Smallest power of two >= max(n, minimum): bounds the number of compiled shapes."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def pack_programs(programs: list[Program], n_leaves: int, n_ops: int) -> dict[str, np.ndarray]:
    """Stacks programs into padded arrays: leaves (B, n_leaves) and operations (B, n_ops).

    Value slots are ``[leaves (n_leaves); operations (n_ops)]``; operand indices point into
    them. Padding leaves are the literal 0; padding operations copy the program's root, so
    the result is always the last slot."""
    B = len(programs)
    leaf_kind = np.full((B, n_leaves), LEAF_LIT, np.int32)
    leaf_idx = np.zeros((B, n_leaves), np.int32)
    leaf_imm = np.zeros((B, n_leaves), np.float32)
    op = np.full((B, n_ops), OP["id"], np.int32)
    a = np.zeros((B, n_ops), np.int32)
    b = np.zeros((B, n_ops), np.int32)
    imm = np.zeros((B, n_ops), np.float32)
    for i, p in enumerate(programs):
        m = p.n_leaves
        if m > n_leaves or p.length - m > n_ops:
            raise ValueError(
                f"program with {m} leaves and {p.length - m} operations does not fit in ({n_leaves}, {n_ops})"
            )
        leaf_kind[i, :m] = p.op[:m] - OP["var"]
        leaf_idx[i, :m] = p.imm[:m].astype(np.int32)
        leaf_imm[i, :m] = p.imm[:m]
        remap = np.concatenate([np.arange(m), n_leaves + np.arange(p.length - m)]).astype(np.int32)
        root = remap[p.length - 1]
        op[i, : p.length - m], imm[i, : p.length - m] = p.op[m:], p.imm[m:]
        a[i, : p.length - m], b[i, : p.length - m] = remap[p.a[m:]], remap[p.b[m:]]
        a[i, p.length - m :] = root
    return {"leaf_kind": leaf_kind, "leaf_idx": leaf_idx, "leaf_imm": leaf_imm, "op": op, "a": a, "b": b, "imm": imm}


LEAF_VAR, LEAF_CONST, LEAF_LIT = 0, 1, 2  # leaf kinds: OP[...] - OP["var"]
