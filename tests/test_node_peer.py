"""A second, independent implementation checks the wire: the npm package `ocpp-rpc` (Node.js),
as a CSMS and as a charge point (tests/node/peer.js), through the capture proxy and under replay.

Nothing here shares code with ocpp-replay or the Python `ocpp` package: both Node peers validate
every message against the OCPP schemas (ocpp-rpc's strictMode) and print what they sent and
received, and the capture must hold exactly that, byte for byte, in both directions. Then the
capture replays against the same CSMS with no difference, and against a changed one with the
difference found.

Needs Node.js and npm (installed by .ci/run). Elsewhere without them the tests skip, unless
OCPP_REPLAY_REQUIRE_NODE=1, which .ci/run sets: then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.store import Store
from tests.test_proxy import settle
from tests.test_replay import _invoke

pytestmark = pytest.mark.timeout(120)

NODE_DIR = Path(__file__).parent / "node"
PEER = NODE_DIR / "peer.js"


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with tests/node's packages installed (npm ci, from the lock file)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("OCPP_REPLAY_REQUIRE_NODE") == "1":
            pytest.fail("OCPP_REPLAY_REQUIRE_NODE=1 but node or npm is not installed")
        pytest.skip("Node.js and npm are not installed (.ci/run installs them)")
    if not (NODE_DIR / "node_modules" / "ocpp-rpc").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel", "error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci in {NODE_DIR} failed: {done.stderr}"
    return node


@contextlib.asynccontextmanager
async def node_csms(
    node: str, version: str, *, changed: bool = False
) -> AsyncIterator[tuple[str, list[Any]]]:
    """The ocpp-rpc CSMS on 127.0.0.1; yields its URL and the messages it logs (as they come)."""
    args = [node, str(PEER), "csms", version, *(["changed"] if changed else [])]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    log: list[Any] = []
    try:
        async with asyncio.timeout(20):
            first = json.loads(await proc.stdout.readline())
        port = first["port"]

        async def read() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                log.append(json.loads(line))

        reader = asyncio.create_task(read())
        try:
            yield f"ws://127.0.0.1:{port}/ocpp", log
        finally:
            proc.terminate()
            async with asyncio.timeout(10):
                await proc.wait()
            await reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def node_charge_point(node: str, version: str, url: str, identity: str) -> list[Any]:
    """Run the ocpp-rpc charge point's session to its end; its log of messages."""
    proc = await asyncio.create_subprocess_exec(
        node, str(PEER), "cp", version, url, identity, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


def _texts(log: list[Any], identity: str, *, out: bool) -> list[str]:
    return [m["text"] for m in log if m["id"] == identity and m["out"] is out]


@pytest.mark.parametrize(("version", "identity"), [("1.6", "NODE-16"), ("2.0.1", "NODE-201")])
async def test_node_peers_through_the_proxy_byte_for_byte_then_replayed(
    node: str, tmp_path: Path, version: str, identity: str
) -> None:
    db = tmp_path / "capture.db"
    async with node_csms(node, version) as (url, csms_log), ProxyServer(url, db) as proxy:
        cp_log = await node_charge_point(node, version, proxy.url, identity)
        await settle(proxy)
        async with asyncio.timeout(10):  # the CSMS has logged the close's last messages
            while len(_texts(csms_log, identity, out=False)) < len(_texts(cp_log, identity, out=True)):
                await asyncio.sleep(0.02)

    to_csms = _texts(cp_log, identity, out=True)
    to_cp = _texts(cp_log, identity, out=False)
    assert to_csms == _texts(csms_log, identity, out=False)  # what the CSMS got is what was sent
    assert to_cp == _texts(csms_log, identity, out=True)
    assert any('"RemoteStopTransaction"' in t or '"RequestStopTransaction"' in t for t in to_cp)
    with Store.open(db) as store:
        [session] = store.sessions()
        frames = list(store.frames(session.id))
    assert session.charge_point_id == identity
    assert session.subprotocol == ("ocpp1.6" if version == "1.6" else "ocpp2.0.1")
    assert (session.close_code, session.closed_by) == (1000, "cp")
    assert [f.raw for f in frames if f.direction == "to_csms"] == to_csms
    assert [f.raw for f in frames if f.direction == "to_cp"] == to_cp
    assert all(f.parse_error is None for f in frames)

    # Replayed against the same CSMS: no difference (its transaction ids and its own stop call
    # correlated); against a release that blocks the tag: the difference, exit 1.
    async with node_csms(node, version) as (url, _log):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--timeout", "3",
                             "--grace", "1", "--report", str(tmp_path / "same.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "same.json").read_text())["summary"]["diffs"] == 0
    async with node_csms(node, version, changed=True) as (url, _log):
        res = await _invoke(["replay", "--db", str(db), "--target", url, "--timeout", "3",
                             "--grace", "1", "--report", str(tmp_path / "changed.json")])  # fmt: skip
        assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "changed.json").read_text())
    paths = {d["path"] for s in report["sessions"] for d in s["diffs"]}
    assert ("idTagInfo.status" if version == "1.6" else "idTokenInfo.status") in paths, paths
