"""The core never reaches into the plugins: ``sdns`` finds backends by entry point only."""

from __future__ import annotations

import ast
from pathlib import Path

import sdns


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_sdns_never_imports_backends() -> None:
    root = Path(sdns.__file__).parent
    offenders = {str(path.relative_to(root)): sorted(m for m in _imported(path)
                                                      if m.split(".")[0] == "backends")
                 for path in root.rglob("*.py")}
    assert {path: found for path, found in offenders.items() if found} == {}
