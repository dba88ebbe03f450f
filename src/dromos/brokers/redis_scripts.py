"""The Lua scripts of the Redis broker, cut from their files (``redis.lua``,
``redis_events.lua``, ``redis_parking.lua``).

A file holds a ``common`` section (helpers shared by its scripts) and one section per
script, each opened by a line ``--- <name>``. A script is its section prefixed with the part
of ``common`` it uses: the top-level declarations its body names, and theirs in turn, in
their order in the file. Redis runs a script's whole text on every call, so each helper it
carries is one more closure made per call, and the text is kept by the client and compiled
by the server once per script: a script that carries only its own helpers is smaller and
starts faster than one that carries all of them.
"""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["scripts"]

# A top-level declaration of common: "local function f(", "local a, b = ...", "local x"
# (a forward declaration), "f = function(" (its definition).
_DECLARATION = re.compile(
    r"local\s+function\s+(?P<function>\w+)"
    r"|local\s+(?P<locals>\w+(?:\s*,\s*\w+)*)"
    r"|(?P<assigned>\w+)\s*=\s*function\b"
)
_NAME = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"--[^\n]*")  # the scripts hold no '--' inside a string


def _names(text: str) -> set[str]:
    """The names ``text`` uses (its comments left out: one naming a helper needs none)."""
    return set(_NAME.findall(_COMMENT.sub("", text)))


def _declarations(common: str) -> list[tuple[frozenset[str], str]]:
    """``common`` as its top-level declarations: the names each declares, and its text (the
    comment lines just above it included; what follows up to the next one is its body)."""
    blocks: list[tuple[frozenset[str], list[str]]] = [(frozenset(), [])]  # a preamble
    comments: list[str] = []
    for line in common.splitlines(keepends=True):
        if line.startswith("--"):
            comments.append(line)
            continue
        found = _DECLARATION.match(line)
        if found is None:
            blocks[-1][1].extend([*comments, line])
        else:
            names = found["function"] or found["assigned"] or found["locals"]
            declared = frozenset(n.strip() for n in names.split(","))
            blocks.append((declared, [*comments, line]))
        comments = []
    blocks[-1][1].extend(comments)
    return [(names, "".join(text)) for names, text in blocks]


def _used(common: list[tuple[frozenset[str], str]], body: str) -> str:
    """The declarations of ``common`` that ``body`` needs, transitively, in their order."""
    wanted = _names(body)
    keep = [False] * len(common)
    grew = True
    while grew:
        grew = False
        for i, (names, text) in enumerate(common):
            if not keep[i] and (not names or names & wanted):
                keep[i] = grew = True
                wanted |= _names(text)
    return "".join(text for (_, text), kept in zip(common, keep, strict=True) if kept)


def scripts(cluster: bool, file: str = "redis.lua", relay: bool = False) -> dict[str, str]:
    """The named sections of ``file``, each prefixed with the part of its ``common`` section
    that it uses.

    ``CLUSTER`` is set in the source: on a Cluster the scripts publish differently. So is
    ``RELAY`` (relay mode: ready jobs are also indexed in ``T:unsent``), so that a store not
    in relay mode runs no more than before.
    """
    text = resources.files("dromos.brokers").joinpath(file).read_text()
    sections: dict[str, str] = {}
    for chunk in text.split("\n--- ")[1:]:
        name, _, body = chunk.partition("\n")
        sections[name.strip()] = body
    flags = f"local CLUSTER = {str(cluster).lower()}\nlocal RELAY = {str(relay).lower()}\n"
    common = _declarations(flags + sections.pop("common"))
    return {name: _used(common, body) + body for name, body in sections.items()}
