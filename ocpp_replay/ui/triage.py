"""Triage: a difference group marked as expected noise becomes a rule in a rules file.

The rule is the ``[[rule]]`` table ``--rules`` reads (:mod:`ocpp_replay.core.rules`): the group's
action, message (request or response) and OCPP version, with its path under ``ignore``. It is
appended to the file as text, so the comments and rules already there stay as they are; the
new text must parse as a rules file before it is shown, and it is shown as a unified diff
before it is written. Saving names the text it was shown against (a hash): a file changed in
between is not overwritten.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ocpp_replay.core.paths import format_path, parse_path
from ocpp_replay.core.rules import parse_rules
from ocpp_replay.core.text import escape_controls, toml_string
from ocpp_replay.errors import ConfigError

__all__ = ["preview", "rule_text", "save"]


def rule_text(group: dict[str, Any], *, run_id: int | None) -> str:
    """The ``[[rule]]`` table that silences a difference group."""
    path = group["path"]
    try:
        ok = format_path(parse_path(path)) == path
    except Exception:
        ok = False
    if not group.get("ruleable") or not ok:
        raise ConfigError(f"no path rule can silence a {group['kind']} difference at {path or '(message)'!r}")
    versions = group.get("versions") or []
    rate = f"{group['messages']} of {group['compared']}" if group.get("compared") else str(group["messages"])
    what = escape_controls(f"{group['kind']}, differed in {rate} {group['action']} {group['message']}s")
    lines = [
        f"# Marked as expected noise in the ocpp-replay UI (run {run_id}): {what}",
        "[[rule]]",
        f"action = {toml_string(group['action'])}",
        f"message = {toml_string(group['message'])}",
    ]
    if len(versions) == 1:
        lines.append(f"ocpp = {toml_string(versions[0])}")
    lines.append(f"ignore = [{toml_string(path)}]")
    return "\n".join(lines) + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read rules file {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _with_rule(old: str, rule: str) -> str:
    if not old:
        return rule
    return old.rstrip("\n") + "\n\n" + rule


def preview(rules_path: Path, group: dict[str, Any], *, run_id: int | None) -> dict[str, Any]:
    """What saving would do: the rules file's text before and after, as a unified diff."""
    old = _read(rules_path)
    if old:
        parse_rules(old, source=str(rules_path))  # a broken file is not appended to
    new = _with_rule(old, rule_text(group, run_id=run_id))
    parse_rules(new, source=str(rules_path))
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{rules_path} (now)" if old else "/dev/null",
            tofile=str(rules_path),
        )
    )
    return {"path": str(rules_path), "old": old, "new": new, "diff": diff, "base": _digest(old)}


def save(rules_path: Path, group: dict[str, Any], *, run_id: int | None, base: str) -> dict[str, Any]:
    """Append the group's rule, if the file still holds the text the preview was made from."""
    shown = preview(rules_path, group, run_id=run_id)
    if shown["base"] != base:
        raise ConfigError(f"{rules_path} changed since the preview: look at the new diff before saving")
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".rules-", dir=rules_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(shown["new"])
        os.replace(tmp, rules_path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write rules file {rules_path}: {exc.strerror}") from exc
    return {"path": str(rules_path), "text": shown["new"]}
