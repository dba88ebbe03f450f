"""The Redis scripts carry only the helpers of their file's common section that they use."""

from __future__ import annotations

from dromos.brokers.redis_scripts import _declarations, _used, scripts

COMMON = """local T = ARGV[1]
-- the clock
local function clock() return redis.call('TIME') end
local function jkey(id) return T .. ':job:' .. id end
local unused_a, unused_b = {}, {}
local later  -- defined below: it and first() call each other
local function first(n)
  if n > 0 then return later(n - 1) end
  return clock()
end
later = function(n)
  return first(n)
end
local function lonely() return 1 end
"""


def test_a_body_gets_what_it_names_and_what_that_names_in_file_order() -> None:
    common = _declarations(COMMON)
    got = _used(common, "return first(2)\n")
    assert "local function first" in got
    assert "later = function" in got
    assert "local later" in got
    assert "local function clock" in got
    assert "-- the clock" in got  # a declaration keeps the comment above it
    assert "lonely" not in got
    assert "jkey" not in got
    assert "unused_a" not in got
    assert got.index("local later") < got.index("local function first") < got.index("later =")


def test_a_body_naming_nothing_gets_nothing() -> None:
    assert _used(_declarations(COMMON), "return ARGV[2]\n") == ""


def test_the_broker_scripts_carry_their_own_helpers_only() -> None:
    jobs = scripts(False)
    assert "local function hand_over" in jobs["enqueue"]  # new jobs go to idle workers
    assert "local function hand_over" not in jobs["settle"]
    assert "local function notify_waiters" in jobs["settle"]
    assert "local function" not in jobs["drop_lease"]
    assert "local CLUSTER = true" in scripts(True)["settle"]  # it publishes by it


def _code_names(text: str) -> set[str]:
    """The names a Lua text uses, by a small lexer that skips strings and comments."""
    names: set[str] = set()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif c in "'\"":
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            names.add(text[i:j])
            i = j
        else:
            i += 1
    return names


def test_every_name_a_script_uses_is_seen_by_the_cut() -> None:
    # The cut drops "--" to the end of a line before it looks for names: a string holding
    # "--" would hide the names after it. Every name the lexer finds must be seen.
    from importlib import resources

    from dromos.brokers.redis_scripts import _names

    for file in ("redis.lua", "redis_events.lua", "redis_parking.lua"):
        text = resources.files("dromos.brokers").joinpath(file).read_text()
        assert _code_names(text) <= _names(text), file
