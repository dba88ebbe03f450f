"""Tasks for the process-pool test: they must live in an importable module (spawn re-imports)."""

import os

import dromos

app = dromos.App("process-tasks", broker="memory://")


@app.task(executor="process", retries=0)
def child_pid() -> int:
    return os.getpid()


@app.task(executor="process", retries=1, backoff=0.01)
def crash(code: int) -> None:
    os._exit(code)
