"""docker-compose.yml, the Dockerfile and the Prometheus / Grafana provisioning, parsed and cross-checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.errors import ServiceError
from service.metrics import ServiceMetrics
from tests.conftest import REPO_ROOT
from tests.deployment import (
    COMPOSE_FILE,
    DOCKER,
    GRAFANA,
    PROMETHEUS_CONFIG,
    RULE_FILES,
    dashboard_expressions,
    load_dashboards,
    load_yaml,
    metric_names,
    panels,
    rule_expressions,
    rules,
)

GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all", "__field", "__series", "__name"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


def _exported_metric_names() -> set[str]:
    """Every sample name the service can expose (`_bucket`, `_sum`, `_count`, `_total` included)."""
    names = set()
    for family in ServiceMetrics().registry.collect():
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def _host_path(compose_volume: str) -> str | None:
    source = compose_volume.split(":")[0]
    return source if source.startswith(".") else None


# ----- docker-compose.yml ------------------------------------------------------------------------


def test_compose_has_the_four_services_with_healthchecks_and_ordered_start(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"build-artifacts", "api", "prometheus", "grafana"}
    for name in ("api", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["api"]["depends_on"] == {"build-artifacts": {"condition": "service_completed_successfully"}}
    assert services["prometheus"]["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_compose_images_are_pinned_and_named_volumes_declared(compose: dict) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, image
        assert re.search(r"\d", tag), f"{name}: unpinned image {image}"
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if _host_path(volume):
                assert (REPO_ROOT / source).exists(), f"{name}: bind source {source} missing"
            elif not source.startswith("$"):
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared


def test_compose_exposes_the_ports_and_passes_worker_count_and_default_precision(compose: dict) -> None:
    services = compose["services"]
    ports = {name: [p.rsplit(":", 1)[-1] for p in s.get("ports", [])] for name, s in services.items()}
    assert ports["api"] == ["8000"]
    assert ports["prometheus"] == ["9090"]
    assert ports["grafana"] == ["3000"]
    env = services["api"]["environment"]
    assert env["QBERT_WORKERS"] == "${QBERT_WORKERS:-1}"
    assert env["QBERT_DEFAULT_PRECISION"] == "${QBERT_DEFAULT_PRECISION:-w8}"
    assert env["QBERT_HOST"] == "0.0.0.0"  # reachable from the Prometheus container


def test_compose_mounts_match_what_prometheus_and_grafana_read(compose: dict) -> None:
    services = compose["services"]
    prometheus_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert prometheus_mounts["./docker/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana_mounts = {target: source for source, target in (v.split(":")[:2] for v in services["grafana"]["volumes"])}
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "qbert.yml")["providers"][0]
    dashboards_in_container = provider["options"]["path"]
    assert grafana_mounts[dashboards_in_container] == "./docker/grafana/dashboards"
    assert grafana_mounts["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_in_container + "/")
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()


def test_prometheus_scrapes_the_compose_api_service(compose: dict) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "qbert"]
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "api" in compose["services"]
    resolved = {p.name for pattern in config["rule_files"] for p in (DOCKER / "prometheus").glob(pattern)}
    assert resolved == {p.name for p in RULE_FILES}


# ----- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_pinned_non_root_with_a_readiness_healthcheck() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.M)
    assert len([line for line in instructions if line.startswith("FROM ")]) >= 2
    assert "torch==2.13.0" in text
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", text, re.M)
    for line in instructions:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), source


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    copied = []
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied += [s.rstrip("/").removeprefix("./") for s in line.split()[1:-1]]
    assert sorted(set(copied)) == sorted(set(allowed))


# ----- Prometheus rules --------------------------------------------------------------------------


def test_every_metric_read_by_rules_and_dashboards_is_one_the_service_exports() -> None:
    exported = _exported_metric_names()
    expressions = rule_expressions() + dashboard_expressions({})
    read = set().union(*(metric_names(e.promql) for e in expressions))
    assert read, "no qbert_ metric found in any expression"
    assert read <= exported, sorted(read - exported)


def test_every_recorded_series_used_is_recorded() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = set()
    for expression in rule_expressions() + dashboard_expressions({}):
        used |= set(re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b|\bqbert:[a-z0-9_:]+\b", expression.promql))
    assert used <= recorded, sorted(used - recorded)


def test_alerts_are_labelled_annotated_and_take_the_checkable_form() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {"QbertHighServerErrorRate", "QbertNotReady", "QbertWorkerRestarts"}
    for alert in alerts:
        assert alert["labels"]["severity"] in {"page", "ticket"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert alert["annotations"]["description"], alert["alert"]
    rule_expressions()  # asserts the `<series> <op> <number>` form


def test_the_server_error_outcomes_are_exactly_the_services_5xx_and_429_codes() -> None:
    (ratio,) = [r for r in rules() if r.get("record") == "task_precision:qbert_requests_server_errors:ratio_rate5m"]
    listed = set(re.search(r'outcome=~"([^"]+)"', ratio["expr"]).group(1).split("|"))

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    server_side = {c.code for c in subclasses(ServiceError) if c.status >= 500 or c.status == 429}
    assert listed == server_side


# ----- Grafana -----------------------------------------------------------------------------------


def test_every_dashboard_panel_uses_a_provisioned_datasource() -> None:
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    uids = {s["uid"] for s in sources}
    assert [s["url"] for s in sources] == ["http://prometheus:9090"]
    dashboards = load_dashboards()
    assert dashboards
    for name, dashboard in dashboards.items():
        for panel in panels(dashboard):
            assert panel["datasource"]["uid"] in uids, (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, (name, panel["title"], target["refId"])
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"]["uid"] in uids, (name, variable["name"])


def test_dashboard_ids_refs_and_variables_are_consistent() -> None:
    for name, dashboard in load_dashboards().items():
        assert dashboard["uid"], name
        assert dashboard["schemaVersion"] >= 36, name  # Grafana 9+ JSON model
        nested = [p for row in dashboard["panels"] if row["type"] == "row" for p in row.get("panels", [])]
        ids = [p["id"] for p in dashboard["panels"] + nested]
        assert len(ids) == len(set(ids)), name
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        assert {"task", "precision"} <= defined
        for panel in panels(dashboard):
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), (name, panel["title"])
            text = " ".join([panel["title"], *(t["expr"] for t in panel["targets"])])
            used = set(re.findall(r"\$\{?(\w+)", text))
            assert used <= defined | GRAFANA_BUILTINS, (name, panel["title"], used - defined)
            if panel.get("repeat"):
                assert panel["repeat"] in defined
            for transformation in panel.get("transformations", []):
                renamed = transformation["options"].get("renameByName", {})
                for field in renamed:
                    match = re.fullmatch(r"Value #(\w+)", field)
                    assert not match or match.group(1) in refs, (name, panel["title"], field)


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    (dashboard,) = load_dashboards().values()
    by_type: dict[str, list[dict]] = {}
    for panel in panels(dashboard):
        by_type.setdefault(panel["type"], []).append(panel)
    exprs = " ".join(t["expr"] for p in panels(dashboard) for t in p["targets"])
    for quantile in ("p50", "p95", "p99"):
        assert f"qbert_request_duration_seconds:{quantile}" in exprs
    versus_bits = [p for p in by_type["xychart"] if "bits per weight" in p["title"]]
    assert {"latency", "accuracy"} <= {w for p in versus_bits for w in p["title"].split()}
    for p in versus_bits:
        assert any("qbert_model_bits_per_weight" in t["expr"] for t in p["targets"])
    for metric in (
        "qbert_requests_total",
        "qbert_batch_size_bucket",
        "qbert_queue_depth",
        "qbert_model_weight_bytes",
        "qbert_worker_resident_bytes",
    ):
        assert metric in exprs, metric
    assert "heatmap" in by_type
