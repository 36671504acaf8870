"""A real Prometheus scrapes a real service with docker/prometheus/prometheus.yml; every PromQL expression of
the rules and of the Grafana dashboard must return data; promtool checks the config and unit-tests the alerts."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deployment import (
    ALERT_TESTS,
    PROMETHEUS_CONFIG,
    RULE_FILES,
    adapter_query,
    adapter_rules,
    dashboard_expressions,
    rule_expressions,
)
from tests.integration.prometheus import POD_LABELS, RunningPrometheus, find_prometheus, start_prometheus
from tests.integration.server import RunningServer, start_server

PRECISIONS = ("fp32", "w8", "w2g128")  # what `tiny_artifacts` builds
# Grafana's values for the dashboard variables: "All" of task and precision, and a rate window that
# holds several samples at the test's 1 s scrape interval.
GRAFANA_VARIABLES = {"task": ".*", "precision": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    binary, why = find_prometheus()
    if binary is None:
        pytest.skip(f"no real Prometheus: {why}")
    return binary


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tiny_artifacts, tmp_path_factory.mktemp("served") / "serve.log", max_wait_ms="20")
    yield running
    running.stop()


def _load(url: str, seconds: float) -> dict[int, int]:
    """Concurrent requests over every task and precision, some of them invalid, for `seconds`."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    requests = [
        ("/predict/sst2", {"texts": ["a good movie", "a terrible film"]}),
        ("/predict/ner", {"text": "John Smith lives in Paris ."}),
        ("/qa", {"question": "where does john live ?", "context": "john smith lives in paris . " * 8}),
        ("/predict/sst2", {"text": ""}),  # 422 invalid_input: an error outcome with task and precision
    ]

    def client_loop(offset: int) -> None:
        deadline = time.monotonic() + seconds
        with httpx.Client(base_url=url, timeout=30) as client:
            i = offset
            while time.monotonic() < deadline:
                route, body = requests[i % len(requests)]
                precision = PRECISIONS[(i // len(requests)) % len(PRECISIONS)]
                status = client.post(route, json=body, params={"precision": precision}).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                i += 1

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def _wait_for(prometheus: RunningPrometheus, promql: str, timeout: float = 30.0) -> list[dict]:
    """Poll until `promql` has a series with a finite value."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(promql)
        if any(math.isfinite(float(series["value"][1])) for series in result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql!r} had no finite value in {timeout} s: {result}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPrometheus]:
    """Prometheus scraping the service every second while a short load runs, its rules evaluated after it."""
    running = start_prometheus(prometheus_binary, server.url.removeprefix("http://"), tmp_path_factory.mktemp("prom"))
    try:
        _wait_for(running, 'up{job="qbert"} == 1')
        statuses = _load(server.url, seconds=4.0)
        assert statuses.get(200, 0) > 50, statuses
        assert statuses.get(422, 0) > 0, statuses
        _wait_for(running, "task_precision:qbert_requests_server_errors:ratio_rate5m")
        _wait_for(running, "task_precision:qbert_request_duration_seconds:p99_rate1m")
        yield running
    finally:
        running.stop()


def test_promtool_accepts_the_config_and_the_rules(prometheus_binary: str) -> None:
    promtool = Path(prometheus_binary).with_name("promtool")
    checked = subprocess.run([str(promtool), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = subprocess.run([str(promtool), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_fire_each_alert_on_its_input(prometheus_binary: str) -> None:
    promtool = Path(prometheus_binary).with_name("promtool")
    tested = subprocess.run(
        [str(promtool), "test", "rules", ALERT_TESTS.name], capture_output=True, text=True, cwd=ALERT_TESTS.parent
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_service_is_scraped_and_every_rule_group_evaluates_cleanly(prometheus: RunningPrometheus) -> None:
    targets = prometheus.api("targets")["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {"qbert": "up", "prometheus": "up"}
    groups = prometheus.api("rules")["groups"]
    assert {g["file"].rsplit("/", 1)[-1] for g in groups} == {p.name for p in RULE_FILES}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (group["name"], rule["name"], rule)
            assert not rule.get("lastError"), (group["name"], rule["name"], rule)


@pytest.mark.parametrize("expression", rule_expressions(), ids=lambda e: e.where)
def test_every_rule_expression_returns_data(prometheus: RunningPrometheus, expression) -> None:
    assert prometheus.query(expression.promql), f"{expression.where}: no data for {expression.promql}"


@pytest.mark.parametrize("expression", dashboard_expressions(GRAFANA_VARIABLES), ids=lambda e: e.where)
def test_every_dashboard_expression_returns_data(prometheus: RunningPrometheus, expression) -> None:
    result = prometheus.query(expression.promql)
    assert result, f"{expression.where}: no data for {expression.promql}"
    assert any(math.isfinite(float(series["value"][1])) for series in result), (expression.where, result)


@pytest.mark.parametrize("rule", adapter_rules(), ids=lambda rule: rule["name"]["as"])
def test_each_autoscaling_query_returns_a_value_per_pod(prometheus: RunningPrometheus, rule: dict) -> None:
    """What prometheus-adapter asks Prometheus when the HPA reads the metric (deploy/k8s): one finite value for the
    pod, by the `pod` label the HPA matches it with."""
    query = adapter_query(rule, POD_LABELS["namespace"], [POD_LABELS["pod"]])
    result = _wait_for(prometheus, query)
    assert [series["metric"] for series in result] == [{"pod": POD_LABELS["pod"]}]


def test_latency_is_recorded_for_every_task_and_precision_served(prometheus: RunningPrometheus) -> None:
    result = prometheus.query("task_precision:qbert_request_duration_seconds:p95_rate1m")
    finite = {(s["metric"]["task"], s["metric"]["precision"]) for s in result if math.isfinite(float(s["value"][1]))}
    assert finite == {(task, precision) for task in ("sst2", "ner", "qa") for precision in PRECISIONS}
    series = prometheus.query('qbert_model_bits_per_weight{task="sst2"}')
    bits = {s["metric"]["precision"]: float(s["value"][1]) for s in series}
    assert bits["fp32"] == 32, bits
    assert bits["w8"] == 8, bits
    assert 2 <= bits["w2g128"] < 3, bits


def test_a_killed_worker_fires_the_restart_alert(prometheus: RunningPrometheus, server: RunningServer) -> None:
    """Last in this module: it kills the worker. The alert comes from real scraped data, not promtool's input."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        os.kill(client.get("/readyz").json()["workers"][0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alerts = prometheus.api("alerts")["alerts"]
        if any(a["labels"]["alertname"] == "QbertWorkerRestarts" and a["state"] == "firing" for a in alerts):
            return
        time.sleep(0.5)
    raise AssertionError(f"QbertWorkerRestarts did not fire in 60 s: {alerts}")
