"""deploy/kubernetes: both overlays render, every object validates offline against the Kubernetes
schemas (kubernetes-validate, strict: unknown fields fail), and the Deployment's probes, ports,
variables and drain time agree with what the server really reads (its settings model and parser)."""

from __future__ import annotations

from unittest import mock

import jsonschema
import kubernetes_validate
import pytest
import yaml

from server.observability.metrics_views import MetricViews
from tests.support.deploy_manifests import (
    DEPLOY,
    K8S_VERSIONS,
    OVERLAYS,
    container_env,
    one,
    overlay,
    settings_for,
)
from tests.support.kustomize_lite import Object, strategic_merge

# Custom resources kubernetes-validate has no schema for: checked by the structural schemas below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object"}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def server(objects: tuple[Object, ...]) -> Object:
    pod: Object = one(objects, "Deployment", "sluiceway")["spec"]["template"]["spec"]
    containers: list[Object] = pod["containers"]
    (container,) = containers
    return container


def exported_metrics() -> set[str]:
    """Counter and gauge names the server's /metrics shows (names need no live server)."""
    # A stand-in manager: building the views reads names and binds callables, never model state.
    return {view.name for view in MetricViews(mock.MagicMock(), lambda: 0).views()}


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(name: str) -> None:
    objects = overlay(name)
    kinds = {o["kind"] for o in objects}
    assert kinds == {
        "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor",
        "PersistentVolumeClaim",
    }  # fmt: skip
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            jsonschema.validate(obj, SERVICE_MONITOR)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_validation_catches_a_misspelt_field() -> None:
    deployment = dict(one(overlay("cpu"), "Deployment"))
    deployment["spec"] = {**deployment["spec"], "replica": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", OVERLAYS)
def test_probes_ports_and_variables_match_the_server_settings(name: str) -> None:
    objects = overlay(name)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = server(objects)
    settings = settings_for(container_env(container), container.get("args", []))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0" and settings.metrics
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": settings.port}, probe  # service "": the server
    # Drain: the kubelet's SIGKILL comes after the server's own shutdown_grace_s, not long after.
    grace = pod["terminationGracePeriodSeconds"]
    assert settings.shutdown_grace_s < grace <= settings.shutdown_grace_s + 15
    # A Service named sluiceway would otherwise set SLUICEWAY_PORT=tcp://IP:8001 in the pod: the
    # server refused it (exit 2) where the image alone sets the port (a tester).
    assert pod["enableServiceLinks"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(settings.model_repository)]["readOnly"] is True
    # The root filesystem is read-only: whatever the server writes goes under a mounted emptyDir.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[str(settings.cache_dir)]["name"]]
    assert settings.intra_op_threads >= 1  # from limits.cpu, not onnxruntime's count of node cores
    if name == "gpu":
        assert settings.execution_providers[0] == "CUDAExecutionProvider"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    else:
        assert settings.execution_providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize("name", OVERLAYS)
def test_services_budget_and_autoscaler_point_at_the_deployment(name: str) -> None:
    objects = overlay(name)
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in server(objects)["ports"]}
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert services["sluiceway-headless"]["spec"]["clusterIP"] == "None"
    assert services["sluiceway"]["spec"]["type"] == "ClusterIP"
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sluiceway"}
    assert hpa["minReplicas"] > budget["maxUnavailable"]  # a drain never takes the last replica
    monitor = one(objects, "ServiceMonitor")["spec"]
    (scraped,) = [s for s in services.values() if monitor["selector"]["matchLabels"].items()
                  <= s["metadata"]["labels"].items()]  # fmt: skip
    assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in scraped["spec"]["ports"]}


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_autoscaler_custom_metric_is_served_by_the_adapter_from_a_real_server_metric(name: str) -> None:
    hpa = one(overlay(name), "HorizontalPodAutoscaler")["spec"]
    custom = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    assert custom, "the HPA scales on a metric of the server"
    rules = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in rules["rules"]["custom"]}
    assert custom <= served
    metrics = exported_metrics()
    for rule in rules["rules"]["custom"]:
        series = rule["seriesQuery"].split("{")[0].strip("'\" ")
        assert series in metrics, f"{series} is not on the server's /metrics"
        assert rule["name"]["matches"] == f"^{series}$"
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_the_renderer_merges_lists_by_key_and_replaces_the_others() -> None:
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}], "tolerations": [{"k": 1}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}], "tolerations": [{"k": 2}]}
    merged = strategic_merge(base, patch)
    assert merged["containers"][0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert merged["tolerations"] == [{"k": 2}]
