"""Personal data in free text, found by pattern. Pure: text in, (kind, value) spans out.

Field rules (``idTag``, ``serialNumber``, ...) find what sits under a known key; these detectors
find what a charger or a backend writes anywhere else: a DataTransfer ``data`` string, a vendor
error text, a close reason. Each kind is tuned to miss little and to leave OCPP's own values
alone (timestamps, decimal meter readings, UUIDs, statuses):

``email``
    ``local@domain.tld``.
``vin``
    17 characters of ISO 3779's alphabet (digits and capitals without I, O, Q), at least one
    letter, the last four digits (ISO 3779: the vehicle indicator section ends numeric); for a
    North American VIN (first character 1-5) the check digit (9th) must be right.
``phone``
    An international number: ``+`` and 8-15 digits, or ``00`` and 11-17 digits in all, with
    spaces, dots, dashes, slashes or brackets between them. National numbers without a prefix
    are not found (they look like meter readings).
``iban``
    Two letters, two check digits, 11-30 letters or digits (spaces every four allowed), with a
    valid ISO 13616 (mod 97) checksum.
``mac``
    Six hex bytes separated by ``:`` or ``-``, or three dot-separated groups of four.
``rfid_uid``
    A card UID of 4, 7 or 10 bytes: 8, 14 or 20 hex digits with both letters and digits, or 4,
    7 or 10 hex bytes separated by ``:``, ``-`` or spaces.

A match must stand alone: no letter, digit, ``_`` or ``-`` right before or after it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Final

__all__ = ["KINDS", "find", "iban_valid", "vin_check_digit"]

#: In the order they are searched: an IBAN's digits are not a phone number, a MAC is not a UID.
KINDS: Final = ("email", "iban", "vin", "mac", "rfid_uid", "phone")

_ALONE_BEFORE = r"(?<![A-Za-z0-9_\-])"
_ALONE_AFTER = r"(?![A-Za-z0-9_\-])"
_HEX = "[0-9A-Fa-f]"

_PATTERNS: Final[dict[str, str]] = {
    "email": r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*"
    r"\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])",
    "vin": _ALONE_BEFORE + r"[A-HJ-NPR-Z0-9]{13}[0-9]{4}" + _ALONE_AFTER,
    "phone": r"(?<![A-Za-z0-9_\-+])(?:\+|00)[1-9][0-9 .\-/()]{6,22}[0-9]" + _ALONE_AFTER,
    "iban": _ALONE_BEFORE + r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}" + _ALONE_AFTER,
    "mac": _ALONE_BEFORE
    + rf"(?:{_HEX}{{2}}(?P<sep>[:\-]){_HEX}{{2}}(?:(?P=sep){_HEX}{{2}}){{4}}"
    + rf"|{_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}})"
    + _ALONE_AFTER,
    "rfid_uid": _ALONE_BEFORE
    + rf"(?:{_HEX}{{20}}|{_HEX}{{14}}|{_HEX}{{8}}"
    + rf"|{_HEX}{{2}}(?P<usep>[: \-]){_HEX}{{2}}(?:(?P=usep){_HEX}{{2}}){{8}}"
    + rf"|{_HEX}{{2}}(?P<usep2>[: \-]){_HEX}{{2}}(?:(?P=usep2){_HEX}{{2}}){{5}}"
    + rf"|{_HEX}{{2}}(?P<usep3>[: \-]){_HEX}{{2}}(?:(?P=usep3){_HEX}{{2}}){{2}})"
    + _ALONE_AFTER,
}
_COMPILED: Final = {kind: re.compile(p) for kind, p in _PATTERNS.items()}
#: Cheap tests that rule a kind out for a whole string before its regex runs.
_NEEDS: Final[dict[str, re.Pattern[str]]] = {
    "email": re.compile("@"),
    "vin": re.compile(r"[0-9]{4}"),
    "phone": re.compile(r"\+|00"),
    "iban": re.compile(r"[A-Z]{2}[0-9]{2}"),
    "mac": re.compile(rf"{_HEX}{{2}}[:\-.]"),
    "rfid_uid": re.compile(rf"{_HEX}{{8}}|{_HEX}{{2}}[: \-]{_HEX}{{2}}"),
}
#: The shortest text any kind can match (``a@b.co``).
_SHORTEST: Final = 6

_VIN_VALUES: Final = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS: Final = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_check_digit(vin: str) -> str:
    """The check digit (9th character) a VIN should have: ``0``-``9`` or ``X``."""
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    r = total % 11
    return "X" if r == 10 else str(r)


def _vin(value: str) -> bool:
    if not any(c.isalpha() for c in value):
        return False
    if value[0] in "12345":  # North America: the check digit is mandatory there
        return value[8] == vin_check_digit(value)
    return True


def iban_valid(value: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters as 10..35, mod 97 is 1."""
    s = value.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    digits = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(digits) % 97 == 1


def _phone(value: str) -> bool:
    digits = sum(c.isdigit() for c in value)
    # "00" and a country code: at least 11 digits in all (0012345678 is more likely a counter)
    return (11 if value.startswith("00") else 8) <= digits <= (17 if value.startswith("00") else 15)


def _rfid(value: str) -> bool:
    bare = re.sub(r"[: \-]", "", value)
    return any(c.isdigit() for c in bare) and any(c.isalpha() for c in bare)


_CHECKS: Final = {"vin": _vin, "iban": iban_valid, "phone": _phone, "rfid_uid": _rfid}
#: Kinds whose pattern may run on into the next word (``IBAN 0``, ``+31 20 1234567 2``): when the
#: whole match fails its check, the longest prefix that ends before a space and passes counts.
_TRIMMED: Final = frozenset({"iban", "phone"})


def _shorter(value: str, check: Callable[[str], bool]) -> str:
    for end in range(len(value) - 1, 0, -1):
        if value[end] == " " and value[end - 1] != " " and check(value[:end]):
            return value[:end]
    return ""


def find(text: str, kinds: tuple[str, ...] = KINDS) -> Iterator[tuple[str, str]]:
    """``(kind, value)`` for each piece of personal data in ``text``, first kinds first; a span
    that one kind claimed is not searched again by the next (a MAC is not also two UIDs)."""
    # What one kind claimed is masked out (NUL matches no pattern and counts as a boundary), so
    # that the next kind neither finds it again nor stops short of finding its own next to it.
    if len(text) < _SHORTEST:
        return
    masked = text
    for kind in kinds:
        if not _NEEDS[kind].search(masked):
            continue
        check = _CHECKS.get(kind)
        claimed: list[tuple[int, int]] = []
        for m in _COMPILED[kind].finditer(masked):
            value = m.group(0)
            if check is not None and not check(value):
                value = _shorter(value, check) if kind in _TRIMMED else ""
                if not value:
                    continue
            claimed.append((m.start(), m.start() + len(value)))
            yield kind, value
        if claimed:
            parts: list[str] = []
            last = 0
            for start, end in claimed:
                parts += [masked[last:start], "\x00" * (end - start)]
                last = end
            masked = "".join([*parts, masked[last:]])
