"""What the hostile-file checks, the duplicate check and the free-text detectors cost.

    python benchmarks/share_files.py [--sessions 200] [--frames 200]

Builds a capture of SESSIONS sessions of FRAMES real Alfen frames each (tests/data), then times,
each as the median of three runs:

- ``redact`` with every detector and with ``detect=()`` (field rules only);
- ``import`` of its JSONL export into a new capture (no duplicate check needed: nothing there),
  and into a capture that already holds those sessions: once refused by the duplicate check,
  once with ``allow_duplicates`` (the check skipped);
- ``merge`` of the capture with a capture of other sessions (the check compares inputs).

Prints one line per figure. The machine is shared: compare figures of one sitting only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(path: Path, sessions: int, frames: int, start: float) -> None:
    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    rows = [
        json.loads(line) for line in (ROOT / "tests/data/alfen-frames.jsonl").read_text().splitlines() if line
    ]
    alfen = [(Direction(r["direction"]), r["raw"]) for r in rows]
    writer = CaptureWriter(path)
    for i in range(sessions):
        t0 = start + i * 1000
        sid = writer.open_session(t0, charge_point_id=f"ALF-{i:04d}", subprotocol="ocpp1.6")
        for seq in range(1, frames + 1):
            direction, raw = alfen[(seq - 1) % len(alfen)]
            writer.frame(sid, seq, t0 + seq * 0.5, seq * 0.5, direction, raw)
        writer.close_session(sid, t0 + frames, close_code=1000, closed_by="cp", frames=frames)
    writer.close()


def median(fn: Callable[[Path], object], work: Path, runs: int = 3) -> float:
    times = []
    for n in range(runs):
        d = work / f"run{n}"
        d.mkdir()
        t = time.perf_counter()
        fn(d)
        times.append(time.perf_counter() - t)
        shutil.rmtree(d)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()

    from ocpp_replay.errors import CaptureError, ConfigError
    from ocpp_replay.share.exchange import export_jsonl, import_jsonl
    from ocpp_replay.share.merge import merge_captures
    from ocpp_replay.share.redact import redact_capture
    from ocpp_replay.store import Store

    work = Path(tempfile.mkdtemp(prefix="share-bench-"))
    try:
        src, other = work / "src.db", work / "other.db"
        build(src, args.sessions, args.frames, 1.7e9)
        build(other, args.sessions, args.frames, 1.8e9)
        export = work / "src.jsonl"
        with Store.open(src) as store:
            export_jsonl(store, export)
        n = args.sessions * args.frames
        size = export.stat().st_size / 1e6
        print(f"capture: {args.sessions} sessions x {args.frames} frames = {n} frames; export {size:.1f} MB")

        for label, kw in (("every detector", {}), ("field rules only", {"detect": ()})):
            t = median(lambda d, kw=kw: redact_capture(src, d / "r.db", key=b"k", **kw), work)
            print(f"redact, {label}: {t:.2f} s ({n / t:,.0f} frames/s)")

        t = median(lambda d: import_jsonl(export, d / "new.db"), work)
        print(f"import into a new capture: {t:.2f} s")

        def refused(d: Path) -> None:
            target = d / "t.db"
            shutil.copy(src, target)
            try:
                import_jsonl(export, target)
            except CaptureError:
                return
            raise AssertionError("the duplicates were not refused")

        def allowed(d: Path) -> None:
            target = d / "t.db"
            shutil.copy(src, target)
            import_jsonl(export, target, allow_duplicates=True)

        t_ref = median(refused, work)
        t_all = median(allowed, work)
        print(f"import into a capture holding the same sessions: refused after {t_ref:.2f} s; "
              f"--allow-duplicates {t_all:.2f} s (both include copying the capture)")  # fmt: skip

        def merged(d: Path, allow: bool) -> None:
            try:
                merge_captures([src, other], d / "m.db", allow_duplicates=allow)
            except ConfigError:
                raise AssertionError("no duplicates here") from None

        t_chk = median(lambda d: merged(d, False), work)
        t_skip = median(lambda d: merged(d, True), work)
        print(f"merge of two captures (no duplicates): {t_chk:.2f} s with the check, {t_skip:.2f} s without")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
