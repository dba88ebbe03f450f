"""Shared servers in tests: run against them, skip without them, but never skip in CI."""

from __future__ import annotations

import os
import socket

import pytest

__all__ = ["require_server"]


def require_server(name: str, host: str, port: int) -> None:
    """Skip (or under ``CI=true``, fail) unless a server listens at ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError as exc:
        why = f"{name} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must run the tests of every backend")
        pytest.skip(why)
