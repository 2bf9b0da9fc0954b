"""The shape of the code (issue 9): every module of `app/` imports on its own, and no two
areas of `app/` import each other, directly or round a longer loop. The request itself
lives in `app/requests/`, which imports no area that works on it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

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


# A fork server: one interpreter loads the third-party libraries the app uses (Flask,
# SQLAlchemy, pydicom, WeasyPrint: most of the 1.5 s an import of `app` costs), and nothing
# of `app`; then it forks a child per module, which imports that module alone. Each child
# starts with no module of `app` loaded, as a fresh interpreter does, for a few ms.
_FORK_SERVER = r"""
import importlib, json, os, sys, traceback
names, libraries = json.loads(sys.stdin.read())
for library in libraries:
    try:
        importlib.import_module(library)
    except Exception:
        pass  # a child that needs it will say so
assert not [m for m in sys.modules if m == "app" or m.startswith(("app.", "worker", "wsgi"))]
running = {}  # pid -> (name, pipe): as many children at once as there are cores


def reap():
    pid, status = os.wait()
    name, read = running.pop(pid)
    with os.fdopen(read, "rb") as answer:
        message = answer.read().decode()
    if status != 0:
        print(f"{name}: {message or 'exit status ' + str(status)}")


for name in names:
    while len(running) >= (os.cpu_count() or 1):
        reap()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(write)
    running[pid] = (name, read)
while running:
    reap()
"""


def third_party_libraries() -> list[str]:
    """Top-level packages `app/` imports that are not part of it (the standard library and
    what requirements.txt installs)."""
    found = set()
    for path in APP.rglob("*.py"):
        for module, _line in _imports(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if top not in {"app", "worker", "wsgi", "tests"}:
                found.add(module)
    return sorted(found)
@pytest.mark.slow


def test_every_module_of_app_imports_on_its_own_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", _FORK_SERVER], cwd=ROOT, capture_output=True, text=True,
                          input=json.dumps([modules(), third_party_libraries()]), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == []


def test_the_import_check_reports_a_module_that_fails_to_import(tmp_path):
    """The fork server must not hide a failure: a module that raises on import is named."""
    (tmp_path / "broken_for_the_check.py").write_text("import app.transfers\nraise ImportError('circular, say')\n")
    done = subprocess.run([sys.executable, "-c", _FORK_SERVER], cwd=ROOT, capture_output=True, text=True,
                          input=json.dumps([["app.audit", "broken_for_the_check"], ["flask"]]), timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["broken_for_the_check: ImportError: circular, say"]


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
