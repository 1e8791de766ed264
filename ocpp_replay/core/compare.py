"""Compare two runs of the same sessions message by message, and learn noise. Pure.

``ocpp-replay compare`` replays the same sessions against a baseline and a candidate backend
(:func:`ocpp_replay.replay.runner.run_compare` does the I/O); this module turns the two
:class:`~ocpp_replay.core.results.RunResult` objects into the candidate's differences::

    baseline run ──┐                       ┌─ learn_noise (baseline vs baseline runs)
                   ├─ compare_runs ─> Pairing per session (findings, messages compared)
    candidate run ─┘                       └─ compare_result: one RunResult, kind "compare"

**Pairing.** A backend message is identified by the recorded frame it stands for: the live
answer to a charger CALL carries the recorded answer's seq, a live backend CALL the seq of the
recorded CALL it was matched with (``LiveFrame.recorded_seq``). Messages of the two runs with
the same recorded seq are compared with :func:`ocpp_replay.core.diff.compare_answers` /
:func:`~ocpp_replay.core.diff.compare_payloads` under the rules, after correlation: each backend
assigns its own transaction ids etc., so a :class:`~ocpp_replay.core.correlate.Correlator` per charge
point learns baseline → candidate values from the answers that assign them, exactly as a replay
learns recorded → live values. A message only the baseline has is a ``timeout`` (an answer) or a
``missing_call`` (a backend CALL); one only the candidate has is ``changed`` (an answer where
the baseline gave none) or ``unexpected_call``. Backend CALLs the recording does not have are
paired by action, in order. Handshake and connection differences, and schema violations, come
from each run's differences against the recording: the candidate's that the baseline does not
share are reported.

**Noise.** A field is identified by (OCPP version, action, message, path). Comparing the
baseline's first run with each further baseline run gives, per field, how many paired messages
differed there out of how many were compared: its baseline rate. A field with a baseline rate
above 0 is noise, and its candidate differences are not reported, unless its candidate rate is
more than :data:`~ocpp_replay.core.results.NOISE_FACTOR` times the baseline rate (see
:attr:`~ocpp_replay.core.results.NoiseField.reported`). :func:`noise_rules_toml` writes the noise as
a rules file that ``--rules`` reads.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ocpp_replay.core.correlate import Correlator, Message, ocpp_version
from ocpp_replay.core.diff import Change, Difference, DiffKind, compare_answers, compare_payloads
from ocpp_replay.core.frames import Call, CallError, CallResult, MessageType, parse
from ocpp_replay.core.paths import format_path, parse_path
from ocpp_replay.core.results import COMPARE_SIDE, LiveFrame, NoiseField, RunResult, SessionResult
from ocpp_replay.core.rules import RuleSet
from ocpp_replay.core.text import toml_string
from ocpp_replay.errors import InvalidFrame

__all__ = [
    "FieldKey",
    "Finding",
    "Pairing",
    "compare_result",
    "compare_runs",
    "compare_sessions",
    "learn_noise",
    "noise_rules_toml",
]

#: (OCPP version, action, message, path): what noise is learned for.
FieldKey = tuple[str | None, str, str, str]


@dataclass(frozen=True, slots=True)
class Finding:
    """One way the candidate's message differs from the baseline's."""

    seq: int | None  # the recorded frame both messages stand for (None: a call the recording lacks)
    action: str | None
    message: Message  # response: an answer of the backend; request: a CALL of the backend
    change: Change

    def key(self, version: str | None) -> FieldKey:
        return (version, self.action or "-", str(self.message), self.change.path)


@dataclass(frozen=True, slots=True)
class Pairing:
    """The findings of one session and the messages compared per (action, message)."""

    session_id: int
    version: str | None
    findings: tuple[Finding, ...]
    compared: Mapping[tuple[str, str], int]

    def compared_actions(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (action, _message), n in self.compared.items():
            out[action] += n
        return dict(out)


@dataclass(frozen=True, slots=True)
class _Msg:
    action: str | None
    message: Message
    frame: Call | CallResult | CallError | str


def _parse(f: LiveFrame) -> _Msg:
    message = Message.REQUEST if f.message_type == MessageType.CALL else Message.RESPONSE
    try:
        frame: Call | CallResult | CallError | str = parse(f.raw)
    except InvalidFrame:
        frame = f.raw
    return _Msg(f.action, message, frame)


def _backend_messages(
    frames: Iterable[LiveFrame],
) -> tuple[dict[int, _Msg], dict[str, list[_Msg]]]:
    """Messages from the backend by recorded seq, and its calls the recording lacks by action."""
    by_seq: dict[int, _Msg] = {}
    extra: dict[str, list[_Msg]] = defaultdict(list)
    for f in frames:
        if f.direction != "to_cp":
            continue
        if f.recorded_seq is not None:
            by_seq.setdefault(f.recorded_seq, _parse(f))
        elif f.message_type == MessageType.CALL and f.action is not None:
            extra[f.action].append(_parse(f))
    return by_seq, extra


def _describe(frame: Call | CallResult | CallError | str) -> Any:
    if isinstance(frame, Call | CallResult):
        return frame.payload
    if isinstance(frame, CallError):
        return {
            "errorCode": frame.error_code,
            "errorDescription": frame.error_description,
            "errorDetails": frame.error_details,
        }
    return frame


def _pair(
    base: _Msg, cand: _Msg, version: str | None, rules: RuleSet, correlator: Correlator
) -> list[Change]:
    action, message = base.action, base.message
    b, c = base.frame, cand.frame
    if isinstance(b, Call) and isinstance(c, Call):
        correlator.learn(action, Message.REQUEST, b.payload, c.payload)
        expected = correlator.apply(action, Message.REQUEST, b.payload)
        return compare_payloads(expected, c.payload, rules.for_message(version, action, message, correlator))
    if isinstance(b, Call) or isinstance(c, Call):
        if isinstance(b, str) and isinstance(c, str) and b == c:
            return []
        return [Change(DiffKind.CHANGED, "", _describe(b), _describe(c))]
    if isinstance(b, CallResult) and isinstance(c, CallResult):
        correlator.learn(action, Message.RESPONSE, b.payload, c.payload)
        payload = correlator.apply(action, Message.RESPONSE, b.payload)
        if payload is not b.payload:
            b = CallResult(b.unique_id, payload)
    return compare_answers(b, c, rules.for_message(version, action, Message.RESPONSE, correlator))


def _structural(s: SessionResult, side: str) -> dict[str, tuple[Any, Any, DiffKind, int | None, str | None]]:
    """Handshake and connection differences against the recording: path -> (recorded, live, ...)."""
    out: dict[str, tuple[Any, Any, DiffKind, int | None, str | None]] = {}
    for d in s.differences:
        if d.side == side and (d.path.startswith("handshake.") or d.path == "connection"):
            out.setdefault(d.path, (d.expected, d.actual, d.kind, d.seq, d.action))
    return out


def _schema(s: SessionResult, side: str) -> list[Difference]:
    return [d for d in s.differences if d.side == side and d.kind is DiffKind.SCHEMA]


def compare_sessions(
    base: SessionResult,
    cand: SessionResult,
    rules: RuleSet,
    correlator: Correlator | None = None,
    *,
    base_side: str = "target",
    cand_side: str = "target",
) -> Pairing:
    """The candidate's session against the baseline's, message by message (see the module doc).

    ``correlator`` carries baseline → candidate values across sessions of one charge point.
    ``base_side``/``cand_side``: the side names of the frames and differences in each.
    """
    version = ocpp_version(base.subprotocol or cand.subprotocol)
    correlator = correlator if correlator is not None else rules.correlator(version)
    b_seq, b_extra = _backend_messages(base.frames_of(base_side))
    c_seq, c_extra = _backend_messages(cand.frames_of(cand_side))
    findings: list[Finding] = []
    compared: Counter[tuple[str, str]] = Counter()
    for seq in sorted(set(b_seq) | set(c_seq)):
        bm, cm = b_seq.get(seq), c_seq.get(seq)
        ref = bm or cm
        assert ref is not None
        compared[(ref.action or "-", str(ref.message))] += 1
        request = ref.message is Message.REQUEST
        if bm is None:
            assert cm is not None
            kind = DiffKind.UNEXPECTED_CALL if request else DiffKind.CHANGED
            changes = [Change(kind, "", None, _describe(cm.frame))]
        elif cm is None:
            kind = DiffKind.MISSING_CALL if request else DiffKind.TIMEOUT
            changes = [Change(kind, "", _describe(bm.frame), None)]
        else:
            changes = _pair(bm, cm, version, rules, correlator)
        findings.extend(Finding(seq, ref.action, ref.message, ch) for ch in changes)
    for action in sorted(set(b_extra) | set(c_extra)):
        bl, cl = b_extra.get(action, []), c_extra.get(action, [])
        for i in range(max(len(bl), len(cl))):
            compared[(action, str(Message.REQUEST))] += 1
            if i >= len(cl):
                changes = [Change(DiffKind.MISSING_CALL, "", _describe(bl[i].frame), None)]
            elif i >= len(bl):
                changes = [Change(DiffKind.UNEXPECTED_CALL, "", None, _describe(cl[i].frame))]
            else:
                changes = _pair(bl[i], cl[i], version, rules, correlator)
            findings.extend(Finding(None, action, Message.REQUEST, ch) for ch in changes)
    # Handshake and connection: what each backend did, where it is not what the recording had.
    b_struct, c_struct = _structural(base, base_side), _structural(cand, cand_side)
    for path in sorted(set(b_struct) | set(c_struct)):
        b_info, c_info = b_struct.get(path), c_struct.get(path)
        info = c_info or b_info
        assert info is not None
        b_val = b_info[1] if b_info is not None else info[0]
        c_val = c_info[1] if c_info is not None else info[0]
        if b_val != c_val:
            change = Change(DiffKind.CHANGED, path, b_val, c_val)
            findings.append(Finding(info[3], info[4], Message.RESPONSE, change))
    # Schema violations the candidate has and the baseline has not.
    b_schema = {(d.seq, d.action, d.path, d.actual) for d in _schema(base, base_side)}
    for d in _schema(cand, cand_side):
        if (d.seq, d.action, d.path, d.actual) in b_schema:
            continue
        msg = c_seq.get(d.seq) if d.seq is not None else None
        message = (
            Message.REQUEST if d.seq is None or (msg and msg.message is Message.REQUEST) else Message.RESPONSE
        )
        findings.append(Finding(d.seq, d.action, message, Change(DiffKind.SCHEMA, d.path, None, d.actual)))
    return Pairing(base.session_id, version, tuple(findings), dict(compared))


def compare_runs(
    baseline: RunResult,
    candidate: RunResult,
    rules: RuleSet,
    *,
    base_side: str = "target",
    cand_side: str = "target",
) -> list[Pairing]:
    """Pair the sessions of two runs by session id (in the baseline's order) and compare each."""
    cand_by_id = {s.session_id: s for s in candidate.sessions}
    correlators: dict[str, Correlator] = {}
    out: list[Pairing] = []
    for base in baseline.sessions:
        cand = cand_by_id.get(base.session_id)
        if cand is None:
            continue
        version = ocpp_version(base.subprotocol)
        correlator = correlators.setdefault(base.charge_point_id, rules.correlator(version))
        out.append(compare_sessions(base, cand, rules, correlator, base_side=base_side, cand_side=cand_side))
    return out


def _count(pairings: Iterable[Pairing]) -> tuple[Counter[FieldKey], Counter[tuple[str | None, str, str]]]:
    """(field -> messages that differed there), ((version, action, message) -> messages compared)."""
    diffs: Counter[FieldKey] = Counter()
    compared: Counter[tuple[str | None, str, str]] = Counter()
    for p in pairings:
        for (action, message), n in p.compared.items():
            compared[(p.version, action, message)] += n
        seen: set[tuple[int | None, FieldKey]] = set()
        for f in p.findings:
            key = f.key(p.version)
            if (f.seq, key) not in seen:  # a message counts once per field
                seen.add((f.seq, key))
                diffs[key] += 1
    return diffs, compared


def learn_noise(baseline: RunResult, again: Sequence[RunResult], rules: RuleSet) -> tuple[NoiseField, ...]:
    """The fields that differ between the baseline run and further runs against the baseline."""
    pairings = [p for other in again for p in compare_runs(baseline, other, rules)]
    diffs, compared = _count(pairings)
    return tuple(
        NoiseField(key[0], key[1], key[2], key[3], n, compared[key[:3]])
        for key, n in sorted(diffs.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], str(kv[0][0])))
    )


