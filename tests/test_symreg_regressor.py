import numpy as np
import pytest

from symreg.candidates import CombinedCandidates, FixedCandidates, GeneratorCandidates
from symreg.regressor import SymbolicGPTRegressor

RNG = np.random.default_rng(1)
X = RNG.uniform(-3, 3, size=(30, 1))
Y = 1.3 * np.sin(2.8 * X[:, 0]) + 0.5
SOURCE = FixedCandidates(["C*x1+C", "C*sin(C*x1)+C", "C*sin(C*x1", "C*x1**2+C*x1+C", "x3+C"])


def test_fit_predict_score_and_candidates():
    reg = SymbolicGPTRegressor(candidate_source=SOURCE, n_candidates=8).fit(X, Y)
    assert reg.skeleton_ == "C*sin(C*x1)+C"
    assert reg.mse_n_ < 1e-9 and reg.score(X, Y) > 0.999999
    np.testing.assert_allclose(reg.predict(X), Y, atol=1e-4)
    assert [c["skeleton"] for c in reg.candidates_] == list(SOURCE.skeletons)
    bad = reg.candidates_[2]
    assert not bad["success"] and "does not parse" in bad["error"]
    assert not reg.candidates_[4]["success"] and "x3" in reg.candidates_[4]["error"]
    pareto = [c["skeleton"] for c in reg.candidates_ if c["pareto"]]
    assert "C*sin(C*x1)+C" in pareto and "C*x1+C" in pareto  # best error; fewest nodes


def test_rejects_bad_input():
    reg = SymbolicGPTRegressor(candidate_source=SOURCE)
    with pytest.raises(ValueError, match=r"inconsistent numbers of samples: \[30, 29\]"):
        reg.fit(X, Y[:-1])
    with pytest.raises(ValueError, match="Input X contains infinity"):
        reg.fit(np.where(X > 2, np.inf, X), Y)
    with pytest.raises(ValueError, match="Input y contains NaN"):
        reg.fit(X, np.where(Y > 1, np.nan, Y))
    with pytest.raises(ValueError, match="10 variables, more than the 9 supported"):
        reg.fit(np.zeros((5, 10)), np.zeros(5))
    with pytest.raises(ValueError, match="0 sample"):
        reg.fit(np.zeros((0, 1)), np.zeros(0))
    with pytest.raises(ValueError, match="not fitted"):
        reg.predict(X)
    with pytest.raises(ValueError, match="n_candidates must be an int >= 1, got 0"):
        SymbolicGPTRegressor(candidate_source=SOURCE, n_candidates=0).fit(X, Y)
    # no trained model and no explicit opt-in: no silent random search
    with pytest.raises(ValueError, match="no candidate_source.*from_pretrained.*'generator'"):
        SymbolicGPTRegressor().fit(X, Y)
    with pytest.raises(ValueError, match="candidate_source must be 'generator'.*got 'random'"):
        SymbolicGPTRegressor(candidate_source="random").fit(X, Y)


def test_generator_source():
    src = GeneratorCandidates(seed=0)
    a = src.propose(X, Y, 6)
    assert a == src.propose(X, Y, 6) and len(a) == 6 and len(set(a)) == 6
    assert all("x2" not in s for s in a)
    both = CombinedCandidates(FixedCandidates(["C*x1+C"]), src).propose(X, Y, 3)
    assert both[0] == "C*x1+C" and both == list(dict.fromkeys(["C*x1+C"] + src.propose(X, Y, 3)))
