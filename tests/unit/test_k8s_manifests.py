"""deploy/k8s: every manifest valid against the Kubernetes schema of a stated release (kubernetes-validate, strict:
an unknown field is an error), and the objects consistent with one another and with the service."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deployment import K8S, K8S_MANIFESTS, K8S_VERSION, adapter_query, adapter_rules, k8s_object, k8s_objects

pytestmark = pytest.mark.unit

CUSTOM_RESOURCES = {"ServiceMonitor", "ServingRuntime", "InferenceService", "Kustomization"}


def _validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate({k: v for k, v in resource.items() if k != "file"}, K8S_VERSION, strict=True)


def _as_pod(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A custom resource's pod-shaped part as a Pod, so the core schema checks its containers."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


@pytest.mark.parametrize(
    "resource",
    [o for o in k8s_objects() if o["kind"] not in CUSTOM_RESOURCES],
    ids=lambda o: f"{o['file']}:{o['kind']}",
)
def test_each_core_manifest_validates_against_the_stated_release(resource: dict[str, Any]) -> None:
    _validate(resource)


def test_the_validator_refuses_an_unknown_field_and_a_wrong_type() -> None:
    deployment = k8s_object("Deployment")
    misspelled = copy.deepcopy(deployment)
    misspelled["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError, match="replicaz"):
        _validate(misspelled)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(wrong)


def test_custom_resources_core_parts_validate_too() -> None:
    runtime = k8s_object("ServingRuntime")
    _validate(_as_pod("runtime", {"containers": runtime["spec"]["containers"]}))
    monitor = k8s_object("ServiceMonitor")
    # its selector is a LabelSelector: checked where the core schema has one
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"}}
    _validate(pdb | {"spec": {"selector": monitor["spec"]["selector"], "maxUnavailable": 1}})
    assert {o["apiVersion"] for o in k8s_objects() if o["kind"] in CUSTOM_RESOURCES} == {
        "monitoring.coreos.com/v1",
        "serving.kserve.io/v1alpha1",
        "serving.kserve.io/v1beta1",
        "kustomize.config.k8s.io/v1beta1",
    }


def test_the_deployment_runs_as_the_issue_asks() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["artifacts"]["mountPath"] == "/artifacts"
    assert mounts["artifacts"]["readOnly"] is True
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["artifacts"] == k8s_object("PersistentVolumeClaim")["metadata"]["name"]
    # Writable places a read-only root needs: every cache the service writes points under /tmp, an emptyDir.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    caches = ("QBERT_KERNEL_CACHE", "QBERT_AOT_CACHE", "TORCHINDUCTOR_CACHE_DIR", "HOME")
    assert all(env[name].startswith("/tmp") for name in caches)


def test_service_pdb_monitor_and_autoscaler_point_at_the_deployment() -> None:
    deployment = k8s_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, pdb, monitor, hpa = (
        k8s_object(kind) for kind in ("Service", "PodDisruptionBudget", "ServiceMonitor", "HorizontalPodAutoscaler")
    )
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    exposed = {rule["name"]["as"] for rule in adapter_rules()}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] in exposed  # prometheus-adapter serves it


def test_the_kustomization_lists_every_manifest_but_the_kserve_path() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S_MANIFESTS} - {"kustomization.yaml", "kserve.yaml"}


def test_the_kserve_runtime_serves_the_inference_service_over_v2() -> None:
    runtime, service = k8s_object("ServingRuntime"), k8s_object("InferenceService")
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] in formats
    assert model["runtime"] == runtime["metadata"]["name"]
    (container,) = runtime["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "{{.Name}}" in container["args"]  # the InferenceService's name is the catalog model it serves


def test_adapter_queries_fill_every_template() -> None:
    for rule in adapter_rules():
        query = adapter_query(rule, "qbert", ["pod-a", "pod-b"])
        assert "<<" not in query
        assert 'pod=~"pod-a|pod-b"' in query
