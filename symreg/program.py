"""Skeletons as padded straight-line programs, and a guarded JAX interpreter for them.

``compile_skeleton("C*sin(C*x1)+C")`` walks the sympy tree (no string eval) and emits
instructions in SSA form: instruction i computes ``op_i(v[a_i], v[b_i])`` from earlier
values, or loads variable / constant / literal ``imm_i``. Programs are padded to a bucket
length with ``id`` instructions copying the previous value, so the result is always the
last slot. Because a program is data (int32 / float32 arrays), ONE jit-compiled
interpreter (``evaluate``) serves every skeleton of a bucket shape, and ``jax.vmap`` runs
different skeletons side by side: no compile per skeleton.

Domains are guarded so values and gradients stay finite: log / sqrt / real powers need a
positive argument, arcsin / arccos |a| <= 1, 1/a needs |a| > 1e-6 and exp is clipped at
``EXP_MAX``. Each guard also returns a violation amount (how far outside the domain the
argument is); the fit adds it as a penalty that pushes constants back into the domain and
treats any remaining violation as a failed fit.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import sympy

from symreg import expressions

OPS = ("id", "var", "const", "lit", "add", "mul", "inv", "powi", "sqrt", "powf", "pow", "sin",
       "cos", "tan", "exp", "log", "asin", "acos", "atan", "tanh", "abs")
OP = {name: i for i, name in enumerate(OPS)}
INV_EPS = 1e-6
EXP_MAX = 40.0
UNROLL = 1  # full unrolling cuts little runtime here but multiplies compile time (measured)
_FUNC_OPS = {sympy.sin: "sin", sympy.cos: "cos", sympy.tan: "tan", sympy.exp: "exp",
             sympy.log: "log", sympy.asin: "asin", sympy.acos: "acos", sympy.atan: "atan",
             sympy.tanh: "tanh", sympy.Abs: "abs"}


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
  return Program(skeleton=skeleton, expr=expr, consts=tuple(consts), op=rows[:, 0].astype(np.int32),
                 a=rows[:, 1].astype(np.int32), b=rows[:, 2].astype(np.int32),
                 imm=rows[:, 3].astype(np.float32), n_vars=em.n_vars)


def bucket(n: int, minimum: int) -> int:
  """Smallest power of two >= max(n, minimum): bounds the number of compiled shapes."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def pad_programs(programs: list[Program], length: int) -> dict[str, np.ndarray]:
  """Stacks programs into (B, length) arrays; padding copies the previous value."""
  B = len(programs)
  op = np.full((B, length), OP["id"], np.int32)
  a = np.tile(np.maximum(np.arange(length, dtype=np.int32) - 1, 0), (B, 1))
  b = np.zeros((B, length), np.int32)
  imm = np.zeros((B, length), np.float32)
  for i, p in enumerate(programs):
    if p.length > length:
      raise ValueError(f"program of length {p.length} does not fit in {length}")
    op[i, :p.length], a[i, :p.length], b[i, :p.length], imm[i, :p.length] = p.op, p.a, p.b, p.imm
  return {"op": op, "a": a, "b": b, "imm": imm}


def _guard(ok, x, safe_value=1.0):
  return jnp.where(ok, x, safe_value)


def _step(consts_K, X_NxD, v_LxN, op, a, b, imm):
  """All candidate results of one instruction (cheap elementwise work) and the chosen one."""
  x, y = v_LxN[a], v_LxN[b]
  n = x.shape[0]
  pos = x > 1e-20  # keeps 1/x and log-derivatives of guarded branches finite
  xp = _guard(pos, x)
  nz = jnp.abs(x) > INV_EPS
  unit = jnp.abs(x) < 1.0 - 1e-6
  xu = _guard(unit, x, 0.0)
  k = jnp.clip(imm.astype(jnp.int32), 0, None)
  var = jnp.take(X_NxD, jnp.clip(k, 0, X_NxD.shape[1] - 1), axis=1)
  const = jnp.broadcast_to(consts_K[jnp.clip(k, 0, consts_K.shape[0] - 1)], (n,))
  pow_arg = jnp.clip(y * jnp.log(xp), None, EXP_MAX)
  # Unselected branches still get differentiated (times 0): give them harmless exponents.
  n_int = jnp.where(op == OP["powi"], imm, 1.0)
  p_real = jnp.where(op == OP["powf"], imm, 1.0)
  half_pi = jnp.sign(x) * (jnp.pi / 2)
  vals = [
      x, var, const, jnp.broadcast_to(imm, (n,)), x + y, x * y,
      jnp.where(nz, 1.0 / _guard(nz, x), 0.0), jax.lax.pow(x, n_int),
      jnp.where(pos, jnp.sqrt(xp), 0.0), jnp.where(pos, xp ** p_real, 0.0),
      jnp.where(pos, jnp.exp(pow_arg), 0.0), jnp.sin(x), jnp.cos(x), jnp.tan(x),
      jnp.exp(jnp.minimum(x, EXP_MAX)), jnp.where(pos, jnp.log(xp), 0.0),
      jnp.where(unit, jnp.arcsin(xu), half_pi), jnp.where(unit, jnp.arccos(xu), jnp.pi / 2 - half_pi),
      jnp.arctan(x), jnp.tanh(x), jnp.abs(x),
  ]
  relu = jax.nn.relu
  neg = relu(-x) + jnp.where(pos, 0.0, 1e-3)  # x <= 0 is outside the domain even at 0
  viol = jnp.where(op == OP["inv"], jnp.where(nz, 0.0, INV_EPS - jnp.abs(x) + 1e-3), 0.0)
  viol += jnp.where(op == OP["sqrt"], relu(-x), 0.0)
  viol += jnp.where((op == OP["powf"]) | (op == OP["pow"]) | (op == OP["log"]), neg, 0.0)
  viol += jnp.where(op == OP["exp"], relu(x - EXP_MAX), 0.0)
  viol += jnp.where((op == OP["asin"]) | (op == OP["acos"]), relu(jnp.abs(x) - 1.0), 0.0)
  return jax.lax.select_n(op, *vals), viol


def evaluate(prog: dict, consts_K, X_NxD):
  """Runs one padded program (arrays of shape (L,)) on X (N, D) -> (y_hat (N,), violation (N,))."""
  L = prog["op"].shape[0]
  N = X_NxD.shape[0]

  def body(carry, inst):
    v_LxN, viol = carry
    i, op, a, b, imm = inst
    out, bad = _step(consts_K, X_NxD, v_LxN, op, a, b, imm)
    return (v_LxN.at[i].set(out), viol + bad), None

  init = (jnp.zeros((L, N), X_NxD.dtype), jnp.zeros((N,), X_NxD.dtype))
  xs = (jnp.arange(L), prog["op"], prog["a"], prog["b"], prog["imm"])
  (v_LxN, viol), _ = jax.lax.scan(body, init, xs, unroll=UNROLL)
  return v_LxN[L - 1], viol
