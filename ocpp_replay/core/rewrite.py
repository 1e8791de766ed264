"""Rewriting the charger's frames for another environment before a replay sends them. Pure.

Staging rarely knows production's idTags or charge point ids. A rules file maps values at a path
of an action's outgoing frames (the charger's CALLs, ``request``, and its answers to the
backend's CALLs, ``response``), exactly or by pattern::

    [[rewrite]]
    action = "Authorize"             # or "*" (the default): every action
    message = "request"              # request | response (default: both)
    path = "idTag"                   # a payload path, as in [[rule]] ([*] and * as wildcards)
    values = { ACE0177305 = "STAGING-01", ACE0177306 = "STAGING-02" }   # exact values

    [[rewrite]]
    path = "idTagInfo.parentIdTag"
    pattern = "^ACE(\\d+)$"          # a Python regular expression over the whole value
    replace = "STG\\1"               # its replacement (\\1: the first group)

For anything else a hook (``--rewrite module:function``) gets ``(action, message, payload)`` after
the rules and returns the payload to send, or None to keep it. :func:`rewrite_plans` applies both
to replay plans; what it changed is listed for the reports, recorded text beside sent text.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ocpp_replay.core.correlate import Message
from ocpp_replay.core.frames import Call, CallResult, dump
from ocpp_replay.core.paths import Path, parse_path
from ocpp_replay.core.paths import rewrite as rewrite_at
from ocpp_replay.core.schedule import SessionPlan
from ocpp_replay.errors import ConfigError, OcppReplayError

__all__ = ["Hook", "RewriteRule", "Rewriter", "parse_rewrites", "rewrite_plans"]

#: ``(action, "request" | "response", payload) -> new payload | None``.
Hook = Callable[[str, str, dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class RewriteRule:
    action: str  # "*": every action
    message: Message | None  # None: requests and responses
    path: Path
    values: Mapping[str, Any]
    pattern: re.Pattern[str] | None = None
    replacement: str = ""

    def applies(self, action: str, message: Message) -> bool:
        return self.action in ("*", action) and self.message in (None, message)

    def value(self, old: Any) -> Any:
        """The new value for OLD (OLD itself, the same object, when nothing maps it)."""
        if isinstance(old, (dict, list)) or old is None:
            return old
        key = old if isinstance(old, str) else dump_scalar(old)
        if key in self.values:
            return self.values[key]
        if self.pattern is not None and isinstance(old, str):
            match = self.pattern.fullmatch(old)
            if match is not None:
                return match.expand(self.replacement)
        return old


def dump_scalar(value: Any) -> str:
    """A number or boolean as its JSON text, the key a ``values`` table matches it by."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class Rewriter:
    """The rewrite rules of a rules file and an optional hook, applied in that order."""

    rules: tuple[RewriteRule, ...] = ()
    hook: Hook | None = None
    hook_name: str = ""

    @property
    def empty(self) -> bool:
        return not self.rules and self.hook is None

    def payload(self, action: str, message: Message, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload to send; PAYLOAD itself when nothing changed it. Raises ConfigError when
        the hook fails or returns something other than a JSON object or None."""
        out = payload
        for rule in self.rules:
            if rule.applies(action, message):
                out = rewrite_at(out, rule.path, rule.value)
        if self.hook is not None:
            try:
                new = self.hook(action, str(message), out)
            except OcppReplayError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"rewrite hook {self.hook_name or '?'} failed on {action} {message}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if new is not None:
                if not isinstance(new, dict):
                    raise ConfigError(
                        f"rewrite hook {self.hook_name or '?'} returned {type(new).__name__} for "
                        f"{action} {message}: expected a dict (the payload) or None"
                    )
                if new != out:
                    out = new
        return out


def rewrite_plans(
    plans: Sequence[SessionPlan], rewriter: Rewriter | None
) -> tuple[list[SessionPlan], list[dict[str, Any]]]:
    """The plans with the charger's outgoing frames rewritten, and what was rewritten:
    ``{session_id, seq, action, message, recorded, rewritten}`` per changed frame, recorded text
    beside the text the replay sends (before id correlation and timestamp shifting)."""
    if rewriter is None or rewriter.empty:
        return list(plans), []
    changed: list[dict[str, Any]] = []
    out = []

    def note(seq: int, action: str, message: Message, recorded: str | bytes, new: str, sid: int) -> None:
        text = recorded if isinstance(recorded, str) else recorded.decode("utf-8", "replace")
        changed.append(
            {"session_id": sid, "seq": seq, "action": action, "message": str(message), "recorded": text}
            | {"rewritten": new}
        )

    for plan in plans:
        steps = []
        for step in plan.steps:
            call = step.call
            if call is not None:
                payload = rewriter.payload(call.action, Message.REQUEST, call.payload)
                if payload is not call.payload:
                    new_call = Call(call.unique_id, call.action, payload)
                    text = dump(new_call)
                    note(step.seq, call.action, Message.REQUEST, step.raw, text, plan.session_id)
                    step = replace(step, call=new_call, raw=text)
            steps.append(step)
        backend_calls = []
        for bc in plan.backend_calls:
            answer = bc.answer
            if isinstance(answer, CallResult) and bc.answer_seq is not None:
                payload = rewriter.payload(bc.call.action, Message.RESPONSE, answer.payload)
                if payload is not answer.payload:
                    new_answer = CallResult(answer.unique_id, payload)
                    note(
                        bc.answer_seq,
                        bc.call.action,
                        Message.RESPONSE,
                        dump(answer),
                        dump(new_answer),
                        plan.session_id,
                    )
                    bc = replace(bc, answer=new_answer)
            backend_calls.append(bc)
        out.append(replace(plan, steps=tuple(steps), backend_calls=tuple(backend_calls)))
    return out, changed


def parse_rewrites(text: str, *, source: str = "rules") -> tuple[RewriteRule, ...]:
    """The ``[[rewrite]]`` entries of a TOML rules file. Raises ConfigError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    entries = doc.get("rewrite", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: [[rewrite]] must be an array of tables")
    rules = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}: rewrite {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table")
        bad = set(entry) - {"action", "message", "path", "values", "pattern", "replace"}
        if bad:
            raise ConfigError(f"{where}: unknown key {sorted(bad)[0]!r}")
        action = entry.get("action", "*")
        if not isinstance(action, str) or not action:
            raise ConfigError(f"{where}: action must be an action name or '*'")
        message = entry.get("message")
        if message not in (None, "request", "response"):
            raise ConfigError(f"{where}: message must be request or response, not {message!r}")
        path_text = entry.get("path")
        if not isinstance(path_text, str) or not path_text:
            raise ConfigError(f"{where}: path missing")
        try:
            path = parse_path(path_text)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if not path:
            raise ConfigError(f"{where}: path must name a value inside the payload")
        values = entry.get("values", {})
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: values must be a table of old = new")
        pattern = entry.get("pattern")
        replacement = entry.get("replace")
        compiled = None
        if pattern is not None or replacement is not None:
            if not isinstance(pattern, str) or not isinstance(replacement, str):
                raise ConfigError(f"{where}: pattern and replace go together, both strings")
            try:
                compiled = re.compile(pattern)
                compiled.sub(replacement, "")  # a bad group reference fails here, not mid-replay
            except re.error as exc:
                raise ConfigError(f"{where}: bad pattern or replace: {exc}") from exc
        if not values and compiled is None:
            raise ConfigError(f"{where}: give values (exact) or pattern and replace")
        rules.append(
            RewriteRule(
                action,
                Message(message) if message else None,
                path,
                dict(values),
                compiled,
                replacement or "",
            )
        )
    return tuple(rules)
