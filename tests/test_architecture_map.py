"""docs/architecture.md's module map matches the tree: every module under squeezed/ is
named in it, and every module or package it names exists.

How the map names a module (the table's rows): the first cell names paths in backticks,
``squeezed/...`` in full; a bare name after a full one (```squeezed/config/``, ``keys.py```)
is in that one's directory. A row for a package (``squeezed/ctl/``) may name its modules
bare anywhere in the row (``top.py``). A package needs no row of its own, and its
``__init__.py`` and ``__main__.py`` are not modules the map must name.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "squeezed"

_TICKED = re.compile(r"`([^`\s]+)`")
_IMPLICIT = {"__init__.py", "__main__.py"}


def _rows(text: str) -> list[list[str]]:
    """The cells of the module map's rows (the first table, header and rule skipped)."""
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if in_table and not set("".join(cells)) <= set("-: "):
                rows.append(cells)
            in_table = True
        elif in_table:
            break
    return rows


def named_in_map(text: str) -> set[str]:
    """Paths the map names, relative to the repository: ``squeezed/x.py`` for a module,
    ``squeezed/x/`` for a package."""
    named: set[str] = set()
    for cells in _rows(text):
        base: PurePosixPath | None = None
        packages: list[str] = []
        for token in _TICKED.findall(cells[0]):
            if token.startswith("squeezed/"):
                path = token
                base = PurePosixPath(token) if token.endswith("/") else \
                    PurePosixPath(token).parent
            elif base is not None and (token.endswith(".py") or token.endswith("/")):
                path = str(base / token) + ("/" if token.endswith("/") else "")
            else:
                continue  # not under squeezed/ (idl/memory.json, say)
            named.add(path)
            if path.endswith("/"):
                packages.append(path)
        if len(packages) == 1:  # a package's row: its modules named bare in the row
            for cell in cells:
                for token in _TICKED.findall(cell):
                    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.py", token):
                        named.add(packages[0] + token)
    return named


def in_tree() -> tuple[set[str], set[str]]:
    """The modules (``squeezed/.../x.py``) and packages (``squeezed/.../``) of the tree.
    A package needs no row of its own: its modules are named."""
    modules: set[str] = set()
    packages: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        if path.name in _IMPLICIT:
            packages.add(path.parent.relative_to(ROOT).as_posix() + "/")
        else:
            modules.add(path.relative_to(ROOT).as_posix())
    return modules, packages


def test_the_parser_reads_the_forms_the_map_uses() -> None:
    text = "\n".join([
        "| module | holds |",
        "|---|---|",
        "| `squeezed/a.py` | x |",
        "| `squeezed/b/`, `c.py` | y |",
        "| `squeezed/d/` | `e.py` (the e), `f.py`; `idl/memory.json` |",
        "| `squeezed/g.py`, `h.py` + `idl/x.json` | z |",
        "",
        "| not | the map |",
        "| `squeezed/zzz.py` | |",
    ])
    assert named_in_map(text) == {
        "squeezed/a.py", "squeezed/b/", "squeezed/b/c.py", "squeezed/d/", "squeezed/d/e.py",
        "squeezed/d/f.py", "squeezed/g.py", "squeezed/h.py",
    }


def test_every_module_is_in_the_map_and_every_name_in_the_map_exists() -> None:
    named = named_in_map(MAP.read_text(encoding="utf-8"))
    modules, packages = in_tree()
    unmapped = sorted(modules - named)
    dangling = sorted(named - modules - packages)
    assert (unmapped, dangling) == ([], []), (
        "docs/architecture.md's module map and the tree disagree.\n"
        f"In the tree, not in the map ({len(unmapped)}):\n  " + "\n  ".join(unmapped)
        + f"\nIn the map, not in the tree ({len(dangling)}):\n  " + "\n  ".join(dangling)
    )
