"""The house rules of issue 12, read from the code's own imports (AST over src/protege, function-level
imports included): no import cycles; layers point one way (foundation < agent < grading < phases <
pipeline < cli); no phase imports another phase; MLflow is imported only inside protege.tracking."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "protege"

# Bottom to top. A module may import modules of its own layer and of layers below, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "protege",
            "protege.config",
            "protege.image_refs",
            "protege.patches",
            "protege.trajectory",
            "protege.tasks",
            "protege.task_schemas",
            "protege.tasksets",
            "protege.store",
            "protege.tracking",
            "protege.model",
            "protege.tiny_warmup",
            "protege.services",
            "protege.docker_engine",
            "protege.environments",
            "protege.environment_images",
            "protege.training",
            "protege.launch",
            "protege.demo",
            "protege.taskgen",
        ),
    ),
    ("agent", ("protege.agent",)),
    ("grading", ("protege.grading",)),
    # The SFT dataset written by synth and read by sft: a format shared by two phases, built on the agent's
    # renderer, so it sits below both.
    ("datasets", ("protege.sft_data", "protege.sft_augment")),
    (
        "phases",
        (
            "protege.verify",
            "protege.synth",
            "protege.sft",
            "protege.rl",
            "protege.evaluate",
            "protege.register",
        ),
    ),
    # Variants of the agent through the eval phase, gated and tabled (issue 19): above the phases it runs.
    ("pipeline", ("protege.pipeline", "protege.compare")),
    ("cli", ("protege.cli",)),
]
PHASES = dict(LAYERS)["phases"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if not path.is_relative_to(PACKAGE / "demo" / "repos")  # the demo's task repositories, not protege
    }


def _imports(path: Path) -> list[tuple[str, int]]:
    """(dotted name, line) of every absolute import in the file; `from a import b` yields a and a.b."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported protege module: first line}; a name resolves to the longest module it names."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("protege"):
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _owner(module: str, groups: tuple[str, ...]) -> str | None:
    """The longest prefix in `groups` that `module` is or lies under (`protege` itself: only the package)."""
    matches = [g for g in groups if module == g or (g != "protege" and module.startswith(g + "."))]
    return max(matches, key=len) if matches else None


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for number, (_, prefixes) in enumerate(LAYERS):
        owner = _owner(module, prefixes)
        if owner and (best is None or len(owner) > best[0]):
            best = (len(owner), number)
    if best is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py; add it where it belongs")
    return best[1]


def violations(graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> list[str]:
    problems = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            where = f"{modules[module].relative_to(SRC.parent)}:{line}: {module} imports {target}"
            low, high = layer_of(module), layer_of(target)
            if high > low:
                problems.append(f"{where} (layer {LAYERS[low][0]} below {LAYERS[high][0]})")
            a, b = _owner(module, PHASES), _owner(target, PHASES)
            if a and b and a != b:
                problems.append(f"{where} (one phase importing another)")
    return problems


def mlflow_outside_tracking(modules: dict[str, Path]) -> list[str]:
    return [
        f"{path.relative_to(SRC.parent)}:{line}: imports {name}"
        for module, path in modules.items()
        if _owner(module, ("protege.tracking",)) is None
        for name, line in _imports(path)
        if name == "mlflow" or name.startswith("mlflow.")
    ]


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    modules = _modules()
    return modules, import_graph(modules)


def test_no_import_cycles(tree) -> None:
    assert cycles(tree[1]) == []


def test_layers_point_one_way_and_phases_do_not_import_each_other(tree) -> None:
    assert violations(tree[1], tree[0]) == []


def test_mlflow_is_imported_only_by_tracking(tree) -> None:
    assert mlflow_outside_tracking(tree[0]) == []


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    # A cycle, an upward import, a phase importing a phase: each one reported (the rules can fail).
    graph = {
        "protege.store": {"protege.cli": 3},
        "protege.cli": {"protege.store": 1},
        "protege.rl": {"protege.sft": 7},
        "protege.sft": {},
    }
    modules = {name: SRC / "protege" / f"{name.split('.')[-1]}.py" for name in graph}
    assert cycles(graph) == [["protege.cli", "protege.store"]]
    problems = violations(graph, modules)
    assert any("protege.store imports protege.cli (layer foundation below cli)" in p for p in problems)
    assert any("protege.rl imports protege.sft (one phase importing another)" in p for p in problems)
    assert not any(p.split(": ", 1)[1].startswith("protege.cli imports") for p in problems)
    with pytest.raises(AssertionError, match="protege.newcomer: in no layer"):
        layer_of("protege.newcomer")
