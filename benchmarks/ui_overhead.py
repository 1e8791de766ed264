"""What the web UI costs the relay: the proxy with ``--ui`` and a browser following it live,
against the same proxy without the UI, in the same run.

    python benchmarks/ui_overhead.py [--chargers 1000] [--seconds 20] [--rounds 3]

Processes on loopback: the fast CSMS of proxy_overhead.py, two ``ocpp-replay proxy`` commands
in front of it (one plain, one with ``--ui``), this load generator, and Debian's headless
Chromium (driven by Playwright) with two pages on the second proxy's UI: the sessions list,
live (it refetches its page of sessions, schema checks included, up to once a second while the
capture grows), and one charger's session in follow mode (its new frames arrive over
server-sent events).

Each round runs the steady load (N chargers, one MeterValues CALL a second each, spread over the
second, the round trip of each CALL measured) directly against the CSMS, through the plain
proxy and through the proxy with the UI, in an order rotated each round, so that the shared
machine's changes of speed fall on every path alike. It prints each path's p50/p99 per round,
what each proxy adds over the direct path (p99 of the proxy minus p99 direct, the same round),
and the median of the rounds; and the CPU the UI process and the browser used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script
from proxy_overhead import Result, line, round_trip  # the same load as the proxy's benchmark

HERE = Path(__file__).resolve().parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def steady(
    url: str,
    chargers: int,
    seconds: float,
    prefix: str,
    ready: Any = None,
    sent: dict[str, float] | None = None,
    mark: Any = None,
) -> Result:
    """proxy_overhead.steady, with READY awaited once every charger is connected (the browser
    opens the session it follows then); SENT gets the wall-clock time each CALL of the first
    charger was sent, by unique id; MARK is called when the load begins and when it ends (the
    window the CPU shares are of)."""
    result = Result()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        sockets = await asyncio.gather(
            *(http.ws_connect(f"{url}/{prefix}-{i:05d}", protocols=("ocpp1.6",)) for i in range(chargers))
        )
        if ready is not None:
            await ready()
        begin = time.monotonic() + 0.5
        end = begin + seconds
        if mark is not None:  # a quarter second early: its reads of /proc delay no CALL
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + 0.25, mark)

        async def one(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            at = begin + i / chargers
            n = 0
            while at < end:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if i == 0 and sent is not None:
                    sent[str(n)] = time.time()
                if not await round_trip(ws, n, result):
                    return
                n += 1
                at += 1.0

        outcomes = await asyncio.gather(*(one(i, ws) for i, ws in enumerate(sockets)), return_exceptions=True)
        if mark is not None:
            mark()
        result.errors += sum(1 for o in outcomes if isinstance(o, BaseException))
        result.seconds = seconds
        await asyncio.gather(*(ws.close() for ws in sockets))
    return result


def proxy_cmd(upstream: int, port: int, db: Path, ui: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "ocpp_replay.cli", "proxy", "--upstream", f"ws://127.0.0.1:{upstream}/ocpp",
           "--host", "127.0.0.1", "--port", str(port), "--db", str(db), "--log-level", "WARNING"]  # fmt: skip
    return cmd + (["--ui", str(ui)] if ui is not None else [])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_http(url: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            get_json(url)
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


#: In the followed page: note the wall-clock time each CALL's row appears (by its unique id).
SEEN = """() => {
  window.__seen = {};
  new MutationObserver((changes) => {
    for (const change of changes) for (const row of change.addedNodes) {
      const d = row.dataset;
      if (d && d.type === "2" && !(d.uid in window.__seen)) window.__seen[d.uid] = Date.now();
    }
  }).observe(document.querySelector(".seq .rows"), { childList: true });
}"""


class Pages:
    """In the browser process: Chromium with the UI's sessions list and one session followed."""

    def __init__(self, ui: str) -> None:
        self.ui = ui
        self.api: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from playwright.async_api import async_playwright

        self.pw = await async_playwright().start()
        self.browser = await self.pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        self.sessions = await self.browser.new_page()
        # (the page's CSP forbids the evaluated script that notes when each frame appears)
        self.follow = await self.browser.new_page(bypass_csp=True)
        # Chromium's own accounting of the pages' work (DevTools' Performance domain)
        self.cdp = {}
        for name, page in (("sessions", self.sessions), ("follow", self.follow)):
            self.cdp[name] = await page.context.new_cdp_session(page)
            await self.cdp[name].send("Performance.enable")

    async def away(self) -> str:
        """Both pages on about:blank: nobody looks, the UI process idles."""
        if self.api is not None:
            self.api.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.api
            self.api = None
        await self.sessions.goto("about:blank")
        await self.follow.goto("about:blank")
        return "ok"

    async def poll(self, charge_point: str) -> str:
        """No browser: the requests the two pages make, from a plain HTTP client (the sessions
        list once a second while the capture changes, the followed session's event stream), so
        that the UI server does its work for a viewer without a browser's own CPU beside it."""
        sid = await self._newest(charge_point)

        async def client() -> None:
            async with aiohttp.ClientSession() as http:

                async def sessions() -> None:
                    async with http.get(self.ui + "api/live") as events:
                        last = 0.0
                        async for _line in events.content:
                            if time.monotonic() - last >= 1.0:
                                last = time.monotonic()
                                async with http.get(self.ui + "api/sessions") as r:
                                    await r.read()

                async def follow() -> None:
                    async with http.get(f"{self.ui}api/live?session={sid}") as events:
                        async for _line in events.content:
                            pass

                await asyncio.gather(sessions(), follow())

        self.api = asyncio.get_running_loop().create_task(client())
        return "ok"

    async def _newest(self, charge_point: str) -> int:
        for _ in range(100):  # its session row reaches the capture with the writer's next batch
            data = await asyncio.to_thread(get_json, f"{self.ui}api/sessions?cp={charge_point}&limit=1")
            if data["sessions"]:
                break
            await asyncio.sleep(0.05)
        return int(data["sessions"][0]["id"])

    async def follow_newest(self, charge_point: str) -> str:
        """The sessions list, and CHARGE_POINT's newest session in follow mode."""
        sid = await self._newest(charge_point)
        await self.sessions.goto(self.ui + "#/sessions")
        await self.follow.goto(f"{self.ui}#/session/{sid}")
        await self.follow.wait_for_selector("#follow")
        await self.follow.evaluate(SEEN)
        return "ok"

    async def seen(self) -> str:
        """When each CALL of the followed session appeared on the page: unique id -> epoch ms."""
        return json.dumps(await self.follow.evaluate("window.__seen"))

    async def metrics(self) -> str:
        """Seconds of the main thread's work per page since it was loaded: tasks in all, and
        script, layout and style within them."""
        out = {}
        for name, cdp in self.cdp.items():
            got = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
            out[name] = {k: got.get(k, 0.0) for k in ("TaskDuration", "ScriptDuration", "LayoutDuration",
                                                     "RecalcStyleDuration", "LayoutCount")}  # fmt: skip
        return json.dumps(out)

    async def count(self) -> str:
        return str(await self.follow.locator(".frame").count())

    async def serve(self) -> None:
        """Commands on stdin, one a line (follow CP, away, count, quit); an answer line each."""
        await self.start()
        print("ready", flush=True)
        while line := (await asyncio.to_thread(sys.stdin.readline)).split():
            if line[0] == "quit":
                break
            answer = await {
                "follow": lambda: self.follow_newest(line[1]),
                "poll": lambda: self.poll(line[1]),
                "away": self.away,
                "count": self.count,
                "metrics": self.metrics,
                "seen": self.seen,
            }[line[0]]()
            print(answer, flush=True)
        await self.browser.close()
        await self.pw.stop()


