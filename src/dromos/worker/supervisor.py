"""``-p N``: keep N worker processes running, restart one that dies, stop them together.

Each child is a full ``dromos worker`` process (a fresh interpreter, no fork of a process with
threads). SIGTERM/SIGINT are passed on; children get their grace period plus a margin before
they are killed. A child that keeps dying is restarted with a growing delay.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from types import FrameType

__all__ = ["Supervisor"]

log = logging.getLogger("dromos.supervisor")

#: Set in each child's environment to the supervisor's pid.
SUPERVISOR_ENV = "DROMOS_SUPERVISOR_PID"
_HEALTHY = 60.0  # seconds a child must live for its restart delay to start again from 0.5 s


class Supervisor:
    """Runs ``argv`` ``processes`` times over and keeps them alive until told to stop."""

    def __init__(self, argv: list[str], processes: int, *, grace: float = 30.0) -> None:
        self.argv = argv
        self.processes = processes
        self.grace = grace
        self.children: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._stopping = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping += 1
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if self._stopping == 1 else signal.SIGINT)

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a signal asks the supervisor to stop."""
        until = time.monotonic() + seconds
        while not self._stopping and (left := until - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The child watches for this pid to go away, so that it stops (gracefully) instead of
        # living on as an orphan if the supervisor itself is killed.
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        return subprocess.Popen(self.argv, env=env)

    def run(self) -> int:
        """Serve until a signal; return the exit code for the supervisor process."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.children = [self._spawn() for _ in range(self.processes)]
        log.info("supervising %d worker processes: %s", self.processes,
                 [c.pid for c in self.children])  # fmt: skip
        born = [time.monotonic()] * self.processes
        delays = [0.5] * self.processes  # per slot: a crash loop in one does not slow the others
        while not self._stopping:
            time.sleep(0.2)
            for i, child in enumerate(self.children):
                code = child.poll()
                if code is None or self._stopping:
                    continue
                if time.monotonic() - born[i] > _HEALTHY:
                    delays[i] = 0.5  # it ran fine for a while: this is no crash loop
                log.warning("worker process %d exited with %s; restarting in %.1fs",
                            child.pid, code, delays[i])  # fmt: skip
                self._pause(delays[i])
                delays[i] = min(delays[i] * 2, 30.0)
                if self._stopping:  # told to stop during the delay: start nothing new
                    break
                self.children[i] = self._spawn()
                born[i] = time.monotonic()
                self.restarts += 1
        deadline = time.monotonic() + self.grace + 5.0
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker process %d did not stop in time; killing it", child.pid)
                child.kill()
                child.wait()
        return 0
