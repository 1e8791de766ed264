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


def test_the_grafana_dashboard_queries_metrics_the_tool_exports(tmp_path: Path) -> None:
    """docs/grafana-dashboard.json names only series that a proxy's /metrics or replay's and
    simulate's --metrics-port serve (scraped from the real collectors)."""
    import asyncio
    import json

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from ocpp_replay.capture.proxy import ProxyServer
    from ocpp_replay.cli.metrics import FleetCollector, ReplayCollector

    async def proxy_metrics() -> str:
        async with ProxyServer("ws://127.0.0.1:9/ocpp", tmp_path / "c.db") as proxy:
            proxy.writer.traffic[("to_csms", "Heartbeat")] = [1, 2]  # type: ignore[union-attr]
            proxy.stats.handshakes["101"] = 1  # labelled series appear once counted
            return proxy.http_routes["/metrics"]()[1].decode()

    texts = [asyncio.run(proxy_metrics())]
    for collector in (ReplayCollector(), FleetCollector(1)):
        registry = CollectorRegistry()
        registry.register(collector)
        texts.append(generate_latest(registry).decode())
    exported = {s.name for text in texts for f in text_string_to_metric_families(text) for s in f.samples}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = {name for e in exprs for name in re.findall(r"\b((?:ocpp|process)_[a-z_]+)", e)}
    assert len(queried) >= 20
    assert queried - exported == set()
