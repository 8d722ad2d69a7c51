"""Every ```python block of README.md (and of docs/decoding.md's usage section) runs as written,
offline: parsed from the files, each block in a fresh namespace (each is self-contained, so a
reader can copy any one of them), in a temporary working directory (blocks write checkpoints
and run directories relative to it)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
FILES = ("README.md", "docs/decoding.md")
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(name: str) -> list[tuple[str, str]]:
    """(id, code) of each ```python block of file ``name``, the id naming the section it is in."""
    text = (ROOT / name).read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        headings = re.findall(r"^#+ (.+)$", text[: m.start()], re.M)
        section = re.sub(r"\W+", "_", headings[-1] if headings else "top").strip("_").lower()[:40]
        out.append((f"{name}:{len(out)}:{section}", m.group(2)))
    return out


BLOCKS = [b for name in FILES for b in blocks(name)]


def test_the_blocks_are_found_and_compile():
    """The fences parse and every block is valid Python (a syntax error is named before anything runs)."""
    readme = [i for i, _ in BLOCKS if i.startswith("README.md")]
    assert len(readme) >= 5, readme  # LLaMA, SymbolicGPT, own sorted model, DyLoRA, training
    assert any(i.startswith("docs/decoding.md") for i, _ in BLOCKS)
    for block_id, code in BLOCKS:
        compile(code, block_id, "exec")


# not slow: 2-14 s a block on a quiet 2-core CPU (SymbolicGPT's first fit compiles the most)
@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_block_runs(code, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, request.node.callspec.id, "exec"), {"__name__": "__readme__"})