class Browser:
    """The browser, in a process of its own at SCHED_IDLE: it stands in for an engineer's laptop.

    Not in this process: Playwright's client gets an event for every request the pages make,
    and on this process's event loop it would delay the load generator's own round trips. Not at
    the proxy's priority: on a laptop it would not share the proxy's cores at all.
    """

    def __init__(self, ui: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--browse", ui],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def _expect(self, want: str | None = None) -> str:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline().strip()
        if want is not None and got != want:
            raise SystemExit(f"browser process: expected {want!r}, got {got!r}")
        return got

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._expect()

    async def follow_newest(self, charge_point: str) -> None:
        await asyncio.to_thread(self._ask, f"follow {charge_point}")

    async def away(self) -> None:
        await asyncio.to_thread(self._ask, "away")

    async def poll(self, charge_point: str) -> None:
        await asyncio.to_thread(self._ask, f"poll {charge_point}")

    async def frames_shown(self) -> int:
        return int(await asyncio.to_thread(self._ask, "count"))

    async def page_metrics(self) -> dict[str, dict[str, float]]:
        return json.loads(await asyncio.to_thread(self._ask, "metrics"))  # type: ignore[no-any-return]

    async def seen(self) -> dict[str, float]:
        return {k: v / 1000 for k, v in json.loads(await asyncio.to_thread(self._ask, "seen")).items()}

    def pids(self) -> list[int]:
        return [self.proc.pid, *(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._ask("quit")
        self.proc.wait(30)


def cpu_by_kind(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of the browser's processes by kind: Chromium's own (browser, renderers,
    GPU, utilities), Playwright's node driver, and this benchmark's Python process that drives it
    (the last two are the harness: a user's browser has neither)."""
    out = {"chromium": 0.0, "playwright driver": 0.0, "harness": 0.0}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            t = p.cpu_times()
            name = p.name()
        except psutil.NoSuchProcess:
            continue
        kind = "chromium" if "chrom" in name else "playwright driver" if "node" in name else "harness"
        out[kind] += t.user + t.system
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        except psutil.NoSuchProcess:
            pass
    return total


def start(tmp: Path) -> tuple[list[subprocess.Popen[bytes]], dict[str, int]]:
    """The CSMS and the two proxies (the second with --ui); returns them and their ports."""
    ports = {name: free_port() for name in ("csms", "plain", "ui_proxy", "ui")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "proxy_overhead.py"), "--serve-csms", str(ports["csms"])]
        )
    ]
    wait_port(ports["csms"])
    procs.append(subprocess.Popen(proxy_cmd(ports["csms"], ports["plain"], tmp / "plain.db", None)))
    procs.append(subprocess.Popen(proxy_cmd(ports["csms"], ports["ui_proxy"], tmp / "ui.db", ports["ui"])))
    for port in (ports["plain"], ports["ui_proxy"]):
        wait_port(port)
    return procs, ports


async def run(args: argparse.Namespace, procs: list[subprocess.Popen[bytes]], ports: dict[str, int]) -> int:
    csms_port, plain_port, ui_proxy_port, ui_port = (
        ports["csms"],
        ports["plain"],
        ports["ui_proxy"],
        ports["ui"],
    )
    ui = f"http://127.0.0.1:{ui_port}/"
    wait_http(ui + "api/info")
    ui_proc = next(p for p in psutil.Process(procs[2].pid).children() if "ui" in p.cmdline())
    idle = os.sched_getscheduler(ui_proc.pid) == os.SCHED_IDLE
    print(f"UI process: pid {ui_proc.pid}, {'SCHED_IDLE' if idle else f'nice {ui_proc.nice()}'}")
    browser = await asyncio.to_thread(Browser, ui)
    paths = {
        "direct": f"ws://127.0.0.1:{csms_port}/ocpp",
        "proxy": f"ws://127.0.0.1:{plain_port}/ocpp",
        # the plain proxy takes as many paths a round as the --ui one: captures of the same size
        "proxy (2)": f"ws://127.0.0.1:{plain_port}/ocpp",
        "proxy (3)": f"ws://127.0.0.1:{plain_port}/ocpp",
        "--ui unwatched": f"ws://127.0.0.1:{ui_proxy_port}/ocpp",
        "--ui, API client": f"ws://127.0.0.1:{ui_proxy_port}/ocpp",
        "proxy --ui": f"ws://127.0.0.1:{ui_proxy_port}/ocpp",
    }
    print(f"machine: {psutil.cpu_count()} cores (shared), python {sys.version.split()[0]}")
    print(
        f"steady: {args.chargers} chargers x 1 MeterValues/s for {args.seconds:.0f} s per path, "
        f"{args.rounds} rounds; a browser on the UI's sessions list and following one session"
    )
    added: dict[str, list[float]] = {
        "proxy": [],
        "proxy (2)": [],
        "proxy (3)": [],
        "--ui unwatched": [],
        "--ui, API client": [],
        "proxy --ui": [],
    }
    p99: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    ui_cpu = browser_cpu = blank_cpu = 0.0  # blank: the browser's pages on about:blank ("proxy (2)")
    kinds: dict[str, float] = {}  # CPU seconds by process kind during the load, the browser following
    kinds_blank: dict[str, float] = {}  # the same, its pages blank
    delays: list[float] = []  # from a CALL sent to its row on the followed page, seconds
    missed = 0
    shown = 0
    for r in range(args.rounds):
        print(f"round {r + 1}")
        results: dict[str, Result] = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            prefix = f"R{r}P{names.index(name)}"  # a charge point id of its own per path

            async def ready(name: str = name, prefix: str = prefix) -> None:
                if name == "proxy --ui":
                    await browser.away()
                    await browser.follow_newest(f"{prefix}-00000")
                elif name == "--ui, API client":
                    await browser.away()
                    await browser.poll(f"{prefix}-00000")
                else:
                    await browser.away()

            before_ui, before_browser = cpu_of([ui_proc.pid]), cpu_of(browser.pids())
            sent: dict[str, float] = {}
            marks: list[dict[str, float]] = []

            def mark(name: str = name, marks: list[dict[str, float]] = marks) -> None:
                if name in ("proxy --ui", "proxy (2)"):
                    marks.append({**cpu_by_kind(browser.pids()), "ui": cpu_of([ui_proc.pid])})

            results[name] = await steady(paths[name], args.chargers, args.seconds, prefix, ready, sent, mark)
            if len(marks) == 2:  # the load's own seconds: the pages were opened before it
                window = kinds_blank if name == "proxy (2)" else kinds
                for kind, value in marks[1].items():
                    window[kind] = window.get(kind, 0.0) + value - marks[0][kind]
            if name == "proxy --ui":
                await asyncio.sleep(1.0)  # the last frames reach the page
                shown += await browser.frames_shown()  # the followed session, this round
                for page, m in (await browser.page_metrics()).items():
                    print(
                        f"  {page} page since loaded: main-thread tasks {m['TaskDuration'] * 1e3:.0f} ms "
                        f"(script {m['ScriptDuration'] * 1e3:.0f}, layout {m['LayoutDuration'] * 1e3:.0f} "
                        f"in {m['LayoutCount']:.0f} layouts, style {m['RecalcStyleDuration'] * 1e3:.0f})"
                    )
                seen = await browser.seen()
                delays += [seen[uid] - t for uid, t in sent.items() if uid in seen]
                missed += sum(1 for uid in sent if uid not in seen)
                ui_cpu += cpu_of([ui_proc.pid]) - before_ui
                browser_cpu += cpu_of(browser.pids()) - before_browser
            elif name == "proxy (2)":
                blank_cpu += cpu_of(browser.pids()) - before_browser
            print(line(name, results[name]))
            p99[name].append(results[name].pct(99))
        for name in added:
            added[name].append(results[name].pct(99) - results["direct"].pct(99))
        print("  added p99: " + ", ".join(f"{n} {v[-1]:+.3f} ms" for n, v in added.items()))
    await asyncio.to_thread(browser.stop)
    med = {name: statistics.median(v) for name, v in added.items()}
    cost = [u - p for u, p in zip(added["proxy --ui"], added["proxy"], strict=True)]
    # the same proxy with nobody watching against the plain one: what the machine's noise alone
    # makes of two paths that do the same work
    null = [u - p for u, p in zip(added["--ui unwatched"], added["proxy"], strict=True)]
    served = [u - p for u, p in zip(added["--ui, API client"], added["proxy"], strict=True)]
    # and two paths through the very same plain proxy: the machine's noise alone
    same = [u - p for u, p in zip(added["proxy (2)"], added["proxy"], strict=True)]
    seconds = args.rounds * args.seconds
    print(
        f"\nmedian added p99 over {args.rounds} rounds: proxy +{med['proxy']:.3f} ms, --ui unwatched "
        f"+{med['--ui unwatched']:.3f} ms, proxy --ui followed +{med['proxy --ui']:.3f} ms; the UI's "
        f"cost (median of the rounds' differences) {statistics.median(cost):+.3f} ms, against "
        f"{statistics.median(null):+.3f} ms for the UI unwatched (the noise floor: the same work) and "
        f"{statistics.median(served):+.3f} ms for the UI serving an API client (no browser beside it); "
        f"the plain proxy against itself {statistics.median(same):+.3f} ms"
    )
    print(
        f"the UI process used {ui_cpu / seconds * 100:.1f} % of a core, the browser "
        f"{browser_cpu / seconds * 100:.1f} %, while the load went through proxy --ui; "
        f"the followed session showed {shown} frames live; the browser with its pages blank "
        f"{blank_cpu / seconds * 100:.1f} %"
    )
    for label, got in (("following", kinds), ("pages blank", kinds_blank)):
        print(
            f"during the load only, {label}: "
            + ", ".join(f"{kind} {value / seconds * 100:.1f} %" for kind, value in got.items())
            + " of a core"
        )
    if delays:
        ds = sorted(delays)
        print(
            f"live: a CALL of the followed charger appeared on the page {1000 * ds[len(ds) // 2]:.0f} ms "
            f"after it was sent (median), {1000 * ds[-1]:.0f} ms at most, {len(ds)} CALLs, "
            f"{sum(1 for d in ds if d > 1.0)} later than 1 s, {missed} never shown"
        )
    summary = {
        "added_p99_ms_proxy": added["proxy"],
        "added_p99_ms_proxy_2": added["proxy (2)"],
        "added_p99_ms_proxy_3": added["proxy (3)"],
        "same_proxy_p99_ms_rounds": same,
        "same_proxy_p99_ms_median": statistics.median(same),
        "added_p99_ms_proxy_ui_unwatched": added["--ui unwatched"],
        "added_p99_ms_proxy_ui": added["proxy --ui"],
        "browser_blank_cpu_share": blank_cpu / seconds,
        "ui_cost_p99_ms_rounds": cost,
        "ui_cost_p99_ms_median": statistics.median(cost),
        "unwatched_cost_p99_ms_rounds": null,
        "unwatched_cost_p99_ms_median": statistics.median(null),
        "added_p99_ms_proxy_ui_api_client": added["--ui, API client"],
        "api_client_cost_p99_ms_rounds": served,
        "api_client_cost_p99_ms_median": statistics.median(served),
        "ui_cpu_share": ui_cpu / seconds,
        "browser_cpu_share": browser_cpu / seconds,
        "frames_followed": shown,
        "load_window_cpu_share": {k: v / seconds for k, v in kinds.items()},
        "load_window_cpu_share_blank": {k: v / seconds for k, v in kinds_blank.items()},
        "live_delay_ms": {
            "p50": 1000 * statistics.median(delays) if delays else None,
            "max": 1000 * max(delays) if delays else None,
            "over_1s": sum(1 for d in delays if d > 1.0),
            "calls": len(delays),
            "missed": missed,
        },
    }
    print(json.dumps(summary))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--browse", help=argparse.SUPPRESS)  # the browser process
    args = ap.parse_args()
    if args.browse:
        with contextlib.suppress(OSError):  # it and every process it starts (Chromium's)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        asyncio.run(Pages(args.browse).serve())
        return 0
    procs, ports = start(Path(tempfile.mkdtemp(prefix="ocpp-ui-bench-")))
    try:
        return asyncio.run(run(args, procs, ports))
    finally:
        for proc in procs[::-1]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)


if __name__ == "__main__":
    sys.exit(main())
