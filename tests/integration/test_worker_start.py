"""A starting worker's timeout measures lack of progress, not total time (real `qbert serve`, real workers)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.server import RunningServer, launch_server, start_server

STALL_TIMEOUT_S = 6.0
COPIES = 40
MANY_COPIES = 1200


def _copies(tiny_artifacts: Path, root: Path, count: int) -> Path:
    """`count` links to the tiny SST-2 FP32 artifact under distinct precision names: a start of many steps."""
    (root / "sst2").mkdir(parents=True)
    for index in range(count):
        (root / "sst2" / f"copy{index:04d}").symlink_to(tiny_artifacts / "sst2" / "fp32", target_is_directory=True)
    return root


def _serve(launch: Callable[..., RunningServer], artifacts: Path, tmp_path: Path) -> RunningServer:
    return launch(
        artifacts,
        tmp_path / "serve.log",
        workers="1",
        default_precision="copy0000",
        worker_start_timeout_s=str(STALL_TIMEOUT_S),
    )


def test_a_worker_that_stops_making_progress_is_killed_and_restarted(tiny_artifacts: Path, tmp_path: Path) -> None:
    """The worker is frozen (SIGSTOP: a hung mount, a deadlock) halfway through loading its models: it is killed
    after the timeout and its successor loads them all."""
    running = _serve(launch_server, _copies(tiny_artifacts, tmp_path / "artifacts", COPIES), tmp_path)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            frozen, deadline = None, time.monotonic() + 120
            while frozen is None and time.monotonic() < deadline:
                try:
                    states = [m["state"] for m in client.get("/models").json()["models"]]
                    worker = client.get("/readyz").json()["workers"][0]
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if "ready" in states and "pending" in states:  # loading, a few models in
                    os.kill(worker["pid"], signal.SIGSTOP)
                    frozen = worker["pid"]
            assert frozen, "the worker loaded every model before it could be frozen"
            stopped_at = time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.2)
                workers = client.get("/readyz").json()["workers"]
                states = {m["state"] for m in client.get("/models").json()["models"]}
                if workers[0]["restarts"] >= 1 and workers[0]["pid"] not in (None, frozen) and states == {"ready"}:
                    break
            took = time.monotonic() - stopped_at
            log = running.log.read_text()
            assert workers[0]["restarts"] == 1, log
            assert states == {"ready"}, log
            assert took >= STALL_TIMEOUT_S, f"killed {took:.1f} s after it froze"
            assert re.search(r"worker 0 made no progress for \d+ s \(loading sst2/copy\d+\); killing it", log), log
            assert client.post("/predict/sst2?precision=copy0039", json={"text": "good"}).status_code == 200
    finally:
        running.stop()


def test_a_slow_start_that_keeps_making_progress_is_not_killed(tiny_artifacts: Path, tmp_path: Path) -> None:
    """Hundreds of models at a tenth of a second each: the start outlasts the stall timeout, and no step does."""
    running = _serve(start_server, _copies(tiny_artifacts, tmp_path / "artifacts", MANY_COPIES), tmp_path)
    try:
        log = running.log.read_text()
        took = float(re.search(rf"worker 0 ready \(pid \d+\): {MANY_COPIES} models in ([\d.]+) s", log).group(1))
        if took < 1.5 * STALL_TIMEOUT_S:
            pytest.skip(f"this machine started {MANY_COPIES} tiny models in {took:.1f} s: too fast to test the timeout")
        with httpx.Client(base_url=running.url, timeout=10) as client:
            assert client.get("/readyz").json()["workers"][0]["restarts"] == 0
            models = client.get("/models").json()["models"]
            assert {m["state"] for m in models} == {"ready"}
            answer = client.post("/predict/sst2?precision=copy1199", json={"text": "good"})
            assert answer.status_code == 200, answer.text
        assert "made no progress" not in log
    finally:
        running.stop()
