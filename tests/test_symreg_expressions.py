import collections

import numpy as np
import pytest
import sympy

from symreg import expressions as ex


def test_deterministic():
    cfg = ex.GeneratorConfig(n_vars=2)
    a = [ex.sample_tree(np.random.default_rng(s), cfg) for s in range(20)]
    b = [ex.sample_tree(np.random.default_rng(s), cfg) for s in range(20)]
    assert a == b
    assert [ex.skeletonize(ex.to_sympy(t))[0] for t in a] == [ex.skeletonize(ex.to_sympy(t))[0] for t in b]
    assert len({t.labels for t in a}) == 20  # and different seeds differ


def test_distribution():
    cfg = ex.GeneratorConfig(n_vars=3, depth=4, const_prob=0.5, terminal_prob=0.1)
    rng = np.random.default_rng(0)
    trees = [ex.sample_tree(rng, cfg) for _ in range(2000)]
    n_internal = 2 ** (cfg.depth - 1) - 1
    assert all(len(t.labels) == 2 * n_internal + 1 for t in trees)
    # operators uniform over P among internal non-terminal nodes
    ops = collections.Counter(l for t in trees for l in t.labels[:n_internal] if not l.startswith("x"))
    total = sum(ops.values())
    assert set(ops) == set(ex.OPERATORS)
    assert total == pytest.approx(2000 * n_internal * 0.9, rel=0.03)  # 10% terminals
    for op in ex.OPERATORS:
        assert ops[op] / total == pytest.approx(1 / 12, abs=0.01)
    # leaves uniform over x1..x3
    leaves = collections.Counter(l for t in trees for l in t.labels[n_internal:])
    for v in ("x1", "x2", "x3"):
        assert leaves[v] / sum(leaves.values()) == pytest.approx(1 / 3, abs=0.02)
    # multiplicative and additive constants each with probability r, values in range
    muls = [m for t in trees for m in t.mul]
    adds = [a for t in trees for a in t.add]
    assert np.mean([m is not None for m in muls]) == pytest.approx(0.5, abs=0.02)
    assert np.mean([a is not None for a in adds]) == pytest.approx(0.5, abs=0.02)
    vals = np.array([v for v in muls + adds if v is not None])
    assert vals.min() >= -2.1 and vals.max() <= 2.1 and abs(vals.mean()) < 0.05
    # depth: never more than k; id/unary/terminals make shallower trees common
    depths = collections.Counter(t.depth() for t in trees)
    assert max(depths) == 4 and depths[4] / 2000 > 0.5 and depths[1] + depths[2] + depths[3] > 100
    # P(root is a terminal) = 0.1 -> depth 1
    assert depths[1] / 2000 == pytest.approx(0.1, abs=0.02)


def test_operator_subset_and_config_errors():
    cfg = ex.GeneratorConfig(operators=("add", "mul"), const_prob=0.0, terminal_prob=0.0, depth=3)
    t = ex.sample_tree(np.random.default_rng(0), cfg)
    assert t.depth() == 3 and all(m is None for m in t.mul)
    with pytest.raises(ValueError, match="operators must be"):
        ex.GeneratorConfig(operators=("tan",))
    with pytest.raises(ValueError, match="n_vars must be in 1..9"):
        ex.GeneratorConfig(n_vars=10)


def test_sympy_and_skeleton_agree_with_tree():
    cfg = ex.GeneratorConfig(n_vars=2)
    X = np.random.default_rng(1).uniform(0.5, 1.5, size=(7, 2))
    checked = 0
    for s in range(30):
        t = ex.sample_tree(np.random.default_rng(s), cfg)
        y = ex.evaluate_tree(t, X)
        if not np.all(np.isfinite(y)):
            continue
        expr = ex.to_sympy(t)
        sk, vals = ex.skeletonize(expr)
        parsed, cs = ex.parse_skeleton(sk)
        assert len(cs) == len(vals) == sk.count("C")
        f = sympy.lambdify(ex.X_SYMBOLS[:2], parsed.subs(dict(zip(cs, vals))), "numpy")
        np.testing.assert_allclose(np.broadcast_to(f(X[:, 0], X[:, 1]), (7,)), y, rtol=1e-6, atol=1e-9)
        checked += 1
    assert checked >= 10


