"""The demo's worker processes: real ``dromos worker`` processes, started and stopped by it.

They are separate interpreters (not threads of the demo) so that the demo shows what a
deployment does: several processes sharing one SQLite file, each stopped by SIGTERM with a
grace period. Their logs go to files in the demo directory, shown when something goes wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["WorkerProcesses"]

APP_PATH = "dromos.demo.app:app"


class WorkerProcesses:
    """``processes`` worker processes for the demo app on the broker at ``url``."""

    def __init__(
        self,
        directory: Path,
        url: str,
        *,
        processes: int,
        concurrency: int,
        grace: float,
        groups: list[str | None] | None = None,
    ) -> None:
        self.directory = directory
        # Per process, the subscriber groups it runs (``-g``; None: all of them).
        self.groups = groups or [None] * processes
        self.url = url
        self.processes = processes
        self.concurrency = concurrency
        self.grace = grace
        self.children: list[subprocess.Popen[bytes]] = []
        self.logs = [directory / f"worker-{i + 1}.log" for i in range(processes)]

    def start(self) -> None:
        """Start every process; they connect on their own and wait for work."""
        env = {**os.environ, "DROMOS_BROKER": self.url, "PYTHONUNBUFFERED": "1"}
        argv = [
            sys.executable,
            "-m",
            "dromos",
            "worker",
            APP_PATH,
            "-c",
            str(self.concurrency),
            "--grace",
            str(self.grace),
        ]
        for log, groups in zip(self.logs, self.groups, strict=True):
            with log.open("wb") as out:  # the child keeps its own descriptor
                child = subprocess.Popen(
                    argv if groups is None else [*argv, "-g", groups],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.directory,
                    env=env,
                )
            self.children.append(child)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def exited(self) -> list[str]:
        """Processes that stopped while they should be serving, as readable lines."""
        return [
            f"worker process {c.pid} exited with status {c.returncode}"
            for c in self.children
            if c.poll() is not None
        ]

    def stop(self) -> list[int | None]:
        """SIGTERM every process and wait for each (killing any that outstays its grace).

        Returns the exit statuses; ``None`` marks a process that had to be killed.
        """
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for child in self.children:
            try:
                codes.append(child.wait(timeout=self.grace + 5.0))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                codes.append(None)
        return codes

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every log, to explain a failure."""
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"--- {log} (last {lines} lines)")
            parts.extend(text[-lines:])
        return "\n".join(parts)
