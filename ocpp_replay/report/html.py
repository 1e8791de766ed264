"""The HTML report of a run: one self-contained page (inline CSS, no scripts, no external
resources), readable without a network. Pure: :func:`html_report` turns a RunResult into text.

Sections, in order:

1. **Summary**: verdict, backends, sessions, messages, differences (for a compare run: of the
   candidate from the baseline, and of each against the recording), timing, noise.
2. **Coverage**: OCPP actions by direction (charger → CSMS, CSMS → charger) and version, with
   the number of exchanges and differences each. The backend commands a CSMS commonly sends
   (remote start/stop, reset, configuration, charging profiles, ...) are listed even when the
   run did not exercise them, so gaps show.
3. **Differences**: every deciding difference, expected against actual; identical ones (same
   action, kind, path, expected and actual) on one row with their count, sessions and charge
   points.
4. **Learned noise** (compare runs).
5. **Sessions**: per session a timeline of frames; under a frame with differences, each
   difference side by side, expected against actual. Sessions with differences come first and
   are open; long timelines are cut (the JSON report and the database have everything).

Everything from traffic (charge point ids, actions, paths, values, raw frames) is untrusted
and goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

from ocpp_replay.core.correlate import ocpp_version
from ocpp_replay.core.diff import Difference, DiffKind
from ocpp_replay.core.frames import MessageType
from ocpp_replay.core.results import LiveFrame, RunResult, SessionResult
from ocpp_replay.core.text import escape_controls
from ocpp_replay.report.groups import DiffGroup, group_differences, session_ranges

__all__ = ["BACKEND_COMMANDS", "coverage", "html_report"]

CHARGER_TO_CSMS: Final = "charger → CSMS"
CSMS_TO_CHARGER: Final = "CSMS → charger"
CONNECTION: Final = "(connection)"

#: Commands a CSMS sends, listed in the coverage matrix even when not exercised.
BACKEND_COMMANDS: Final[dict[str, tuple[str, ...]]] = {
    "1.6": (
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "Reset",
        "GetConfiguration",
        "ChangeConfiguration",
        "SetChargingProfile",
        "ClearChargingProfile",
        "GetCompositeSchedule",
        "TriggerMessage",
        "ChangeAvailability",
        "UnlockConnector",
        "ReserveNow",
        "CancelReservation",
        "SendLocalList",
        "ClearCache",
        "DataTransfer",
        "UpdateFirmware",
        "GetDiagnostics",
    ),
    "2.0.1": (
        "RequestStartTransaction",
        "RequestStopTransaction",
        "Reset",
        "GetVariables",
        "SetVariables",
        "GetBaseReport",
        "SetChargingProfile",
        "ClearChargingProfile",
        "GetCompositeSchedule",
        "TriggerMessage",
        "ChangeAvailability",
        "UnlockConnector",
        "ReserveNow",
        "CancelReservation",
        "SendLocalList",
        "ClearCache",
        "DataTransfer",
        "UpdateFirmware",
        "GetLog",
    ),
}
#: 2.1 keeps 2.0.1's commands and adds tariffs (the ones a CSMS with 2.1 billing sends first).
BACKEND_COMMANDS["2.1"] = (*BACKEND_COMMANDS["2.0.1"], "SetDefaultTariff", "ChangeTransactionTariff")

MAX_FRAMES: Final = 400  # per session timeline
MAX_SESSIONS: Final = 200  # sessions with a timeline
MAX_DIFFS: Final = 500  # rows in the differences table
MAX_VALUE: Final = 600  # characters of a value or a raw frame

_CSS: Final = """
:root{--bad:#b42318;--bad-bg:#fef3f2;--ok:#067647;--ok-bg:#ecfdf3;--mute:#667085;--line:#e4e7ec;
--exp:#fff7e6;--act:#fdecec;--head:#f2f4f7}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#101828;
margin:0 auto;max-width:1200px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--line);
padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border:1px solid var(--line);padding:3px 7px;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.mono{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,"DejaVu Sans Mono",monospace;
font-size:12.5px}
pre{margin:0;white-space:pre-wrap;word-break:break-all}
.verdict{display:inline-block;padding:4px 12px;border-radius:14px;font-weight:700;margin:6px 0}
.verdict.fail{background:var(--bad-bg);color:var(--bad)}.verdict.pass{background:var(--ok-bg);color:var(--ok)}
.kv{width:auto}.kv th{width:190px}
.mute{color:var(--mute)}
table.cov{width:auto;min-width:60%}.cov td.n{min-width:190px}
.cov td.hit{background:#f6fef9}.cov td.bad{background:var(--bad-bg);color:var(--bad);font-weight:600}
.cov td.none{color:#98a2b3}
.kind{display:inline-block;padding:0 6px;border-radius:8px;background:#eef4ff;color:#3538cd;font-size:12px}
.kind.schema{background:#fdf2fa;color:#c11574}.kind.timeout,.kind.missing_call,.kind.unexpected_call,
.kind.call_error{background:var(--bad-bg);color:var(--bad)}
td.exp{background:var(--exp)}td.act{background:var(--act)}
tr.has-diff>td{background:#fffaeb}
tr.diffs>td{padding:4px 8px 10px 40px;background:#fcfcfd}
tr.diffs table{margin:0}
.dir{white-space:nowrap}
details{border:1px solid var(--line);border-radius:6px;margin:8px 0;padding:0 10px}
details>summary{cursor:pointer;padding:8px 0;font-weight:600}
details.bad>summary{color:var(--bad)}
.note{color:var(--mute);font-size:12.5px}
"""


def _e(text: object) -> str:
    """Traffic text for the page: control characters and bidi overrides shown as escapes (an
    RLO in a charge point id would otherwise reverse the rest of the line), then HTML-escaped."""
    return html.escape(escape_controls(str(text)), quote=True)


def _cut(text: str, limit: int = MAX_VALUE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(value: Any, *, raw: bool = False) -> str:
    """A JSON value as JSON (so "300" and 300 differ on the page); ``raw``: a plain message."""
    if value is None:
        return '<span class="mute">—</span>'
    text = str(value) if raw else json.dumps(value, ensure_ascii=False, default=str)
    return f"<pre>{_e(_cut(text))}</pre>"


def _version(s: SessionResult) -> str:
    return ocpp_version(s.subprotocol) or "?"


def _primary_frames(result: RunResult, s: SessionResult) -> tuple[LiveFrame, ...]:
    return s.frames_of("candidate" if result.kind == "compare" else "target")


def _diff_direction(d: Difference, by_seq: dict[int, LiveFrame]) -> str:
    if d.action is None:
        return CHARGER_TO_CSMS
    if d.kind in (DiffKind.MISSING_CALL, DiffKind.UNEXPECTED_CALL):
        return CSMS_TO_CHARGER
    f = by_seq.get(d.seq) if d.seq is not None else None
    if f is not None and f.direction == "to_cp" and f.message_type == MessageType.CALL:
        return CSMS_TO_CHARGER
    if f is None and d.seq is None:
        return CSMS_TO_CHARGER  # a schema violation of a call the recording does not have
    return CHARGER_TO_CSMS


def _backend_frames_by_seq(frames: Iterable[LiveFrame]) -> dict[int, LiveFrame]:
    return {f.recorded_seq: f for f in frames if f.direction == "to_cp" and f.recorded_seq is not None}


def coverage(result: RunResult) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(direction, action, version) -> (exchanges, differences), for the deciding side.

    An exchange is a CALL and its answer; it is counted by the CALL (the charger's for
    charger → CSMS, the backend's for CSMS → charger). Handshake and connection differences are
    counted under the action ``(connection)``.
    """
    exchanges: Counter[tuple[str, str, str]] = Counter()
    diffs: Counter[tuple[str, str, str]] = Counter()
    for s in result.sessions:
        version = _version(s)
        frames = _primary_frames(result, s)
        for f in frames:
            if f.message_type == MessageType.CALL and f.action:
                direction = CHARGER_TO_CSMS if f.direction == "to_csms" else CSMS_TO_CHARGER
                exchanges[(direction, f.action, version)] += 1
        by_seq = _backend_frames_by_seq(frames)
        for d in s.on(result.side):
            diffs[(_diff_direction(d, by_seq), d.action or CONNECTION, version)] += 1
    keys = set(exchanges) | set(diffs)
    return {k: (exchanges[k], diffs[k]) for k in keys}


def _coverage_section(result: RunResult) -> str:
    cov = coverage(result)
    versions = sorted({_version(s) for s in result.sessions}) or ["?"]
    rows: dict[str, set[str]] = defaultdict(set)
    for direction, action, _v in cov:
        rows[direction].add(action)
    for v in versions:
        rows[CSMS_TO_CHARGER].update(BACKEND_COMMANDS.get(v, ()))
    head = "".join(f'<th class="n">OCPP {_e(v)}</th>' for v in versions)
    out = [
        "<h2 id='coverage'>Coverage</h2>",
        "<p class='note'>Exchanges per action, direction and OCPP version, with their differences. "
        "Backend commands a CSMS commonly sends are listed even when this run did not exercise "
        "them (—).</p>",
        f"<table class='cov'><thead><tr><th>direction</th><th>action</th>{head}</tr></thead><tbody>",
    ]
    for direction in (CHARGER_TO_CSMS, CSMS_TO_CHARGER):
        actions = sorted(rows.get(direction, ()), key=lambda a: (a == CONNECTION, a))
        for i, action in enumerate(actions):
            cells = []
            for v in versions:
                n, d = cov.get((direction, action, v), (0, 0))
                known = action in BACKEND_COMMANDS.get(v, ()) or (n or d)
                if not known:
                    cells.append("<td class='n none'></td>")
                elif d:
                    cells.append(
                        f"<td class='n bad'>{n} exchange{'s' if n != 1 else ''} · "
                        f"{d} difference{'s' if d != 1 else ''}</td>"
                    )
                elif n:
                    cells.append(f"<td class='n hit'>{n} exchange{'s' if n != 1 else ''}</td>")
                else:
                    cells.append("<td class='n none'>—</td>")
            label = f"<th rowspan='{len(actions)}'>{_e(direction)}</th>" if i == 0 else ""
            out.append(f"<tr>{label}<td>{_e(action)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _kind(d: Difference) -> str:
    k = str(d.kind)
    return f"<span class='kind {_e(k)}'>{_e(k)}</span>"


_RECORDED: Final = ("recorded (expected)", "live (actual)")


def _labels(result: RunResult) -> tuple[str, str]:
    if result.kind == "compare":
        return "baseline (expected)", "candidate (actual)"
    return _RECORDED


def _diff_rows(
    diffs: Sequence[Difference],
    result: RunResult,
    *,
    with_session: bool,
    labels: tuple[str, str] | None = None,
) -> str:
    exp_label, act_label = labels or _labels(result)
    cols = "<th>session</th><th>charge point</th>" if with_session else ""
    out = [
        f"<table class='diff'><thead><tr>{cols}<th class='n'>seq</th><th>action</th><th>kind</th>"
        f"<th>path</th><th>{_e(exp_label)}</th><th>{_e(act_label)}</th></tr></thead><tbody>"
    ]
    for d in diffs:
        sess = f"<td class='n'>{d.session_id}</td><td>{_e(d.charge_point_id)}</td>" if with_session else ""
        expected = _value(d.expected)
        if d.kind is DiffKind.SCHEMA:
            expected = "<span class='mute'>valid per the OCPP schema</span>"
        out.append(
            f"<tr>{sess}<td class='n'>{'' if d.seq is None else d.seq}</td><td>{_e(d.action or '-')}</td>"
            f"<td>{_kind(d)}</td><td><code>{_e(d.path or '(message)')}</code></td>"
            f"<td class='exp'>{expected}</td>"
            f"<td class='act'>{_value(d.actual, raw=d.kind is DiffKind.SCHEMA)}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _group_rows(groups: Sequence[DiffGroup], result: RunResult) -> str:
    """Identical differences as one row each: how many, in which sessions and charge points."""
    exp_label, act_label = _labels(result)
    out = [
        "<table class='diff groups'><thead><tr><th class='n'>count</th><th>sessions</th>"
        "<th>charge points</th><th>action</th><th>kind</th><th>path</th>"
        f"<th>{_e(exp_label)}</th><th>{_e(act_label)}</th></tr></thead><tbody>"
    ]
    for g in groups:
        first = g.differences[0]
        expected = _value(g.expected)
        if g.kind is DiffKind.SCHEMA:
            expected = "<span class='mute'>valid per the OCPP schema</span>"
        cps = g.charge_points
        shown = ", ".join(cps[:8]) + (f", … ({len(cps)} in all)" if len(cps) > 8 else "")
        seq = f" <span class='mute'>seq {first.seq}</span>" if g.count == 1 and first.seq is not None else ""
        out.append(
            f"<tr><td class='n'>{g.count}</td><td>{_e(session_ranges(g.sessions))}{seq}</td>"
            f"<td>{_e(shown)}</td><td>{_e(g.action or '-')}</td>"
            f"<td>{_kind(first)}</td><td><code>{_e(g.path or '(message)')}</code></td>"
            f"<td class='exp'>{expected}</td>"
            f"<td class='act'>{_value(g.actual, raw=g.kind is DiffKind.SCHEMA)}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _summary_section(result: RunResult) -> str:
    gating = result.gating
    n = len(gating)
    compare = result.kind == "compare"
    if n:
        what = {"compare": "from the baseline", "shadow": "from production"}.get(
            result.kind, "from the recording"
        )
        verdict = f"<div class='verdict fail'>FAIL · {n} difference{'s' if n != 1 else ''} {what}</div>"
    else:
        verdict = "<div class='verdict pass'>PASS · no differences</div>"
    t = result.timing
    rows: list[tuple[str, str]] = [("kind", _e(result.kind))]
    if result.run_id is not None:
        rows.append(("run", str(result.run_id)))
    if compare:
        rows += [
            ("baseline", f"<code>{_e(result.baseline)}</code>"),
            ("candidate", f"<code>{_e(result.target)}</code>"),
        ]
    elif result.kind == "shadow":  # a live shadow: production's answers are the expected ones
        rows += [
            ("production", f"<code>{_e(result.baseline)}</code>"),
            ("shadow", f"<code>{_e(result.target)}</code>"),
        ]
    else:
        rows.append(("target", f"<code>{_e(result.target)}</code>"))
    rows += [
        ("started / ended", f"{_e(result.started_at)} / {_e(result.ended_at)}"),
        (
            "sessions",
            f"{len(result.sessions)} ({sum(1 for s in result.sessions if not s.on(result.side))} passed)",
        ),
        ("messages exchanged", str(result.messages)),
    ]
    if compare:
        base = len([d for d in result.differences if d.side == "baseline"])
        cand = len([d for d in result.differences if d.side == "candidate"])
        ignored = sum(1 for x in result.noise if not x.reported)
        rows += [
            ("candidate vs baseline", f"<b>{n}</b> difference{'s' if n != 1 else ''}"),
            ("against the recording", f"baseline {base}, candidate {cand}"),
            (
                "noise",
                f"{len(result.noise)} field{'s' if len(result.noise) != 1 else ''} learned, "
                f"{ignored} ignored ({_e(result.options.get('noise_runs', 0))} further baseline runs)",
            ),
        ]
    else:
        rows.append(("differences", f"<b>{n}</b>"))
    rows.append(
        (
            "scheduling lateness",
            f"p50 {t.p50 * 1000:.2f} ms · p99 {t.p99 * 1000:.2f} ms · max {t.max * 1000:.2f} ms "
            f"over {t.frames} frames",
        )
    )
    rows.append(
        (
            "held for causality",
            f"{t.held} frames · max {t.held_max * 1000:.2f} ms · total {t.held_total * 1000:.2f} ms"
            if t.held
            else "none",
        )
    )
    information = result.information
    if information:
        counts = Counter(str(d.kind) for d in information)
        rows.append(("information", ", ".join(f"{_e(k)} {v}" for k, v in sorted(counts.items()))))
    by_kind = Counter(str(d.kind) for d in gating)
    if by_kind:
        rows.append(("by kind", ", ".join(f"{_e(k)} {v}" for k, v in sorted(by_kind.items()))))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2 id='summary'>Summary</h2>{verdict}<table class='kv'>{body}</table>"


def _rewritten_section(result: RunResult) -> str:
    """The frames ``[[rewrite]]`` or a hook changed: recorded text beside the text sent."""
    rewritten = [r for r in result.options.get("rewritten", ()) if isinstance(r, dict)]
    if not rewritten:
        return ""
    n = len(rewritten)
    out = [
        "<h2 id='rewritten'>Rewritten frames</h2>",
        f"<p class='note'>{n} charger frame{'s' if n != 1 else ''} rewritten before "
        "sending (rules file <code>[[rewrite]]</code>, <code>--rewrite</code> hook), before id "
        "correlation and timestamp shifting.</p>",
        "<table><thead><tr><th class='n'>session</th><th class='n'>rec</th><th>action</th>"
        "<th>message</th><th>recorded</th><th>rewritten</th></tr></thead><tbody>",
    ]
    for r in rewritten[:MAX_FRAMES]:
        out.append(
            f"<tr><td class='n'>{_e(r.get('session_id'))}</td><td class='n'>{_e(r.get('seq'))}</td>"
            f"<td>{_e(r.get('action'))}</td><td>{_e(r.get('message'))}</td>"
            f"<td><pre>{_e(_cut(str(r.get('recorded')), 300))}</pre></td>"
            f"<td><pre>{_e(_cut(str(r.get('rewritten')), 300))}</pre></td></tr>"
        )
    out.append("</tbody></table>")
    if len(rewritten) > MAX_FRAMES:
        out.append(f"<p class='note'>{len(rewritten) - MAX_FRAMES} more in the JSON report.</p>")
    return "".join(out)


def _noise_section(result: RunResult) -> str:
    if result.kind != "compare":
        return ""
    out = ["<h2 id='noise'>Learned noise</h2>"]
    if not result.noise:
        out.append("<p class='note'>No field differed between the baseline runs.</p>")
        return "".join(out)
    out.append(
        "<p class='note'>Fields that differed between runs against the baseline. They are not "
        "reported as differences of the candidate unless they differ more than twice as often "
        "against it. <code>--save-rules</code> writes them as a rules file.</p>"
        "<table><thead><tr><th>OCPP</th><th>action</th><th>message</th><th>path</th>"
        "<th class='n'>between baseline runs</th><th class='n'>against the candidate</th><th></th>"
        "</tr></thead><tbody>"
    )
    for x in result.noise:
        status = (
            "<b style='color:var(--bad)'>reported</b>" if x.reported else "<span class='mute'>ignored</span>"
        )
        out.append(
            f"<tr><td>{_e(x.version or '-')}</td><td>{_e(x.action)}</td><td>{_e(x.message)}</td>"
            f"<td><code>{_e(x.path or '(message)')}</code></td>"
            f"<td class='n'>{x.baseline_diffs} of {x.baseline_compared}</td>"
            f"<td class='n'>{x.candidate_diffs} of {x.candidate_compared}</td><td>{status}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _frame_type(f: LiveFrame) -> str:
    return {2: "CALL", 3: "RESULT", 4: "ERROR"}.get(f.message_type or 0, "invalid")


def _timeline(result: RunResult, s: SessionResult) -> str:
    frames = _primary_frames(result, s)
    diffs = s.on(result.side)
    by_seq: dict[int | None, list[Difference]] = defaultdict(list)
    for d in diffs:
        by_seq[d.seq].append(d)
    # A difference belongs under the frame of the backend that stands for its recorded seq.
    out = [
        "<table class='timeline'><thead><tr><th class='n'>t (s)</th><th>direction</th><th class='n'>rec</th>"
        "<th>action</th><th>type</th><th>message</th></tr></thead><tbody>"
    ]
    shown = frames[:MAX_FRAMES]
    placed: set[int | None] = set()
    for f in shown:
        here: list[Difference] = []
        if f.direction == "to_cp" and f.recorded_seq in by_seq and f.recorded_seq not in placed:
            here = by_seq[f.recorded_seq]
            placed.add(f.recorded_seq)
        arrow = "charger → CSMS" if f.direction == "to_csms" else "CSMS → charger"
        cls = " class='has-diff'" if here else ""
        out.append(
            f"<tr{cls}><td class='n'>{f.elapsed:.3f}</td><td class='dir'>{arrow}</td>"
            f"<td class='n'>{'' if f.recorded_seq is None else f.recorded_seq}</td>"
            f"<td>{_e(f.action or '')}</td><td>{_frame_type(f)}</td>"
            f"<td><pre>{_e(_cut(f.raw, 300))}</pre></td></tr>"
        )
        if here:
            out.append(
                f"<tr class='diffs'><td colspan='6'>{_diff_rows(here, result, with_session=False)}</td></tr>"
            )
    out.append("</tbody></table>")
    if len(frames) > MAX_FRAMES:
        out.append(f"<p class='note'>{len(frames) - MAX_FRAMES} more frames not shown.</p>")
    rest = [d for d in diffs if d.seq not in placed]
    if rest:
        out.append(
            "<p class='note'>Differences without a live frame (handshake, missing calls, timeouts):</p>"
        )
        out.append(_diff_rows(rest, result, with_session=False))
    if result.kind == "compare":
        for side in ("baseline", "candidate"):
            vs = s.on(side)
            if vs:
                out.append(
                    f"<details><summary>{_e(side)} against the recording: {len(vs)} "
                    f"difference{'s' if len(vs) != 1 else ''}</summary>"
                    f"{_diff_rows(vs, result, with_session=False, labels=_RECORDED)}</details>"
                )
    return "".join(out)


def _sessions_section(result: RunResult) -> str:
    side = result.side
    ordered = sorted(result.sessions, key=lambda s: (not s.on(side), s.session_id))
    out = ["<h2 id='sessions'>Sessions</h2>"]
    for s in ordered[:MAX_SESSIONS]:
        n = len(s.on(side))
        frames = len(_primary_frames(result, s))
        state = f"{n} difference{'s' if n != 1 else ''}" if n else "no differences"
        err = f" · {_e(s.error)}" if s.error else ""
        out.append(
            f"<details class='{'bad' if n else 'ok'}'{' open' if n else ''}>"
            f"<summary>session {s.session_id} · {_e(s.charge_point_id)} · OCPP {_e(_version(s))} · "
            f"{frames} frames · {state}{err}</summary>{_timeline(result, s)}</details>"
        )
    if len(ordered) > MAX_SESSIONS:
        out.append(
            f"<p class='note'>{len(ordered) - MAX_SESSIONS} more sessions without a timeline here.</p>"
        )
    return "".join(out)


def html_report(result: RunResult) -> str:
    """The whole page, as text."""
    title = f"ocpp-replay {result.kind}" + (f" run {result.run_id}" if result.run_id is not None else "")
    if result.kind == "compare":
        subtitle = f"{result.baseline} (baseline) against {result.target} (candidate)"
    else:
        subtitle = f"replay against {result.target}"
    gating = result.gating
    diffs = ""
    if gating:
        groups = group_differences(gating)
        more = (
            f"<p class='note'>{len(groups) - MAX_DIFFS} more groups in the JSON report.</p>"
            if len(groups) > MAX_DIFFS
            else ""
        )
        n = len(gating)
        diffs = (
            "<h2 id='differences'>Differences</h2>"
            f"<p class='note'>{n} difference{'s' if n != 1 else ''}; identical ones (same action, kind, "
            f"path, expected and actual value) on one row: {len(groups)} "
            f"row{'s' if len(groups) != 1 else ''}. Each session's own are under Sessions.</p>"
            + _group_rows(groups[:MAX_DIFFS], result)
            + more
        )
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1><div class='mute'>{_e(subtitle)}</div>",
        _summary_section(result),
        _coverage_section(result),
        diffs,
        _noise_section(result),
        _rewritten_section(result),
        _sessions_section(result),
        "<p class='note'>Generated by ocpp-replay. Values from charger and backend traffic are shown "
        "as received (escaped).</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
