"""Compare an expected message with an actual one under rules → :class:`Change` records.

Pure. The expected side is what the capture recorded (or, when comparing two backends, the
baseline's answer); the actual side is what the live backend (the candidate) sent. The same
functions serve both uses: nothing here knows about sockets, sessions or runs.

Fast path: both payloads are normalised under the rules (ignored paths removed, presence
paths replaced by a token naming the JSON type) and compared as canonical JSON text; only when
that differs does deepdiff run, to say where.

:func:`schema_changes` turns the violations of a live payload against the official OCPP schema
(:mod:`ocpp_replay.core.schemas`) into ``schema`` changes: path and message, ``expected`` null.

Paths in changes use the syntax of :mod:`ocpp_replay.core.paths` (``idTagInfo.status``,
``meterValue[0].timestamp``), so one can be pasted into a rules file to silence it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from deepdiff import DeepDiff

from ocpp_replay.core import schemas
from ocpp_replay.core.frames import Call, CallError, CallResult
from ocpp_replay.core.paths import format_path, get, rewrite
from ocpp_replay.core.rules import Mode, PathRule

__all__ = [
    "INFORMATIONAL",
    "Change",
    "DiffKind",
    "Difference",
    "compare_answers",
    "compare_calls",
    "compare_payloads",
    "normalise",
    "schema_changes",
]


class DiffKind(StrEnum):
    CHANGED = "changed"
    ADDED = "added"
    REMOVED = "removed"
    TYPE_CHANGED = "type_changed"
    CALL_ERROR = "call_error"
    TIMEOUT = "timeout"
    MISSING_CALL = "missing_call"
    UNEXPECTED_CALL = "unexpected_call"
    SCHEMA = "schema"  # a live message that violates the official OCPP JSON schema
    UNEXPECTED_ANSWER = "unexpected_answer"  # an answer of the backend to an id nobody sent
    OPTIONAL_CALL_MISSING = "optional_call_missing"  # information: a backend call marked optional
    CALL_AFTER_END = "call_after_end"  # a call the recording lacks, after its recorded end


#: Kinds that are information, not differences: they never decide the exit status.
#: ``call_after_end`` does when the run asks for it (``--strict-end``, :attr:`RunResult.gating`).
INFORMATIONAL: frozenset[DiffKind] = frozenset({DiffKind.OPTIONAL_CALL_MISSING, DiffKind.CALL_AFTER_END})


@dataclass(frozen=True, slots=True)
class Change:
    """One way the actual message differs from the expected one."""

    kind: DiffKind
    path: str
    expected: Any
    actual: Any


@dataclass(frozen=True, slots=True)
class Difference:
    """A change in context: which session, which recorded frame, which action.

    ``seq`` is the recorded frame the difference is about (the recorded answer, or the
    recorded backend CALL); None for a call the recording does not have. ``side`` says which
    backend answered (``target`` for a replay; ``baseline``/``candidate`` when comparing).
    """

    session_id: int
    charge_point_id: str
    seq: int | None
    action: str | None
    kind: DiffKind
    path: str
    expected: Any
    actual: Any
    side: str = "target"

    @classmethod
    def of(
        cls,
        change: Change,
        *,
        session_id: int,
        charge_point_id: str,
        seq: int | None,
        action: str | None,
        side: str = "target",
    ) -> Difference:
        return cls(
            session_id,
            charge_point_id,
            seq,
            action,
            change.kind,
            change.path,
            change.expected,
            change.actual,
            side,
        )

    def sort_key(self) -> tuple[int, int, str, str]:
        """Report order: handshake first, then in recorded order; differences without a
        recorded frame last."""
        return (
            0 if self.path.startswith("handshake.") else 1,
            self.seq if self.seq is not None else 1 << 62,
            str(self.kind),
            self.path,
        )

    def as_dict(self) -> dict[str, Any]:
        """The report's form: seq, action, kind, path, expected, actual."""
        return {
            "seq": self.seq,
            "action": self.action,
            "kind": str(self.kind),
            "path": self.path,
            "expected": self.expected,
            "actual": self.actual,
        }


_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
_TOKEN = "\x00present:"


def _type_name(value: Any) -> str:
    return "null" if value is None else _TYPES.get(type(value), type(value).__name__)


#: What an ignored list item becomes: removing it would shift the items after it, and the
#: differences found there would name the wrong index (and the wrong values).
_IGNORED = "\x00ignored"


def _is_ignored(value: Any) -> bool:
    return isinstance(value, str) and value == _IGNORED


def _drop_ignored_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_ignored_keys(v) for k, v in value.items() if not _is_ignored(v)}
    if isinstance(value, list):
        return [_drop_ignored_keys(v) for v in value]
    return value


