"""The deployment files (docker-compose, Prometheus, Grafana) and the PromQL expressions in them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((DOCKER / "prometheus" / "rules").glob("*.yml"))
ALERT_TESTS = DOCKER / "prometheus" / "tests" / "alerts.test.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
K8S = REPO_ROOT / "deploy" / "k8s"
K8S_MANIFESTS = sorted(K8S.glob("*.yaml"))
K8S_VERSION = "1.33"  # the Kubernetes release whose schema every manifest is validated against

# `<series> <op> <number>`: the one form an alert expression takes (docker/prometheus/rules/qbert-alerts.yml).
ALERT_FORM = re.compile(r"^(?P<series>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[0-9.]+)$", re.S)
# Grafana's `label_values(<selector>, <label>)` variable query.
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def rules() -> list[dict]:
    """Every rule of every rule file, with `group` and `file` added."""
    found = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            found += [rule | {"group": group["name"], "file": path.name} for rule in group["rules"]]
    return found


def panels(dashboard: dict) -> list[dict]:
    """Every panel, those nested in collapsed rows included; rows themselves left out."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


@dataclass(frozen=True)
class Expression:
    where: str  # e.g. "dashboard.json: panel 'Throughput' target A"
    promql: str


def rule_expressions() -> list[Expression]:
    """Recording rules as written; alerts as `<series> <op> bool <number>`, which has data whenever the series has."""
    found = []
    for rule in rules():
        expr = rule["expr"].strip()
        if "alert" in rule:
            form = ALERT_FORM.match(expr)
            assert form, f"alert {rule['alert']}: {expr!r} is not `<series> <op> <number>`"
            expr = f"{form['series']} {form['op']} bool {form['threshold']}"
        found.append(Expression(f"{rule['file']}: {rule.get('record') or rule['alert']}", expr))
    return found


def substitute(promql: str, variables: dict[str, str]) -> str:
    """Replace Grafana variables (`$name`, `${name}`) the way Grafana would before querying."""
    for name, value in sorted(variables.items(), key=lambda item: -len(item[0])):
        promql = promql.replace("${" + name + "}", value).replace("$" + name, value)
    return promql


def dashboard_expressions(variables: dict[str, str]) -> list[Expression]:
    """Every panel target and every variable query of every dashboard, with `variables` substituted."""
    found = []
    for name, dashboard in load_dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{name}: panel {panel['title']!r} target {target['refId']}"
                found.append(Expression(where, substitute(target["expr"], variables)))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            values = LABEL_VALUES.match(query)
            assert values, f"{name}: variable {variable['name']}: only label_values(...) queries are checked"
            found.append(Expression(f"{name}: variable {variable['name']}", substitute(values["selector"], variables)))
    return found


def metric_names(promql: str) -> set[str]:
    """The `qbert_*` metric names an expression reads (recorded series `a:b:c` excluded)."""
    return set(re.findall(r"(?<![\w:])(qbert_[a-z0-9_]+)(?![\w:])", promql))


def k8s_objects() -> list[dict[str, Any]]:
    """Every object of every manifest under deploy/k8s (the kustomization included), with `file` added."""
    return [
        document | {"file": path.name}
        for path in K8S_MANIFESTS
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [o for o in k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter's rules (deploy/k8s/prometheus-adapter.yaml's config.yaml)."""
    config = yaml.safe_load(k8s_object("ConfigMap", "prometheus-adapter-qbert")["data"]["config.yaml"])
    return list(config["rules"])


def adapter_query(rule: dict[str, Any], namespace: str, pods: list[str]) -> str:
    """The PromQL prometheus-adapter runs for `rule` when the HPA asks for `pods` of `namespace`: its metricsQuery
    with the templates filled in as the adapter fills them (series name, label matchers, group-by labels)."""
    series = re.match(r"^\s*(\w+)", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )
