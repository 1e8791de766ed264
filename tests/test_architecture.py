"""The import rules of the package (docs/architecture.md), checked on the source.

The pure core (``ocpp_replay.core``) imports nothing else of ocpp_replay but ``errors``, and no
library that does I/O; the report renderers do not open files or sockets either. Edges import the
core, never the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ocpp_replay"

#: Libraries that do I/O (sockets, files, processes, threads, terminals, databases).
IO_LIBRARIES = {
    "aiohttp", "asyncio", "http", "mitmproxy", "multiprocessing", "os", "rich", "selectors", "shutil",
    "socket", "sqlite3", "sqlite_utils", "ssl", "subprocess", "tempfile", "threading", "typer",
    "urllib.request", "uvloop", "websockets",
}  # fmt: skip


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "ocpp_replay":
                found.update(f"ocpp_replay.{alias.name}" for alias in node.names)
    return found


def offending(path: Path, allowed_ours: tuple[str, ...]) -> list[str]:
    bad = []
    for name in sorted(imports_of(path)):
        top = name.split(".")[0]
        if name.startswith("ocpp_replay"):
            if name != "ocpp_replay" and not name.startswith(allowed_ours):
                bad.append(name)
        elif top in IO_LIBRARIES or name in IO_LIBRARIES:
            bad.append(name)
    return bad


CORE = sorted((PACKAGE / "core").glob("*.py"))
RENDERERS = [PACKAGE / "report" / f"{name}.py" for name in ("html", "json", "junit", "terminal")]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_only_core_and_no_io(path: Path) -> None:
    assert offending(path, ("ocpp_replay.core", "ocpp_replay.errors")) == []


@pytest.mark.parametrize("path", RENDERERS, ids=lambda p: p.name)
def test_renderers_import_no_io(path: Path) -> None:
    allowed = ("ocpp_replay.core", "ocpp_replay.errors", "ocpp_replay.report")
    assert [n for n in offending(path, allowed) if n.split(".")[0] != "rich"] == []


#: schemas.py reads the JSON schemas bundled in the installed ``ocpp`` package (importlib.resources,
#: once per schema): data that ships with the program, like an import, not a user's file.
NO_FILES = [p for p in CORE if p.name != "schemas.py"] + RENDERERS


@pytest.mark.parametrize("path", NO_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_and_renderers_open_no_files(path: Path) -> None:
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
    }
    assert calls & {"open", "read_text", "read_bytes", "write_text", "write_bytes"} == set()


def test_the_rule_catches_an_edge_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom ocpp_replay.capture.proxy import ProxyServer\n"
                   "def f():\n    from ocpp_replay.store import Store\n")  # fmt: skip
    assert offending(bad, ("ocpp_replay.core", "ocpp_replay.errors")) == [
        "asyncio", "ocpp_replay.capture.proxy", "ocpp_replay.store",
    ]  # fmt: skip


def test_nothing_imports_the_cli_but_the_cli() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        assert not any(n.startswith("ocpp_replay.cli") for n in imports_of(path)), path


def test_every_subpackage_is_documented() -> None:
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for sub in sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")):
        assert f"{sub}/" in text, sub
