"""The package's shape: teaching files that read as Flax, no patching, and modules in layers.

These are checks of the source itself, each with a twin showing that the check can fail.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flax_lenet"
TEACHING = ("model.py", "linen.py", "functional.py", "initializers.py", "train.py")
#: reaching into a framework's internals or patching a class (the project uses public APIs only)
FORBIDDEN = re.compile(r"_pytree_meta_construct|__dynamo_disable|_global_optimizer|co_qualname|addaudithook|"
                       r"renameat2|__class__ *=")


def imports_of(source: str, known: set) -> set:
    """The modules of ``known`` that ``source`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found |= {n for n in names if n in known}
    return found


def module_graph(sources: dict) -> dict:
    """``{module: modules of the package it imports}`` for ``{module name: source}``."""
    known = set(sources)
    return {name: imports_of(src, known) - {name} for name, src in sources.items()}


def cycles(graph: dict) -> list:
    """Every pair of modules that import each other, directly or through others."""
    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n))) for n in graph.get(a, ()))
    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})


def package_sources() -> dict:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path.read_text()
    return out


def test_no_module_imports_another_that_imports_it_back():
    assert cycles(module_graph(package_sources())) == []


def test_the_cycle_check_sees_a_cycle_through_a_third_module():
    sources = {"a": "import b\n", "b": "def f():\n    from c import x\n", "c": "from a import y\n", "d": "import a\n"}
    assert cycles(module_graph(sources)) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_no_code_of_the_package_reaches_into_framework_internals_or_patches_a_class():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if FORBIDDEN.search(line)]
    assert hits == []
    assert FORBIDDEN.search("cls._pytree_meta_construct = classmethod(construct)")     # the pattern can match


def test_the_training_step_is_flaxs_own():
    source = (PACKAGE / "train.py").read_text()
    assert "nnx.value_and_grad" in source and "nnx.jit" in source and "optimizer.update(model, grads)" in source
    assert "fast" not in source


@pytest.mark.parametrize("name", TEACHING)
def test_teaching_files_use_no_speed_plumbing_and_do_not_talk_about_it(name):
    source = (PACKAGE / name).read_text()
    project = {m for m in package_sources()}
    assert not imports_of(source, project) & {"flax_lenet.fast", "flax_lenet.cache", "flax_lenet.app"}
    docstrings = " ".join(ast.get_docstring(n) or "" for n in ast.walk(ast.parse(source))
                          if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)))
    assert not re.search(r"\b(fast|faster|speed|cach\w*|start-up|startup|compiled call)\b", docstrings, re.I), name
