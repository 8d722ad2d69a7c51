"""The SymbolicGPT thesis equation generator, sympy conversion and skeletons.

Each instance starts as a perfectly balanced binary tree of depth ``k``: ``2^(k-1)-1``
internal nodes drawn uniformly from the operator set P and ``2^(k-1)`` leaves drawn
uniformly from ``x1..xd``. Unary operators (``id sin cos sqrt exp log arcsin``) take
their left child and drop the right subtree, so ``id`` yields shallower and unbalanced
trees; with probability ``terminal_prob`` an internal node is a *terminal* (a variable)
and discards both children. ``pow`` is binary as in the thesis' operator set: the left
subtree raised to the right subtree (``pow_mode="binary"``, default; a negative base with a
non-integer exponent gives NaN and the dataset generator drops the equation). The older
``pow_mode="unary"`` raises the left child to an integer drawn from ``exponents``. At
every node, with probability ``const_prob`` (r) a multiplicative
constant from U[c_min, c_max] is drawn and, independently, an additive one:
``node = a * op(children) + b``.

``to_sympy(tree)`` gives the expression with float constants; ``skeletonize(expr)``
replaces every numeric constant (floats, pi, E and integer coefficients other than +-1)
by ``C`` while keeping exponents, e.g. ``1.3*sin(2.8*x1) + 0.5 -> C*sin(C*x1)+C``.
``parse_skeleton`` reads a skeleton back with one sympy symbol per ``C``.
Everything is a pure function of a ``numpy.random.Generator``: same seed, same trees.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import sympy
from sympy.parsing.sympy_parser import parse_expr

OPERATORS = ("id", "add", "mul", "sin", "pow", "cos", "sqrt", "exp", "div", "sub", "log", "arcsin")
UNARY = frozenset({"id", "sin", "cos", "sqrt", "exp", "log", "arcsin"})  # and pow when pow_mode="unary"
BINARY = frozenset({"add", "mul", "div", "sub", "pow"})
POW_MODES = ("binary", "unary")
MAX_VARS = 9
X_SYMBOLS = tuple(sympy.Symbol(f"x{i}") for i in range(1, MAX_VARS + 1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Thesis defaults: depth k=4, constant probability r=0.5, constants in [-2.1, 2.1]."""

    n_vars: int = 1
    depth: int = 4
    operators: tuple[str, ...] = OPERATORS
    const_prob: float = 0.5
    const_range: tuple[float, float] = (-2.1, 2.1)
    exponents: tuple[int, ...] = (2, 3)  # pow_mode="unary" only
    pow_mode: str = "binary"
    terminal_prob: float = 0.1
    decimals: int = 3

    def __post_init__(self):
        if not 1 <= self.n_vars <= MAX_VARS:
            raise ValueError(f"n_vars must be in 1..{MAX_VARS}, got {self.n_vars}")
        if not 1 <= self.depth <= 8:
            raise ValueError(f"depth must be in 1..8, got {self.depth}")
        unknown = set(self.operators) - set(OPERATORS)
        if not self.operators or unknown:
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS}, got unknown {sorted(unknown)}")
        if not 0.0 <= self.const_prob <= 1.0:
            raise ValueError(f"const_prob must be in [0, 1], got {self.const_prob}")
        if not self.const_range[0] < self.const_range[1]:
            raise ValueError(f"const_range must be (low, high) with low < high, got {self.const_range}")
        if not self.exponents or any(int(e) != e or e < 1 for e in self.exponents):
            raise ValueError(f"exponents must be positive integers, got {self.exponents}")
        if self.pow_mode not in POW_MODES:
            raise ValueError(f"pow_mode must be one of {POW_MODES}, got {self.pow_mode!r}")
        if not 0.0 <= self.terminal_prob < 1.0:
            raise ValueError(f"terminal_prob must be in [0, 1), got {self.terminal_prob}")


