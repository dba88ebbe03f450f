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
