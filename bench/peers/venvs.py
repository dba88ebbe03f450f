"""One virtualenv per system under ``bench/.venvs/<name>``, each at its current PyPI release.

Created on first use (``ensure``); ``--upgrade`` in ``peers_bench.py`` refreshes them. The
peers cannot share one environment (arq needs redis-py < 6), and none shares dromos's. Every
environment gets ``hiredis`` where its redis-py takes it: the C reply parser that redis-py
recommends for speed, as dromos's own environment has; procrastinate's gets psycopg's binary
build (``psycopg[binary,pool]``), as dromos's has. The RabbitMQ benchmark's Celery and Dramatiq
have environments of their own (``celery-rabbitmq``, ``dramatiq-rabbitmq``): their AMQP clients
are extra packages, and the Redis benchmark's environments stay as they are.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata  # noqa: F401 (documented: versions are read in the venv)
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venvs"
ROOT = HERE.parent.parent  # the project: dromos's own environment installs it from here

# system -> what pip installs (no pins: the current release; arq's own bound on redis-py)
REQUIREMENTS: dict[str, list[str]] = {
    # dromos as a user installs it, from the work tree (a wheel: its bytecode compiled, only
    # the extras a Redis worker uses), installed again on every run (see ensure)
    "dromos": [f"{ROOT}[redis,fast]"],
    "celery": ["celery[redis]", "hiredis"],
    "rq": ["rq", "hiredis"],
    "dramatiq": ["dramatiq[redis]", "hiredis"],
    "huey": ["huey", "redis", "hiredis"],
    "arq": ["arq", "redis<6", "hiredis"],
    "taskiq": ["taskiq", "taskiq-redis", "hiredis"],
    "saq": ["saq[redis]", "hiredis", "typing-extensions"],  # saq imports typing_extensions
    "faststream": ["faststream[redis]", "hiredis"],
    # PostgreSQL: psycopg's binary build, as dromos's environment has (psycopg-binary)
    "procrastinate": ["procrastinate", "psycopg[binary,pool]"],
    # RabbitMQ (rabbitmq_bench.py): kombu's own AMQP client (py-amqp, a dependency of celery)
    # and Dramatiq's pika; redis-py for the shared counter and Dramatiq's result backend
    "celery-rabbitmq": ["celery", "redis", "hiredis"],
    "dramatiq-rabbitmq": ["dramatiq[rabbitmq,redis]", "hiredis"],
}
# the distributions whose versions the results record, per system
REPORTED: dict[str, list[str]] = {
    "dromos": ["dromos", "redis", "hiredis", "uvloop", "msgspec", "pydantic"],
    "celery": ["celery", "kombu", "redis", "hiredis"],
    "rq": ["rq", "redis", "hiredis"],
    "dramatiq": ["dramatiq", "redis", "hiredis"],
    "huey": ["huey", "redis", "hiredis"],
    "arq": ["arq", "redis", "hiredis"],
    "taskiq": ["taskiq", "taskiq-redis", "redis", "hiredis"],
    "saq": ["saq", "redis", "hiredis"],
    "faststream": ["faststream", "redis", "hiredis"],
    "procrastinate": ["procrastinate", "psycopg", "psycopg-binary", "psycopg-pool"],
    "celery-rabbitmq": ["celery", "kombu", "amqp", "redis", "hiredis"],
    "dramatiq-rabbitmq": ["dramatiq", "pika", "redis", "hiredis"],
}


def python_of(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure(name: str, upgrade: bool = False) -> Path:
    """The venv's python for ``name``, creating (or upgrading) the venv first."""
    python = python_of(name)
    stamp = VENVS / name / ".installed"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if upgrade or not stamp.exists():
        subprocess.run([*pip, "--upgrade", *REQUIREMENTS[name]], check=True)
        stamp.touch()
    elif name == "dromos":  # the work tree as it is now, its dependencies as they were
        subprocess.run([*pip, "--force-reinstall", "--no-deps", str(ROOT)], check=True)
    return python


def versions(name: str) -> dict[str, str]:
    """The installed versions of ``REPORTED[name]``, read by the venv's own python."""
    code = (
        "import json,sys\nfrom importlib import metadata\nout={}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d]=metadata.version(d)\n"
        "    except metadata.PackageNotFoundError: out[d]='not installed'\n"
        "print(json.dumps(out))"
    )
    import json

    text = subprocess.run(
        [str(python_of(name)), "-c", code, *REPORTED[name]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(text))


if __name__ == "__main__":
    for system in sys.argv[1:] or REQUIREMENTS:
        print(system, ensure(system), versions(system))
