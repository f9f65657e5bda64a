"""docs/architecture.md, the map of the code, names every module and nothing that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_map_names_every_module():
    source = ROOT / "src"
    modules = set()
    for path in (source / "tunelab").rglob("*.py"):
        empty = not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if empty and path.name in ("__init__.py", "__main__.py"):
            continue  # a package marker or the `python -m tunelab` entry
        modules.add(path.relative_to(source).as_posix())
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^- `(tunelab/[^`]+\.py)`", text, flags=re.MULTILINE))
    assert modules - listed == set(), "modules missing from docs/architecture.md"
    assert listed - modules == set(), "docs/architecture.md names modules that are gone"