@dataclasses.dataclass(frozen=True)
class Tree:
    """A heap-ordered balanced tree: node i has children 2i+1 and 2i+2.

    ``labels[i]`` is an operator for internal nodes or ``"x<j>"`` for leaves and terminals;
    ``mul[i]`` / ``add[i]`` are the node's constants (``None`` when not drawn);
    ``exponent[i]`` is set for unary ``pow`` nodes (``pow_mode="unary"``); a ``pow`` node
    without one is binary. Only nodes reachable from the root are used."""

    labels: tuple[str, ...]
    mul: tuple[float | None, ...]
    add: tuple[float | None, ...]
    exponent: tuple[int | None, ...]

    def unary(self, i: int) -> bool:
        return self.labels[i] in UNARY or (self.labels[i] == "pow" and self.exponent[i] is not None)

    def reachable(self, i: int = 0) -> list[int]:
        if self.labels[i].startswith("x"):
            return [i]
        kids = [2 * i + 1] if self.unary(i) else [2 * i + 1, 2 * i + 2]
        return [i] + [j for k in kids for j in self.reachable(k)]

    def depth(self, i: int = 0) -> int:
        if self.labels[i].startswith("x"):
            return 1
        kids = [2 * i + 1] if self.unary(i) else [2 * i + 1, 2 * i + 2]
        return 1 + max(self.depth(k) for k in kids)


def sample_tree(rng: np.random.Generator, cfg: GeneratorConfig) -> Tree:
    n_internal = 2 ** (cfg.depth - 1) - 1
    n_nodes = 2 * n_internal + 1
    ops = rng.choice(len(cfg.operators), size=n_internal)
    terminal = rng.random(n_internal) < cfg.terminal_prob
    var_ids = rng.integers(1, cfg.n_vars + 1, size=n_nodes)
    has_mul = rng.random(n_nodes) < cfg.const_prob
    has_add = rng.random(n_nodes) < cfg.const_prob
    lo, hi = cfg.const_range
    mul_vals = np.round(rng.uniform(lo, hi, size=n_nodes), cfg.decimals)
    add_vals = np.round(rng.uniform(lo, hi, size=n_nodes), cfg.decimals)
    exps = rng.choice(np.asarray(cfg.exponents), size=n_nodes)
    labels = []
    for i in range(n_nodes):
        if i < n_internal and not terminal[i]:
            labels.append(cfg.operators[ops[i]])
        else:
            labels.append(f"x{var_ids[i]}")
    return Tree(
        labels=tuple(labels),
        mul=tuple(float(v) if h else None for v, h in zip(mul_vals, has_mul)),
        add=tuple(float(v) if h else None for v, h in zip(add_vals, has_add)),
        exponent=tuple(int(e) if l == "pow" and cfg.pow_mode == "unary" else None for e, l in zip(exps, labels)),
    )


_SYMPY_UNARY = {
    "id": lambda a: a,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "sqrt": sympy.sqrt,
    "exp": sympy.exp,
    "log": sympy.log,
    "arcsin": sympy.asin,
}
_SYMPY_BINARY = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "sub": lambda a, b: a - b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
}


def to_sympy(tree: Tree, i: int = 0) -> sympy.Expr:
    label = tree.labels[i]
    if label.startswith("x"):
        out = X_SYMBOLS[int(label[1:]) - 1]
    elif label == "pow" and tree.exponent[i] is not None:
        out = to_sympy(tree, 2 * i + 1) ** tree.exponent[i]
    elif label in UNARY:
        out = _SYMPY_UNARY[label](to_sympy(tree, 2 * i + 1))
    else:
        out = _SYMPY_BINARY[label](to_sympy(tree, 2 * i + 1), to_sympy(tree, 2 * i + 2))
    if tree.mul[i] is not None:
        out = sympy.Float(tree.mul[i]) * out
    if tree.add[i] is not None:
        out = out + sympy.Float(tree.add[i])
    return out


_NP_UNARY = {
    "id": lambda a: a,
    "sin": np.sin,
    "cos": np.cos,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "arcsin": np.arcsin,
}
_NP_BINARY = {"add": np.add, "mul": np.multiply, "sub": np.subtract, "div": np.divide, "pow": np.power}


def evaluate_tree(tree: Tree, X: np.ndarray, i: int = 0) -> np.ndarray:
    """Evaluates the tree on X (n, d) in float64 numpy; domain errors give nan/inf."""
    label = tree.labels[i]
    with np.errstate(all="ignore"):
        if label.startswith("x"):
            out = X[:, int(label[1:]) - 1].astype(np.float64)
        elif label == "pow" and tree.exponent[i] is not None:
            out = evaluate_tree(tree, X, 2 * i + 1) ** tree.exponent[i]
        elif label in UNARY:
            out = _NP_UNARY[label](evaluate_tree(tree, X, 2 * i + 1))
        else:
            out = _NP_BINARY[label](evaluate_tree(tree, X, 2 * i + 1), evaluate_tree(tree, X, 2 * i + 2))
        if tree.mul[i] is not None:
            out = tree.mul[i] * out
        if tree.add[i] is not None:
            out = out + tree.add[i]
    return out