def _relabel(s: SessionResult, side: str) -> SessionResult:
    return replace(
        s,
        differences=tuple(replace(d, side=side) for d in s.differences),
        frames=tuple(replace(f, side=side) for f in s.frames),
    )


def compare_result(
    baseline: RunResult,
    candidate: RunResult,
    rules: RuleSet,
    *,
    again: Sequence[RunResult] = (),
    options: Mapping[str, Any] | None = None,
) -> RunResult:
    """The compare run: candidate against baseline (noise learned from ``again``), each against
    the recording, both sides' frames. Inputs are plain replay results (side ``target``)."""
    noise = learn_noise(baseline, again, rules)
    pairings = {p.session_id: p for p in compare_runs(baseline, candidate, rules)}
    cand_diffs, cand_compared = _count(pairings.values())
    noise = tuple(
        replace(
            n,
            candidate_diffs=cand_diffs.get((n.version, n.action, n.message, n.path), 0),
            candidate_compared=cand_compared.get((n.version, n.action, n.message), 0),
        )
        for n in noise
    )
    quiet = {(n.version, n.action, n.message, n.path) for n in noise if not n.reported}
    cand_by_id = {s.session_id: s for s in candidate.sessions}
    sessions: list[SessionResult] = []
    for b in baseline.sessions:
        c = cand_by_id.get(b.session_id)
        if c is None:
            continue
        pairing = pairings[b.session_id]
        diffs = [
            Difference.of(
                f.change,
                session_id=b.session_id,
                charge_point_id=b.charge_point_id,
                seq=f.seq,
                action=f.action,
                side=COMPARE_SIDE,
            )
            for f in pairing.findings
            if f.key(pairing.version) not in quiet
        ]
        bl, cl = _relabel(b, "baseline"), _relabel(c, "candidate")
        sessions.append(
            SessionResult(
                session_id=c.session_id,
                charge_point_id=c.charge_point_id,
                subprotocol=c.subprotocol,
                started_at=c.started_at,
                ended_at=c.ended_at,
                differences=(*sorted(diffs, key=Difference.sort_key), *bl.differences, *cl.differences),
                compared=pairing.compared_actions(),
                frames=(*bl.frames, *cl.frames),
                lateness=(*b.lateness, *c.lateness),
                held=b.held + c.held,
                held_seconds=(*b.held_seconds, *c.held_seconds),
                error=c.error or b.error,
                close_code=c.close_code,
            )
        )
    opts = dict(options or {})
    opts.setdefault("noise_runs", len(again))
    return RunResult(
        target=candidate.target,
        started_at=min(baseline.started_at, candidate.started_at),
        ended_at=max(baseline.ended_at, candidate.ended_at, *(r.ended_at for r in again)),
        sessions=tuple(sessions),
        options=opts,
        kind="compare",
        baseline=baseline.target,
        noise=noise,
    )


