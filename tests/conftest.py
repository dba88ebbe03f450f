"""How `make test` spreads the suite over two processes (pytest-xdist, ``--dist loadgroup``).

Each test module is one group, so a module's fixtures (a private server, a migrated schema)
are set up once, in one process. The process-level tests (marked ``slow``: real worker
processes, killed servers, timed leases) are all one group instead: they run one after the
other in one process, never two at once, so the CPU they see is what one test leaves them,
as when the suite ran serially.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        group = "process-level" if slow else item.nodeid.partition("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
