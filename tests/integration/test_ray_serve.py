"""Ray Serve on a real two-node Ray cluster on this machine (`ray start --head`, and a second node joined with
`ray start --address`, one CPU each): `qbert ray-serve` deploys the tiny models with a replica of the SST-2 model on
each node; answers equal the single-process server's; every replica's metrics reach Prometheus's format; a replica
killed under load is replaced, and the requests in flight get an answer or a clear 503, never a hang.

It stops Ray with `ray stop`, which stops every Ray process on the machine: it skips where a Ray cluster already
runs. Marked `ray`; CI runs it (Ray is a dev dependency)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.server import RunningServer, free_port, start_server

pytestmark = pytest.mark.ray

RAY = Path(sys.executable).with_name("ray")
REPLICA_CLASS = "ServeReplica:qbert:sst2"


@dataclass
class RayCluster:
    address: str
    dashboard: str
    metrics_ports: list[int]
    env: dict[str, str]

    def ray(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(RAY), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"ray {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def replicas(self) -> list[dict]:
        """The SST-2 model's live replica actors: id, node and pid."""
        listed = self.ray(
            "list", "actors", "--address", self.dashboard, "--format", "json", "--limit", "1000",
            "--filter", "state=ALIVE", "--detail",
        )  # fmt: skip
        return [actor for actor in json.loads(listed) if actor["class_name"] == REPLICA_CLASS]


