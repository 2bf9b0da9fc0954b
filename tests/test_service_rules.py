"""The two rules of README "Layout" for services (issue 9.5), read from the source: a
service takes plain values (it imports no form library, no area's forms, not
`flask.request`), and it never commits, except a function whose docstring says it does
(`transfers.service.enqueue`, for the reason given there)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
SERVICES = sorted(APP.glob("*/service.py")) + [APP / "transfers" / "nodes.py", APP / "transfers" / "search.py"]
FORM_MODULES = ("wtforms", "flask_wtf")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(APP.parent)) for p in paths]


def _imports(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(module, name, line) for every import, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


def form_imports(source: str) -> list[str]:
    """The imports of a form library, an area's forms, or the HTTP request."""
    return [
        f"line {line}: {module}{'.' + name if name else ''}"
        for module, name, line in _imports(ast.parse(source))
        if module.split(".")[0] in FORM_MODULES
        or module.endswith(".forms") or name == "forms"
        or (module == "flask" and name == "request")
    ]


def silent_commits(source: str) -> list[str]:
    """Functions that call db.session.commit() without saying "commits" in the docstring."""
    silent = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef):
            continue
        commits = any(
            isinstance(call, ast.Call) and ast.unparse(call.func) == "db.session.commit"
            for call in ast.walk(func)
        )
        if commits and "commits" not in (ast.get_docstring(func) or "").lower():
            silent.append(f"line {func.lineno}: {func.name}")
    return silent


def test_the_services_are_found():
    assert {"app/intake/service.py", "app/desk/service.py", "app/transfers/service.py"} <= set(_ids(SERVICES))


@pytest.mark.parametrize("path", SERVICES, ids=_ids(SERVICES))
def test_a_service_takes_values_not_forms_or_the_http_request(path: Path):
    assert form_imports(path.read_text()) == []


@pytest.mark.parametrize("path", SERVICES, ids=_ids(SERVICES))
def test_a_service_commits_only_where_its_docstring_says_so(path: Path):
    assert silent_commits(path.read_text()) == []


def test_the_checks_see_what_they_are_for():
    assert form_imports("from app.intake.forms import RequestForm\nfrom flask import request, url_for\n"
                        "def f():\n    import wtforms\n") == [
        "line 1: app.intake.forms.RequestForm", "line 2: flask.request", "line 4: wtforms"]
    assert silent_commits('def save():\n    """Save."""\n    db.session.commit()\n'
                          'def claim():\n    """Claim it; commits."""\n    db.session.commit()\n') == [
        "line 1: save"]
