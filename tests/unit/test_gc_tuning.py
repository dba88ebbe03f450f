"""``tune_gc``: what ``dromos worker`` does to its own process's collector once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dromos._loop import GC_YOUNG, tune_gc


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    """This test process's collector as it was, after each test."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_what_is_alive_is_frozen_and_young_collections_are_rarer() -> None:
    older = gc.get_threshold()[1:]
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == (GC_YOUNG, *older)
    # Cycles made afterwards are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_dromos_gc_0_keeps_pythons_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROMOS_GC", "0")
    gc.unfreeze()
    before = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