def normalise(payload: Any, rules: Sequence[PathRule]) -> Any:
    """The payload with ignored paths removed and presence paths replaced by a type token.

    An ignored key is removed; an ignored list item is replaced by a placeholder, so that the
    items after it keep their index.
    """
    ignored = False
    for rule in rules:
        if rule.mode is Mode.IGNORE:
            before = payload
            payload = rewrite(payload, rule.path, lambda _v: _IGNORED)
            ignored = ignored or payload is not before
        else:
            payload = rewrite(payload, rule.path, lambda v: _TOKEN + _type_name(v))
    if _is_ignored(payload):
        return None  # the whole message is ignored
    return _drop_ignored_keys(payload) if ignored else payload


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _same(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal, types included (1, 1.0 and true differ), by their
    canonical texts: orjson's (~1 us for a MeterValues payload, against ~8 for the json module's),
    the json module's where orjson cannot tell (integers past 64 bits, NaN and the infinities,
    which it writes as null)."""
    try:
        text_a = orjson.dumps(a, option=orjson.OPT_SORT_KEYS)
        text_b = orjson.dumps(b, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is one
        return _canonical(a) == _canonical(b)
    if text_a != text_b:
        return False
    return b"null" not in text_a or _canonical(a) == _canonical(b)


_KINDS = {
    "values_changed": DiffKind.CHANGED,
    "type_changes": DiffKind.TYPE_CHANGED,
    "dictionary_item_added": DiffKind.ADDED,
    "iterable_item_added": DiffKind.ADDED,
    "dictionary_item_removed": DiffKind.REMOVED,
    "iterable_item_removed": DiffKind.REMOVED,
}

_MISSING = object()


def compare_payloads(expected: Any, actual: Any, rules: Sequence[PathRule] = ()) -> list[Change]:
    """How ``actual`` differs from ``expected`` under the rules; [] when it does not."""
    exp_n = normalise(expected, rules)
    act_n = normalise(actual, rules)
    if _same(exp_n, act_n):
        return []
    tree = DeepDiff(exp_n, act_n, ignore_order=False, verbose_level=2, view="tree")
    changes: list[Change] = []
    skipped = False
    for report_type, kind in _KINDS.items():
        for level in tree.get(report_type, ()):
            if _is_ignored(level.t1) or _is_ignored(level.t2):
                skipped = True
                continue  # an ignored list item that only one side has
            keys = tuple(level.path(output_format="list"))
            before = get(expected, keys, _MISSING)
            after = get(actual, keys, _MISSING)
            k = kind
            t1, t2 = level.t1, level.t2
            both_tokens = isinstance(t1, str) and isinstance(t2, str) and t1.startswith(_TOKEN)
            if k is DiffKind.CHANGED and both_tokens and t2.startswith(_TOKEN):
                k = DiffKind.TYPE_CHANGED
            # A list item only on one side: the other side's item at that index (if the list is
            # longer there) is another item, not this one.
            if k is DiffKind.ADDED:
                before = _MISSING
            elif k is DiffKind.REMOVED:
                after = _MISSING
            changes.append(
                Change(
                    k,
                    format_path(keys),
                    None if before is _MISSING else before,
                    None if after is _MISSING else after,
                )
            )
    changes.sort(key=lambda c: c.path)
    if not changes and not skipped:  # deepdiff saw something the canonical text did not explain
        changes.append(Change(DiffKind.CHANGED, "", expected, actual))
    return changes


def _error_dict(frame: CallError) -> dict[str, Any]:
    return {
        "errorCode": frame.error_code,
        "errorDescription": frame.error_description,
        "errorDetails": frame.error_details,
    }


def compare_answers(
    expected: CallResult | CallError | str | None,
    actual: CallResult | CallError | str | None,
    rules: Sequence[PathRule] = (),
) -> list[Change]:
    """Compare the answer to a CALL (None: no answer; str: raw text that is not OCPP-J).

    A CALLERROR where a CALLRESULT was expected (or the reverse) is one ``call_error`` change;
    two CALLERRORs are compared by error code (descriptions are free text). No actual answer
    where one was expected is a ``timeout``.
    """
    if expected is None:
        return []
    if actual is None:
        exp = expected.payload if isinstance(expected, CallResult) else expected
        if isinstance(exp, CallError):
            exp = _error_dict(exp)
        return [Change(DiffKind.TIMEOUT, "", exp, None)]
    if isinstance(expected, str) or isinstance(actual, str):
        if isinstance(expected, str) and isinstance(actual, str) and expected == actual:
            return []
        e = expected if isinstance(expected, str) else _describe(expected)
        a = actual if isinstance(actual, str) else _describe(actual)
        return [Change(DiffKind.CHANGED, "", e, a)]
    if isinstance(expected, CallResult) and isinstance(actual, CallResult):
        return compare_payloads(expected.payload, actual.payload, rules)
    if isinstance(expected, CallError) and isinstance(actual, CallError):
        if expected.error_code == actual.error_code:
            return []
        return [Change(DiffKind.CALL_ERROR, "errorCode", expected.error_code, actual.error_code)]
    return [Change(DiffKind.CALL_ERROR, "", _describe(expected), _describe(actual))]


def _describe(frame: CallResult | CallError) -> Any:
    return frame.payload if isinstance(frame, CallResult) else _error_dict(frame)


def compare_calls(expected: Call, actual: Call, rules: Sequence[PathRule] = ()) -> list[Change]:
    """Compare a backend's CALL with the expected one (same action) by payload."""
    return compare_payloads(expected.payload, actual.payload, rules)


def schema_changes(version: str | None, action: str | None, payload: Any, *, response: bool) -> list[Change]:
    """The ``schema`` changes of a live payload: one per violation (path, message as ``actual``).

    Nothing for an unknown OCPP version. A response to an action the schemas do not know is
    not checked (the charger asked something non-standard; the answer cannot be judged); a
    request (a backend CALL) with an unknown action is one violation, "unknown action".
    """
    if version not in schemas.VERSIONS or action is None:
        return []
    if response and action not in schemas.actions(version, response=True):
        return []
    if not isinstance(payload, dict):
        return [Change(DiffKind.SCHEMA, "", None, "payload is not a JSON object")]
    return [
        Change(DiffKind.SCHEMA, v.path, None, v.message)
        for v in schemas.validate(version, action, payload, response=response)
    ]
