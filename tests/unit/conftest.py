"""Unit tests run on the memory broker (or none), whatever the environment says."""

from collections.abc import Iterator

import pytest

import dromos


@pytest.fixture(autouse=True)
def _no_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DROMOS_BROKER", raising=False)
    monkeypatch.delenv("DROMOS_BACKEND", raising=False)


@pytest.fixture
def app() -> Iterator[dromos.App]:
    """An app on a fresh in-memory broker."""
    app = dromos.App("unit", broker="memory://")
    yield app
    app.close()