def _ray_is_running(env: dict[str, str]) -> bool:
    done = subprocess.run([str(RAY), "status"], env=env, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    if not RAY.is_file():
        pytest.skip("Ray is not installed (pip install -e '.[dev]')")
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
    if _ray_is_running(env):
        pytest.skip("a Ray cluster already runs on this machine; this test stops Ray when it ends")
    port, dashboard_port = free_port(), free_port()
    metrics_ports = [free_port(), free_port()]
    temp = tmp_path_factory.mktemp("ray")
    head = [
        "start", "--head", f"--port={port}", "--num-cpus=1", f"--dashboard-port={dashboard_port}",
        "--dashboard-host=127.0.0.1", f"--metrics-export-port={metrics_ports[0]}", f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]  # fmt: skip
    joined = ["start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--metrics-export-port={metrics_ports[1]}"]
    running = RayCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", metrics_ports, env)
    try:
        running.ray(*head, timeout=120)
        running.ray(*joined, timeout=120)
        yield running
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Deployed:
    process: subprocess.Popen
    url: str
    log: Path


@pytest.fixture(scope="module")
def deployed(cluster: RayCluster, tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """`qbert ray-serve` on the cluster: the SST-2 model in two replicas of one CPU each, so one per node."""
    http_port = free_port()
    log = tmp_path_factory.mktemp("ray-serve") / "ray-serve.log"
    env = cluster.env | {"QBERT_ARTIFACTS": str(tiny_artifacts), "QBERT_BACKEND": "eager"}
    command = [
        sys.executable, "-m", "quantization.cli", "ray-serve", "--address", cluster.address, "--port", str(http_port),
        "--tasks", "sst2", "--precisions", "fp32,w8", "--min-replicas", "2", "--max-replicas", "2",
        "--cpus-per-replica", "1",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    running = Deployed(process, f"http://127.0.0.1:{http_port}", log)
    try:
        _wait_ready(running, timeout=240)
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(deployed: Deployed, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deployed.process.poll() is not None:
            raise AssertionError(f"qbert ray-serve exited {deployed.process.returncode}:\n{deployed.log.read_text()}")
        try:
            if httpx.get(f"{deployed.url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready in {timeout} s:\n{deployed.log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def single(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("single") / "serve.log"
    server = start_server(tiny_artifacts, log, tasks="sst2", precisions="fp32,w8")
    yield server
    server.stop()


def _v2_body(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def test_answers_equal_the_single_process_servers(deployed: Deployed, single: RunningServer) -> None:
    requests = [
        ("/predict/sst2", {"texts": ["a good movie", "a terrible film", "fine"]}, {"precision": "w8"}),
        ("/predict/sst2", {"text": "an utterly forgettable mess"}, {"precision": "fp32"}),
        ("/predict/sst2", {"text": "a gripping film"}, {}),
        ("/v2/models/sst2/versions/w8/infer", _v2_body(["a good movie", "a dull one"]), {}),
    ]
    with httpx.Client(timeout=60) as client:
        for route, body, params in requests:
            ours = client.post(f"{deployed.url}{route}", json=body, params=params)
            theirs = client.post(f"{single.url}{route}", json=body, params=params)
            assert ours.status_code == theirs.status_code == 200, (route, ours.text)
            assert ours.json() == theirs.json(), route
        bad = client.post(f"{deployed.url}/predict/sst2", json={"text": " "})
        assert (bad.status_code, bad.json()["error"]) == (422, "invalid_input")
        models = client.get(f"{deployed.url}/models").json()["models"]
        assert sorted((m["task"], m["precision"], m["status"]) for m in models) == [
            ("sst2", "fp32", "loaded"),
            ("sst2", "w8", "loaded"),
        ]
        assert "qbert_request_duration_seconds_bucket" in client.get(f"{deployed.url}/metrics").text


def test_one_replica_on_each_node_and_each_nodes_metrics_name_its_replica(
    cluster: RayCluster, deployed: Deployed
) -> None:
    replicas = _wait_for_replicas(cluster, 2, deployed)
    assert len({replica["node_id"] for replica in replicas}) == 2
    with httpx.Client(timeout=60) as client:  # traffic for every replica's counters
        for _ in range(30):
            assert client.post(f"{deployed.url}/predict/sst2", json={"text": "a good movie"}).status_code == 200
    per_port: dict[int, set[str]] = {port: set() for port in cluster.metrics_ports}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not all(per_port.values()):
        for port in cluster.metrics_ports:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            for line in text.splitlines():
                if line.startswith("ray_serve_") and 'deployment="sst2"' in line:
                    per_port[port] |= set(re.findall(r'replica="([^"]+)"', line))
        time.sleep(2)
    assert all(per_port.values()), per_port  # each node's exporter names the replica it runs
    assert len(set().union(*per_port.values())) >= 2, per_port


def test_a_killed_replica_is_replaced_and_no_request_hangs(cluster: RayCluster, deployed: Deployed) -> None:
    before = _wait_for_replicas(cluster, 2, deployed)
    victim = before[0]
    statuses: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(timeout=60) as client:  # a hang would raise ReadTimeout here
            while not stop.is_set():
                try:
                    response = client.post(f"{deployed.url}/predict/sst2", json={"texts": ["a good movie"] * 4})
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code != 200 and response.json().get("error") != "worker_lost":
                        failures.append(response.text)

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(6)
    stop.set()
    for thread in threads:
        thread.join(90)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert failures == [], failures
    assert statuses.get(200, 0) > 0, statuses
    assert set(statuses) <= {200, 503}, statuses
    after = _wait_for_replicas(cluster, 2, deployed, without=victim["actor_id"])
    assert victim["actor_id"] not in {replica["actor_id"] for replica in after}
    with httpx.Client(timeout=60) as client:
        assert client.post(f"{deployed.url}/predict/sst2", json={"text": "fine"}).status_code == 200


def _wait_for_replicas(
    cluster: RayCluster, count: int, deployed: Deployed, without: str | None = None, timeout: float = 180
) -> list[dict]:
    """The SST-2 model's live replicas once there are `count` of them (none of them `without`)."""
    deadline = time.monotonic() + timeout
    while True:
        replicas = [r for r in cluster.replicas() if r["actor_id"] != without]
        if len(replicas) >= count:
            return replicas
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(replicas)} replicas, not {count}:\n{deployed.log.read_text()[-3000:]}")
        time.sleep(1)
