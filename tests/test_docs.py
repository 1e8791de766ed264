"""Every command a user can run is documented, and the README's commands are the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from ocpp_replay.cli import app

ROOT = Path(__file__).resolve().parents[1]


def command_names() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_every_cli_command_has_a_docs_page() -> None:
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    names = command_names()
    assert len(names) >= 10
    missing = [n for n in names if not re.search(rf"ocpp-replay {re.escape(n)}\b", docs)]
    assert missing == []


def test_readme_gives_the_install_and_test_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e . && ocpp-replay demo" in readme
    assert "pip install -e '.[test]' && pytest" in readme
    assert "pip install --quiet -e '.[test]' && pytest" in ci


def test_docs_links_resolve() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