def test_skeletonize_examples():
    x1 = ex.X_SYMBOLS[0]
    assert ex.skeletonize(1.3 * sympy.sin(2.8 * x1) + 0.5) == ("C*sin(C*x1)+C", [1.3, 2.8, 0.5])
    assert ex.skeletonize(sympy.sympify("2*pi*x1/(x2*x3)"))[0] == "C*x1/(x2*x3)"
    assert ex.skeletonize(sympy.sympify("x1**3+x1**2+x1"))[0] == "x1**3+x1**2+x1"
    assert ex.skeletonize(sympy.sympify("x1-x2"))[0] == "x1-x2"


def test_binary_pow_frequencies_and_conversions():
    cfg = ex.GeneratorConfig(n_vars=1, depth=4, terminal_prob=0.1)
    rng = np.random.default_rng(1)
    trees = [ex.sample_tree(rng, cfg) for _ in range(3000)]
    # pow is one of the 12 operators, drawn as often as each other one, and binary: both subtrees used
    roots = collections.Counter(t.labels[0] for t in trees)
    assert roots["pow"] / 3000 == pytest.approx(0.9 / 12, abs=0.015)
    pow_nodes = [(t, i) for t in trees for i in t.reachable() if t.labels[i] == "pow"]
    assert len(pow_nodes) > 300 and all(t.exponent[i] is None for t, i in pow_nodes)
    assert all({2 * i + 1, 2 * i + 2} <= set(t.reachable(i)) for t, i in pow_nodes)
    # its sympy form is base ** subtree, evaluated like numpy (NaN for a negative base)
    t = next(t for t in trees if t.labels[0] == "pow" and t.mul[0] is None and t.add[0] is None)
    e = ex.to_sympy(t)
    assert e.is_Pow and e.exp.free_symbols  # the exponent is an expression of x, not a number
    X = np.random.default_rng(2).uniform(-3, 3, size=(50, 1))
    y = ex.evaluate_tree(t, X)
    ok = np.isfinite(y)
    f = sympy.lambdify(ex.X_SYMBOLS[:1], e, "numpy")
    with np.errstate(all="ignore"):
        ref = np.asarray(f(X[:, 0]), np.complex128)
    np.testing.assert_allclose(y[ok], ref[ok].real, rtol=1e-9)
    # the old unary form stays available: child ** {2, 3}, right subtree dropped
    old = ex.GeneratorConfig(pow_mode="unary")
    ts = [ex.sample_tree(np.random.default_rng(s), old) for s in range(300)]
    unary = [(t, i) for t in ts for i in t.reachable() if t.labels[i] == "pow"]
    assert unary and all(t.exponent[i] in (2, 3) and 2 * i + 2 not in t.reachable(i) for t, i in unary)
    with pytest.raises(ValueError, match="pow_mode must be one of"):
        ex.GeneratorConfig(pow_mode="ternary")


def test_generated_binary_pow_skeletons_compile_and_fit():
    from symreg import fit, generate, program

    data = generate.generate_dataset(120, n_vars=1, seed=0)
    pw = [d for d in data if "**(" in d["skeleton"] and "C**" not in d["skeleton"]]
    assert len(pw) >= 2  # binary pow shows up in kept equations
    for d in data:
        program.compile_skeleton(d["skeleton"])  # every kept skeleton runs in the interpreter
    X = np.random.default_rng(0).uniform(0.5, 3, size=(30, 1))
    y = (1.5 * X[:, 0] + 0.5) ** (0.3 * X[:, 0])
    r = fit.fit_constants("(C*x1+C)**(C*x1)", X, y)
    assert r.success and r.mse_n < 1e-9
    np.testing.assert_allclose(np.abs(r.constants), [1.5, 0.5, 0.3], rtol=1e-3)
