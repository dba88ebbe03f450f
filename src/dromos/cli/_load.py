"""Finding the app a command names (``MODULE:ATTR``); a wrong name is one line, not a usage dump."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from dromos.app import App
from dromos.errors import ConfigurationError

__all__ = ["load_app"]


def load_app(path: str) -> App:
    """Import ``MODULE:ATTR`` (the current directory is importable, as with uvicorn)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"{path!r}: write MODULE:ATTR, e.g. myproject.tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(target, App):
        raise ConfigurationError(f"{path!r} is a {type(target).__name__}, not a dromos.App")
    return target
