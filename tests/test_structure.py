"""The shape of the code (issue 9): every module of `app/` imports on its own, and no two
areas of `app/` import each other, directly or round a longer loop. The request itself
lives in `app/requests/`, which imports no area that works on it."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"


def modules() -> list[str]:
    names = []
    for path in sorted(APP.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def area_of(module: str) -> str | None:
    """`app.transfers.jobs` -> "transfers"; `app.audit` -> "audit"; `app` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "app" else None


def _imports(tree: ast.AST):  # noqa: ANN202 - yields (module, line)
    """Every import, module-level or inside a function, except under `if TYPE_CHECKING:`
    (annotations only: nothing runs)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            if node.module == "app":  # from app import audit, schedule
                for alias in node.names:
                    yield f"app.{alias.name}", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        else:
            yield from _imports(node)


def area_graph() -> dict[str, dict[str, str]]:
    """area -> {area it imports: where, as "file:line"}."""
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(APP.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        source = area_of(module)
        if source is None:
            continue  # the app factory wires every area together: it may import them all
        for target_module, line in _imports(ast.parse(path.read_text())):
            target = area_of(target_module)
            if target is not None and target != source:
                graph.setdefault(source, {}).setdefault(target, f"{path.relative_to(ROOT)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str]:
    """One cycle of areas (first area repeated at the end), or [] if there is none."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_every_module_of_app_imports_on_its_own_in_a_fresh_interpreter():
    def try_import(name: str) -> str:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        return "" if done.returncode == 0 else f"{name}: {done.stderr.strip().splitlines()[-1]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(try_import, modules()) if f]
    assert failures == []


def test_no_area_of_app_imports_another_that_imports_it_back():
    graph = area_graph()
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} at {graph[a][b]}" for a, b in pairwise(cycle)]
    assert cycle == [], "import cycle between areas: " + "; ".join(where)


def test_the_request_package_imports_no_area_that_works_on_requests():
    imported = set(area_graph().get("requests", {}))
    assert imported.isdisjoint({"intake", "desk", "workflow", "transfers", "printing", "patients"}), imported


def test_the_cycle_finder_finds_a_loop_of_three():
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}}) == []
