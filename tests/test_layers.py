"""The layers stay layered: what import-linter cannot see, checked here.

import-linter (``lint-imports`` in CI) checks that heartbeat's own layers
point one way; it cannot forbid a submodule of another package, so the rule
that only the web and daemon layers touch twisted.web is checked here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "heartbeat"
BELOW_WEB = [
    *sorted((PACKAGE / "core").glob("*.py")),
    *sorted((PACKAGE / "store").rglob("*.py")),
    PACKAGE / "twisted_internals.py",
]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", BELOW_WEB, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_twisted_web_below_the_web_layer(path):
    assert not {name for name in imported(path) if name.startswith("twisted.web")}


def test_the_check_sees_an_import():
    web = PACKAGE / "web" / "errors.py"
    assert any(name.startswith("twisted.web") for name in imported(web))


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_writes_no_http(path):
    """Core frames SSE only: HTTP's lines, chunks and heads are the web layer's."""
    tree = ast.parse(path.read_text())
    http_bytes = [node.value for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, bytes)
                  and (node.value.endswith(b"\r\n") or b"HTTP/" in node.value)]
    names = [node.id for node in ast.walk(tree) if isinstance(node, ast.Name)]
    attributes = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)]
    assert http_bytes == []
    assert [name for name in names + attributes if "chunk" in name.lower()] == []


def test_the_http_check_sees_http():
    tree = ast.parse((PACKAGE / "web" / "responses.py").read_text())
    assert any(isinstance(node, ast.Constant) and isinstance(node.value, bytes)
               and node.value.endswith(b"\r\n") for node in ast.walk(tree))
