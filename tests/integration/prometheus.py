"""A real Prometheus (Debian package `prometheus`) on 127.0.0.1 for integration tests."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.deployment import PROMETHEUS_CONFIG
from tests.integration.server import free_port

logger = logging.getLogger(__name__)


def find_prometheus() -> tuple[str | None, str]:
    """Path of the `prometheus` binary (promtool beside it), or (None, why not). Tests never install it: `make test`
    does (the Debian package `prometheus`)."""
    found = shutil.which("prometheus")
    if found:
        return found, "present"
    return None, "no prometheus binary: `make test` installs the Debian package `prometheus` where apt-get can"


# The labels Kubernetes service discovery puts on a pod's series (deploy/k8s/servicemonitor.yaml), which
# prometheus-adapter's rules select and group by.
POD_LABELS = {"namespace": "qbert", "pod": "qbert-serve-0"}


def config_for_tests(service_address: str, port: int, interval: str = "1s") -> dict:
    """docker/prometheus/prometheus.yml with only the targets (and, for speed, the intervals) changed, and the
    service's series labelled as a Kubernetes pod's."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] |= {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / pattern) for pattern in config["rule_files"]]
    targets = {"qbert": service_address, "prometheus": f"127.0.0.1:{port}"}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets[job["job_name"]]]
            if job["job_name"] == "qbert":
                static["labels"] = static.get("labels", {}) | POD_LABELS
    return config


@dataclass
class RunningPrometheus:
    process: subprocess.Popen
    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; raises on a PromQL error; returns the result vector."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        if response.status_code != 200 or body["status"] != "success":
            raise AssertionError(f"{promql!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def api(self, path: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_prometheus(binary: str, service_address: str, workdir: Path, timeout: float = 60.0) -> RunningPrometheus:
    port = free_port()
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config_for_tests(service_address, port)))
    log = workdir / "prometheus.log"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    running = RunningPrometheus(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{running.url}/-/ready", timeout=2).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    running.stop()
    raise TimeoutError(f"prometheus not ready in {timeout} s:\n{log.read_text()}")
