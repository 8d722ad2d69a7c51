"""The house's shape: no import circles, a small package root, imports at the top, one public API."""

import ast
import collections
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sortedjax", "symreg", "experiments")
# function-local imports are for optional or heavy dependencies only (imported when a feature runs)
LOCAL_OK = {
    "torch",
    "transformers",
    "peft",
    "matplotlib",
    "sklearn",
    "tensorflow_datasets",
    "datasets",
    "tokenizers",
    "huggingface_hub",
    "gplearn",
    "pyoperon",
    "pandas",
    "scipy",
    "safetensors",
    "orbax",
    "jaxopt",
    "optax",
    "jax",
    "tqdm",
    "sympy",
    "flax",
    "numpy",
}


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(mods):
    """``{module: {imported project module}}`` (every import statement, also inside functions and
    ``TYPE_CHECKING``) and the function-local imports of outside packages."""

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph, local = collections.defaultdict(set), []
    for m, f in mods.items():
        tree = ast.parse(f.read_text())
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_func = {id(s) for fn in funcs for s in ast.walk(fn) if isinstance(s, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            found = {r for r in map(resolve, targets) if r and r != m}
            graph[m] |= found
            if id(node) in in_func:
                if found:
                    local.append((f"{f.relative_to(ROOT)}:{node.lineno}", "project module"))
                else:
                    top = targets[0].split(".")[0]
                    if top not in LOCAL_OK:
                        local.append((f"{f.relative_to(ROOT)}:{node.lineno}", top))
    return graph, local


def _cycles(graph) -> list[list[str]]:
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_and_imports_at_the_top():
    graph, local = _imports(_modules())
    # a package importing its own submodules is no circle; a submodule importing its package back is
    assert _cycles(graph) == []
    assert local == [], "function-local imports of project modules or light packages"


def test_package_roots_stay_small():
    assert len([f for f in (ROOT / "sortedjax").glob("*.py") if f.name != "__init__.py"]) <= 12
    entries = [p for p in (ROOT / "experiments").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 14, sorted(p.name for p in entries)


def test_a_synthetic_circle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_import_sortedjax_is_light():
    code = "import sys, sortedjax; print(sorted(m for m in ('jax', 'torch', 'flax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_public_api_names():
    import sortedjax as sj

    for name in sj.__all__:
        assert getattr(sj, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sj.nope  # noqa: B018


def test_readme_layout_table_matches_the_tree():
    import re

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") : text.index("## Experiments")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = set()
    for row in rows:
        first = row.split("|")[1]
        paths = re.findall(r"`([^`]+)`", first)
        base = paths[0].rsplit("/", 1)[0] + "/" if "/" in paths[0].rstrip("/") else ""
        for p in paths:
            full = (
                p
                if p.startswith(("sortedjax", "symreg", "experiments", "benchmarks", "tpu", "notebooks", "docs"))
                else base + p
            )
            assert (ROOT / full).exists(), f"README layout names {full}, which does not exist"
            named.add(full.rstrip("/"))
    packages = [f"sortedjax/{d.name}" for d in (ROOT / "sortedjax").iterdir() if (d / "__init__.py").exists()]
    modules = [f"sortedjax/{f.name}" for f in (ROOT / "sortedjax").glob("*.py") if not f.name.startswith("_")]
    missing = [p for p in packages + modules if p not in named]
    assert missing == [], f"not in README's layout table: {missing}"


def test_no_private_names_imported_across_modules():
    found = []
    for f in _modules().values():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                found += [
                    f"{f.relative_to(ROOT)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found, found
