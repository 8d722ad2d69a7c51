import pytest

from symreg.tokenizer import SkeletonTokenizer


def test_round_trip_and_specials():
    tok = SkeletonTokenizer()
    assert tok.pad_id == 0 and tok.const_token == "C"
    for s in ["C*sin(C*x1)+C", "x1**2-x2/(C+x3)", "C*exp(C*x1**2)", "asin(C*x9)+sqrt(x2)"]:
        ids = tok.encode(s, max_len=40)
        assert len(ids) == 40 and ids[0] == tok.start_id
        assert ids[len(s) + 1] == tok.end_id and ids[len(s) + 2 :] == [tok.pad_id] * (40 - len(s) - 2)
        assert tok.decode(ids) == s
    assert tok.encode("C") == [tok.start_id, tok.const_id, tok.end_id]
    assert max(tok.encode("zx9")) < tok.vocab_size


def test_encode_errors():
    tok = SkeletonTokenizer()
    with pytest.raises(ValueError, match="max_len=4"):
        tok.encode("C*x1", max_len=4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.encode("C*x1_")


def test_is_valid():
    tok = SkeletonTokenizer()
    assert tok.is_valid("C*sin(C*x1)+C")
    assert tok.is_valid("x1**2+x9")
    assert not tok.is_valid("C*sin(C*x1")  # unbalanced
    assert not tok.is_valid("C*y+x1")  # unknown symbol
    assert not tok.is_valid("x10")  # only x1..x9
    assert not tok.is_valid("")
    assert not tok.is_valid("__import__('os')")
