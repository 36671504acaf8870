"""A real `qbert serve` process on 127.0.0.1 for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    url: str
    log: Path
    # What the server answered while its worker was still loading (seen by `start_server`).
    before_ready: dict[str, int] = field(default_factory=dict)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch_server(
    artifacts: Path, log: Path, build: bool = False, env: dict[str, str] | None = None, **settings: str
) -> RunningServer:
    """Start `qbert serve` (with `--no-build` unless `build`) on a free loopback port without waiting for it;
    `env`: more environment variables, `settings`: `QBERT_<NAME>` ones."""
    port = free_port()
    env = os.environ | {
        "QBERT_ARTIFACTS": str(artifacts),
        "QBERT_PORT": str(port),
        "QBERT_TORCH_THREADS": "1",
        "QBERT_BACKEND": "eager",  # compiling costs seconds per start; test_service runs the compiled one
        **{f"QBERT_{k.upper()}": v for k, v in settings.items()},
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "quantization.cli", "-v", "serve", *([] if build else ["--no-build"])],
        env=env,
        cwd=REPO_ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return RunningServer(process, f"http://127.0.0.1:{port}", log)


SETTLED_STATES = {"ready", "refused", "failed"}


def start_server(
    artifacts: Path, log: Path, ready_timeout: float = 120.0, settled: bool = True, **settings: str
) -> RunningServer:
    """Start `qbert serve --no-build` and wait until /readyz says 200 and, with `settled`, every model in /models is
    ready (or refused); record the statuses seen before it was ready."""
    server = launch_server(artifacts, log, **settings)
    process = server.process
    deadline = time.monotonic() + ready_timeout
    key = settings.get("api_key")  # /models is behind the API key where one is set
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=server.url, timeout=5, headers=headers) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                ready = client.get("/readyz")
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            if ready.status_code == 200 and (
                not settled or {m["state"] for m in client.get("/models").json()["models"]} <= SETTLED_STATES
            ):
                return server
            if not server.before_ready and ready.status_code != 200:
                server.before_ready["readyz"] = ready.status_code
                server.before_ready["predict"] = client.post("/predict/sst2", json={"text": "good"}).status_code
            time.sleep(0.05)
    server.stop()
    raise TimeoutError(f"server not ready in {ready_timeout} s:\n{log.read_text()}")


@contextlib.contextmanager
def running_server(artifacts: Path, log: Path, **settings: str) -> Iterator[RunningServer]:
    """`start_server`, stopped when the block ends (a module fixture's whole body)."""
    server = start_server(artifacts, log, **settings)
    try:
        yield server
    finally:
        server.stop()
