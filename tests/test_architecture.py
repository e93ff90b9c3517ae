"""The layout holds: no import cycles in ``src/wsram``, imports go study -> tasks -> core
and never back, no task imports another, and one module alone names a run's files. Read
from the source (AST); nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "wsram"
TASKS = ("wsram.classification", "wsram.captioning")
STUDY = "wsram.study"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The wsram modules ``name`` imports (anywhere in its body, functions included; not
    under ``if TYPE_CHECKING:``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # for annotations only: never imported at run time
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` names a module; ``from mod import func`` does not
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, set(mods)) for n, p in mods.items()}


def layer(name: str) -> str:
    if name == STUDY or name.startswith(STUDY + "."):
        return "study"
    for t in TASKS:
        if name == t or name.startswith(t + "."):
            return t
    return "core"


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_graph_is_read_from_the_source() -> None:
    g = graph()
    assert len(g) > 40 and "wsram.engine" in g["wsram.train"]
    assert "wsram.classification.model" in g["wsram.classification.task"]


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_go_study_tasks_core_never_back() -> None:
    rank = {"core": 0, "study": 2, **{t: 1 for t in TASKS}}
    bad = [f"{a} imports {b}" for a, deps in graph().items() for b in deps
           if rank[layer(b)] > rank[layer(a)]
           or (layer(a) in TASKS and layer(b) in TASKS and layer(a) != layer(b))]
    assert not bad, "; ".join(sorted(bad))


#: a run's file names, found anywhere in a string (messages included: they are built from
#: ``RunDir``'s paths, so that a renamed file is renamed everywhere) ...
RUN_FILE_NAMES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "eval.json",
                  "eval_best.json", "best-before-restart.pt")
#: ... and names too short to look for inside other strings, found as whole strings
RUN_FILE_WORDS = (".lock", "tb")


def test_only_the_run_folder_module_names_run_files() -> None:
    """Every module asks ``wsram.run_dir.RunDir`` for a run's files (string constants,
    docstrings and comments aside, which describe them to people)."""
    offenders = []
    for name, path in modules().items():
        if name == "wsram.run_dir":
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                  ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr)
                and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs and (node.value in RUN_FILE_WORDS or any(
                        f in node.value for f in RUN_FILE_NAMES)):
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
    assert not offenders, ", ".join(offenders)


def test_only_the_registry_imports_by_name() -> None:
    """The one way up the layers: the registry loads the task packages and the study by
    name (so that each registers itself); no other module imports by name."""
    by_name = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                    "importlib.import_module", "__import__", "import_module"):
                by_name.append(name)
    assert set(by_name) == {"wsram.registry"}, by_name
    from wsram import registry

    assert set(registry.TASK_PACKAGES) == set(TASKS)
    assert set(registry.COMMAND_PACKAGES) == {STUDY}


def test_functions_stay_short() -> None:
    long = [f"{name}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for name, path in modules().items()
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 60]
    assert not long, ", ".join(long)
