"""RQ's side of the shared benchmark task: INCR the counter, return the int.

RQ jobs name a plain importable function (``rq_tasks.count``); the worker imports this module
from its working directory (``bench/peers``, passed with ``--path``).
"""

from __future__ import annotations

from _counter import incr_counter


def count(i: int) -> int:
    """The benchmark's task: count the completion on the private Redis."""
    incr_counter()
    return i