def skeletonize(expr: sympy.Expr) -> tuple[str, list[float]]:
    """Replaces numeric constants by ``C``; returns the skeleton string (no spaces) and the
    replaced values in the order their ``C`` appears in the text (the order
    ``parse_skeleton`` numbers them)."""
    values: list[float] = []
    symbols: list[sympy.Symbol] = []

    def new_const(v) -> sympy.Symbol:
        values.append(float(v))
        symbols.append(sympy.Symbol(f"c{len(symbols)}"))
        return symbols[-1]

    def walk(e):
        if not e.free_symbols:  # a number, pi, sqrt(2)...: one constant
            return e if e in (sympy.Integer(1), sympy.Integer(-1)) else new_const(e)
        if e.is_Pow and e.exp.is_Rational:
            return sympy.Pow(walk(e.base), e.exp)
        if e.is_Mul or e.is_Add:  # numeric factors / terms fold into one constant
            numeric = [a for a in e.args if not a.free_symbols]
            rest = [walk(a) for a in e.args if a.free_symbols]
            if numeric:
                folded = e.func(*numeric)
                keep = (0,) if e.is_Add else (0, 1, -1)  # a Mul keeps its sign, an Add term is a constant
                if folded not in keep:
                    rest.insert(0, new_const(folded))
                elif folded == -1:
                    rest.insert(0, folded)
            return e.func(*rest)
        if e.is_Symbol:
            return e
        return e.func(*[walk(a) for a in e.args])

    printed = sympy.sstr(walk(expr))
    order = [int(m[1:]) for m in re.findall(r"\bc\d+\b", printed)]
    text = re.sub(r"\bc\d+\b", "C", printed).replace(" ", "")
    return text, [values[k] for k in order]


SYMPY_FUNCS = {  # the names a skeleton (or a fitted expression string) may use, for sympy parsing
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "exp": sympy.exp,
    "log": sympy.log,
    "sqrt": sympy.sqrt,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
    "abs": sympy.Abs,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "pi": sympy.pi,
    "E": sympy.E,
    "Integer": sympy.Integer,
    "Float": sympy.Float,
    "Rational": sympy.Rational,
    "Symbol": sympy.Symbol,
}
_POWER_TOWER = re.compile(r"\d\s*\*\*\s*\(?\s*\d+\s*\*\*")


def parse_skeleton(skeleton: str, max_vars: int = MAX_VARS) -> tuple[sympy.Expr, list[sympy.Symbol]]:
    """Parses a skeleton; the k-th ``C`` becomes symbol ``c<k>``. Raises ValueError (with
    the reason) for text that does not parse into an expression in x1..x<max_vars> and C."""
    if not isinstance(skeleton, str) or not skeleton.strip():
        raise ValueError("empty skeleton")
    if "_" in skeleton or "[" in skeleton or "lambda" in skeleton:
        raise ValueError(f"skeleton {skeleton!r} contains forbidden characters")
    if _POWER_TOWER.search(skeleton):
        raise ValueError(f"skeleton {skeleton!r} has a numeric power tower")
    n_c = 0

    def sub(_):
        nonlocal n_c
        n_c += 1
        return f"c{n_c - 1}"

    text = re.sub(r"(?<![A-Za-z0-9])C(?![A-Za-z0-9])", sub, skeleton)
    consts = [sympy.Symbol(f"c{k}") for k in range(n_c)]
    local = {f"x{i}": X_SYMBOLS[i - 1] for i in range(1, MAX_VARS + 1)}
    local.update({f"c{k}": s for k, s in enumerate(consts)})
    try:
        expr = parse_expr(text, local_dict=local, global_dict=dict(SYMPY_FUNCS))
    except Exception as e:  # sympy raises many types (SyntaxError, TypeError, TokenError...)
        raise ValueError(f"skeleton {skeleton!r} does not parse: {type(e).__name__}: {e}") from None
    if not isinstance(expr, sympy.Expr):
        raise ValueError(f"skeleton {skeleton!r} is not an expression")
    allowed = set(X_SYMBOLS[:max_vars]) | set(consts)
    extra = expr.free_symbols - allowed
    if extra:
        raise ValueError(f"skeleton {skeleton!r} uses unknown symbols {sorted(map(str, extra))}")
    if expr.has(sympy.I, sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
        raise ValueError(f"skeleton {skeleton!r} contains I, infinity or nan")
    return expr, consts