def _toml_str(text: str) -> str:
    """A TOML basic string; DEL, bidi overrides and other invisible characters escaped."""
    return toml_string(text)


def noise_rules_toml(noise: Iterable[NoiseField], *, runs: int | None = None) -> str:
    """A rules file (see :mod:`ocpp_replay.core.rules`) that ignores the fields learned as noise.

    Fields still reported (they differ much more often against the candidate) are left out, and
    so are whole-message differences (path ``""``: timeouts, missing calls), which no path rule
    can silence.
    """
    groups: dict[tuple[str | None, str, str], list[NoiseField]] = defaultdict(list)
    skipped: list[NoiseField] = []
    for n in noise:
        ok = bool(n.path) and n.action != "-"
        if ok:
            try:
                ok = format_path(parse_path(n.path)) == n.path
            except Exception:
                ok = False
        if n.reported or not ok:
            skipped.append(n)
            continue
        groups[(n.version, n.action, n.message)].append(n)
    lines = [
        "# Noise learned by `ocpp-replay compare`"
        + (f" from {runs} further baseline run{'s' if runs != 1 else ''}" if runs is not None else "")
        + ":",
        "# fields that differed between runs against the same backend. Load with --rules.",
        "",
    ]
    for (version, action, message), fields in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        lines.append("[[rule]]")
        lines.append(f"action = {_toml_str(action)}")
        lines.append(f"message = {_toml_str(message)}")
        if version is not None:
            lines.append(f"ocpp = {_toml_str(version)}")
        lines.append("ignore = [")
        for n in fields:
            lines.append(
                f"    {_toml_str(n.path)},  # differed in {n.baseline_diffs} of {n.baseline_compared}"
            )
        lines.append("]")
        lines.append("")
    for n in skipped:
        why = "still reported against the candidate" if n.reported else "no path rule can silence it"
        lines.append(f"# not written: {_toml_str(n.action)} {n.message} {_toml_str(n.path)}: {why}")
    return "\n".join(lines).rstrip("\n") + "\n"
