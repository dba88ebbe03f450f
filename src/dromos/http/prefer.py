"""The ``Prefer`` request header (RFC 7240): ``wait=N`` and ``respond-async``.

``Prefer: wait=10`` asks the gateway to hold the answer up to 10 s for the job to end (then
200 with its status and result), ``Prefer: respond-async`` to answer 202 at once. Both
together mean, as RFC 7240 §4.3 has it, "wait up to N seconds, then answer asynchronously".
What was honoured is echoed in ``Preference-Applied``. Preferences the gateway does not know,
and malformed values, are ignored, as the RFC requires; of a preference given twice the first
counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Preferences", "parse_prefer"]

# One preference: a token, an optional "=" value (token or quoted string), then parameters
# after ";" that we read past. Commas inside quoted strings do not split preferences.
_ITEM = re.compile(
    r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)      # name
        (?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,;\s]*))?  # value
        ((?:\s*;[^,;"]*(?:"(?:[^"\\]|\\.)*")?)*)  # parameters, ignored
        \s*(?:,|$)""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a client asked for in ``Prefer``: how long to wait, and whether to answer at once."""

    wait: int | None = None
    """Seconds to hold the answer for the job to end (capped by the gateway), or ``None``."""
    respond_async: bool = False
    """Answer 202 at once (after ``wait``, if that is given too)."""

    def applied(self, waited: int | None) -> str | None:
        """The ``Preference-Applied`` value for what the gateway did, if anything."""
        parts = []
        if self.respond_async:
            parts.append("respond-async")
        if waited is not None:
            parts.append(f"wait={waited}")
        return ", ".join(parts) or None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _items(header: str) -> Iterable[tuple[str, str | None]]:
    pos = 0
    while pos < len(header):
        match = _ITEM.match(header, pos)
        if match is None or match.end() == pos:
            # Malformed from here on: skip to the next comma and go on.
            comma = header.find(",", pos)
            if comma < 0:
                return
            pos = comma + 1
            continue
        value = match.group(2)
        yield match.group(1).lower(), None if value is None else _unquote(value)
        pos = match.end()


def parse_prefer(headers: Iterable[str], max_wait: int) -> Preferences:
    """The preferences in every ``Prefer`` header, ``wait`` capped at ``max_wait`` seconds."""
    seen: dict[str, str | None] = {}
    for header in headers:
        for name, value in _items(header):
            seen.setdefault(name, value)
    wait: int | None = None
    raw = seen.get("wait")
    if raw is not None and raw.isascii() and raw.isdigit():
        wait = min(int(raw), max_wait)
    return Preferences(wait=wait, respond_async="respond-async" in seen)
