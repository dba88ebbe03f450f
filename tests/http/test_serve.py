"""``dromos serve MODULE:APP``: loopback only without keys, and the whole way in processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dromos.cli import main
from dromos.cli.serve import is_loopback

HERE = Path(__file__).parent


def _run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["dromos", *args])
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.com"])
def test_serve_refuses_a_public_address_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    monkeypatch.chdir(HERE)
    monkeypatch.syspath_prepend(str(HERE))  # so that load_app leaves sys.path as it was
    monkeypatch.setenv("DROMOS_BROKER", "memory://")
    code = _run_cli(monkeypatch, "serve", "cli_app:app", "--host", host)
    assert code == 1
    err = capsys.readouterr().err
    assert f"refusing to listen on {host} without API keys" in err
    assert "DROMOS_API_KEYS" in err


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com", ""]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.slow
def test_serve_and_a_worker_in_processes_answer_a_job(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DROMOS_BROKER": f"sqlite:///{tmp_path / 'served.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("serve", "worker")}
    commands = {
        "serve": ["serve", "cli_app:app", "--port", str(port), "--log-level", "warning"],
        "worker": ["worker", "cli_app:app", "-c", "2", "--log-level", "warning"],
    }
    for name, args in commands.items():
        with logs[name].open("wb") as log:
            processes.append(
                subprocess.Popen([sys.executable, "-m", "dromos", *args], cwd=tmp_path, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )  # fmt: skip
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, _log(logs["serve"])
            assert processes[0].poll() is None, _log(logs["serve"])
            time.sleep(0.05)
        response = client.post(
            "/v1/tasks/add/jobs", json={"args": [40, 2]}, headers={"Prefer": "wait=15"}
        )
        assert response.status_code == 200, response.text + _log(logs["worker"])
        assert response.json()["result"] == 42
        assert client.get("/readyz").json() == {"status": "ready"}
    server = processes[0]
    server.send_signal(signal.SIGTERM)
    # A graceful stop: uvicorn shuts down, then re-raises the signal it caught.
    assert server.wait(timeout=10) in (0, -signal.SIGTERM)
    notice = _log(logs["serve"])
    assert "Traceback" not in notice
    assert f"on http://127.0.0.1:{port}" in notice
    assert "no API keys: open to this machine only" in notice
