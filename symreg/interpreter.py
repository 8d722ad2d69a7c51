"""The guarded JAX interpreter of :mod:`symreg.program`'s padded programs: ``evaluate(prog, consts, X)``.

Speed on CPU (where the fit runs thousands of these in lockstep): leaves load in one
vector step; operands are picked by one-hot contraction (a batched matmul once vmapped;
XLA's CPU gather is scalar code); an operation evaluates every candidate op but shares
the transcendentals (one log, one exp, one sincos and one arctan per step, the latter two
as vectorised polynomials); the gradient is a hand-written reverse sweep over the local
derivatives recorded by the forward run (``jax.custom_vjp``), about one evaluation's cost,
instead of autodiff through a scan that saves every step's whole value table.

Domains are guarded so values and gradients stay finite: log / sqrt / real powers need a
positive argument, arcsin / arccos |a| <= 1, 1/a needs |a| > 1e-6, exp is clipped at
``EXP_MAX`` and every stored value and derivative is clipped to +-``BIG``. Each guard also
returns a violation amount (how far outside the domain the argument is); the fit adds it
as a penalty that pushes constants back into the domain and treats any remaining
violation as a failed fit.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from symreg.program import LEAF_CONST, LEAF_VAR, OP

INV_EPS = 1e-6
EXP_MAX = 40.0
BIG = 1e18  # values and derivatives are clipped to +-BIG, so squares stay finite in float32
UNROLL = 1  # full unrolling of the scans was ~40x slower at run time and compile (measured)


def _leaves(prog, consts_K, X_NxD):
    kind, idx = prog["leaf_kind"], prog["leaf_idx"]
    var_MxN = X_NxD.T[jnp.clip(idx, 0, X_NxD.shape[1] - 1)]
    scalar_M = jnp.where(kind == LEAF_CONST, consts_K[jnp.clip(idx, 0, consts_K.shape[0] - 1)], prog["leaf_imm"])
    return jnp.where((kind == LEAF_VAR)[:, None], var_MxN, scalar_M[:, None])


def _sincos(x):
    """sin and cos sharing one range reduction (Cody-Waite, cephes sinf / cosf polynomials).

    Pure multiply-adds, so XLA vectorises them (its own sin and cos cost ~10x more on CPU).
    Accurate to a few ulp for |x| < ~1e4; bounded (not accurate) beyond."""
    q = jnp.round(x * (2.0 / np.pi))
    r = x - q * 1.5703125 - q * 4.837512969970703125e-4 - q * 7.54978995489188216e-8
    r = jnp.clip(r, -np.pi / 4, np.pi / 4)
    z = r * r
    sin_r = r + r * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1)
    cos_r = 1.0 - 0.5 * z + z * z * ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2)
    k = q - 4.0 * jnp.floor(q * 0.25)  # quadrant 0..3
    s = jnp.where(k == 0, sin_r, jnp.where(k == 1, cos_r, jnp.where(k == 2, -sin_r, -cos_r)))
    c = jnp.where(k == 0, cos_r, jnp.where(k == 1, -sin_r, jnp.where(k == 2, -cos_r, sin_r)))
    return s, c


def _atan(x):
    """arctan by cephes atanf's reduction and polynomial (vectorised, unlike XLA's on CPU)."""
    a = jnp.abs(x)
    big, mid = a > 2.414213562373095, a > 0.4142135623730950
    t = jnp.where(big, -1.0 / jnp.where(big, a, 1.0), jnp.where(mid, (a - 1.0) / (a + 1.0), a))
    y0 = jnp.where(big, np.pi / 2, jnp.where(mid, np.pi / 4, 0.0))
    z = t * t
    p = ((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1
    return jnp.sign(x) * (y0 + p * z * t + t)


class _Shared(NamedTuple):
    """What several operations of :func:`_step` share (one log, one exp, one sincos, ...)."""

    pos: jax.Array  # x > 0 (log / sqrt / real powers)
    xp: jax.Array
    nz: jax.Array  # |x| > INV_EPS (1/x)
    inv: jax.Array
    unit: jax.Array  # |x| < 1 (asin / acos)
    root1mx2: jax.Array
    lx: jax.Array
    e: jax.Array
    de: jax.Array
    s: jax.Array
    c: jax.Array
    t: jax.Array
    angle: jax.Array
    th: jax.Array
    sq: jax.Array
    n: jax.Array
    pm: jax.Array  # x ** (n - 1)
    half_pi: jax.Array
    zero: jax.Array
    one: jax.Array
    pos_e: jax.Array
    inv_xp: jax.Array


def _shared(x, y, op, imm) -> _Shared:
    """The transcendentals and guards of :func:`_step`, each computed once for every op."""
    is_ = lambda name: op == OP[name]
    pos = x > 1e-20
    xp = jnp.where(pos, x, 1.0)
    nz = jnp.abs(x) > INV_EPS
    inv = 1.0 / jnp.where(nz, x, 1.0)
    unit = jnp.abs(x) < 1.0 - 1e-6
    xu = jnp.where(unit, x, 0.0)
    root1mx2 = jnp.sqrt(1.0 - xu * xu)
    lx = jnp.log(xp)
    earg = jnp.where(is_("exp"), x, jnp.where(is_("pow"), y, imm) * lx)
    e = jnp.exp(jnp.minimum(earg, EXP_MAX))
    de = jnp.where(earg < EXP_MAX, e, 0.0)  # exp is clipped at EXP_MAX: flat beyond
    s, c = _sincos(x)
    t = s / c
    angle = _atan(jnp.where(is_("atan"), x, xu / root1mx2))  # asin(u) = atan(u / sqrt(1 - u^2))
    th = jnp.tanh(x)
    sq = jnp.sqrt(xp)
    n = jnp.clip(imm.astype(jnp.int32), 1, 64)
    pm, base = jnp.ones_like(x), x  # x ** (n - 1) by squaring
    for bit in range(6):
        pm = jnp.where(((n - 1) >> bit) & 1 == 1, pm * base, pm)
        base = base * base
    half_pi = jnp.sign(x) * (jnp.pi / 2)
    zero, one = jnp.zeros_like(x), jnp.ones_like(x)
    pos_e, inv_xp = jnp.where(pos, e, 0.0), jnp.where(pos, 1.0 / xp, 0.0)
    return _Shared(
        pos, xp, nz, inv, unit, root1mx2, lx, e, de, s, c, t, angle, th, sq, n, pm, half_pi, zero, one, pos_e, inv_xp
    )


def _values(x, y, r: _Shared) -> list:
    """The value of every op (indexed by ``OP``)."""
    return [
        x,
        x,
        x,
        x,
        x + y,
        x * y,
        jnp.where(r.nz, r.inv, 0.0),
        r.pm * x,
        jnp.where(r.pos, r.sq, 0.0),
        r.pos_e,
        r.pos_e,
        r.s,
        r.c,
        r.t,
        r.e,
        jnp.where(r.pos, r.lx, 0.0),
        jnp.where(r.unit, r.angle, r.half_pi),
        jnp.where(r.unit, jnp.pi / 2 - r.angle, jnp.pi / 2 - r.half_pi),
        r.angle,
        r.th,
        jnp.abs(x),
    ]


def _derivatives_x(x, y, imm, r: _Shared) -> list:
    """d value / dx of every op (indexed by ``OP``)."""
    d_unit = jnp.where(r.unit, 1.0 / r.root1mx2, 0.0)
    one = r.one
    return [
        one,
        one,
        one,
        one,
        one,
        y,
        jnp.where(r.nz, -r.inv * r.inv, 0.0),
        r.n * r.pm,
        jnp.where(r.pos, 0.5 / r.sq, 0.0),
        imm * r.de * r.inv_xp,
        y * r.de * r.inv_xp,
        r.c,
        -r.s,
        1.0 + r.t * r.t,
        r.de,
        r.inv_xp,
        d_unit,
        -d_unit,
        1.0 / (1.0 + x * x),
        1.0 - r.th * r.th,
        jnp.sign(x),
    ]


def _violations(x, r: _Shared) -> tuple[list, list]:
    """Domain violation of every op and its d / dx (indexed by ``OP``)."""
    zero = r.zero
    neg = (x < 0).astype(x.dtype)
    outside_pos = jax.nn.relu(-x) + jnp.where(r.pos, 0.0, 1e-3)  # x <= 0 is outside even at 0
    viol = [zero] * 6 + [
        jnp.where(r.nz, 0.0, INV_EPS - jnp.abs(x) + 1e-3),
        zero,
        jax.nn.relu(-x),
        outside_pos,
        outside_pos,
        zero,
        zero,
        zero,
        jax.nn.relu(x - EXP_MAX),
        outside_pos,
        jax.nn.relu(jnp.abs(x) - 1.0),
        jax.nn.relu(jnp.abs(x) - 1.0),
        zero,
        zero,
        zero,
    ]
    sign_out = jnp.sign(x) * (jnp.abs(x) > 1.0)
    dviol = [zero] * 6 + [
        jnp.where(r.nz, 0.0, -jnp.sign(x)),
        zero,
        -neg,
        -neg,
        -neg,
        zero,
        zero,
        zero,
        (x > EXP_MAX).astype(x.dtype),
        -neg,
        sign_out,
        sign_out,
        zero,
        zero,
        zero,
    ]
    return viol, dviol


def _step(x, y, op, imm):
    """One operation on operand values x, y (N,): value, d/dx, d/dy, violation, d violation/dx.

    Transcendentals are shared between operations (one exp serves exp / pow / powf, one
    arctan2 serves asin / acos / atan), so an instruction costs a handful of vector calls
    whatever its op; derivatives are written out, not traced, so unselected branches never
    enter a gradient."""
    is_ = lambda name: op == OP[name]
    r = _shared(x, y, op, imm)
    val = _values(x, y, r)
    dx = _derivatives_x(x, y, imm, r)
    dy = jnp.where(is_("add"), 1.0, jnp.where(is_("mul"), x, jnp.where(is_("pow") & r.pos, r.de * r.lx, 0.0)))
    viol, dviol = _violations(x, r)
    pick = lambda xs: jax.lax.select_n(op, *xs)
    clip = lambda z: jnp.clip(z, -BIG, BIG)
    return clip(pick(val)), clip(pick(dx)), clip(dy), pick(viol), clip(pick(dviol))


def _onehot(i, n, dtype):
    return (jnp.arange(n) == i).astype(dtype)


def _forward(prog, consts_K, X_NxD):
    """Runs the operations in order; returns all slot values (M + P, N), the violation (N,)
    and the local derivatives of every operation (P, N) each (the tape for the adjoint)."""
    v_MxN = _leaves(prog, consts_K, X_NxD)
    M, P, N = v_MxN.shape[0], prog["op"].shape[0], X_NxD.shape[0]
    v = jnp.concatenate([v_MxN, jnp.zeros((P, N), v_MxN.dtype)])

    def body(carry, inst):
        v, viol = carry
        i, op, a, b, imm = inst
        # Operands by one-hot contraction, not gather: vmapped, it is one batched matmul
        # (XLA's CPU gather is scalar code). Stored values are clipped finite, so 0 * v is 0.
        x, y = _onehot(a, M + P, v.dtype) @ v, _onehot(b, M + P, v.dtype) @ v
        out, dx, dy, bad, dbad = _step(x, y, op, imm)
        return (jax.lax.dynamic_update_index_in_dim(v, out, M + i, 0), viol + bad), (dx, dy, dbad)

    xs = (jnp.arange(P), prog["op"], prog["a"], prog["b"], prog["imm"])
    (v, viol), tape = jax.lax.scan(body, (v, jnp.zeros((N,), v.dtype)), xs, unroll=UNROLL)
    return v, viol, tape


@jax.custom_vjp
def _evaluate(consts_K, prog, X_NxD):
    v, viol, _ = _forward(prog, consts_K, X_NxD)
    return v[-1], viol


def _evaluate_fwd(consts_K, prog, X_NxD):
    v, viol, tape = _forward(prog, consts_K, X_NxD)
    return (v[-1], viol), (consts_K, prog, X_NxD, tape)


def _evaluate_bwd(res, g):
    """Reverse sweep over the tape: adjoint of every slot (M + P, N), then of the constants."""
    consts_K, prog, X_NxD, (dx_PxN, dy_PxN, dbad_PxN) = res
    g_y, g_viol = g
    M, P = prog["leaf_kind"].shape[0], prog["op"].shape[0]
    adj = jnp.zeros((M + P, X_NxD.shape[0]), g_y.dtype).at[-1].set(g_y)

    def body(adj, inst):
        i, a, b, dx, dy, dbad = inst
        g_out = adj[M + i]
        adj = adj + jnp.outer(_onehot(a, M + P, adj.dtype), jnp.clip(dx * g_out + dbad * g_viol, -BIG, BIG))
        adj = adj + jnp.outer(_onehot(b, M + P, adj.dtype), jnp.clip(dy * g_out, -BIG, BIG))
        return adj, None

    xs = (jnp.arange(P), prog["a"], prog["b"], dx_PxN, dy_PxN, dbad_PxN)
    adj, _ = jax.lax.scan(body, adj, xs, reverse=True, unroll=UNROLL)
    K = consts_K.shape[0]
    is_c_MxK = (prog["leaf_kind"] == LEAF_CONST)[:, None] & (prog["leaf_idx"][:, None] == jnp.arange(K)[None, :])
    g_c = is_c_MxK.astype(adj.dtype).T @ jnp.sum(adj[:M], axis=1)
    zeros = jax.tree.map(
        lambda z: np.zeros(z.shape, jax.dtypes.float0) if jnp.issubdtype(z.dtype, jnp.integer) else jnp.zeros_like(z),
        prog,
    )
    return g_c, zeros, jnp.zeros_like(X_NxD)


_evaluate.defvjp(_evaluate_fwd, _evaluate_bwd)


def evaluate(prog: dict, consts_K, X_NxD):
    """Runs one packed program (see ``pack_programs``) on X (N, D) -> (y_hat (N,), violation (N,)).

    Reverse-mode differentiable (any order of vmap) in ``consts_K`` only (X and the program
    get zero cotangents): the forward run records each operation's local derivatives (P, N)
    and the gradient is one reverse sweep over them, about the cost of an evaluation."""
    return _evaluate(consts_K, prog, X_NxD)
