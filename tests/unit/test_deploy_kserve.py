"""deploy/kserve: kubernetes-validate has no schemas for KServe's custom resources, so their
structure is checked here, the core types inside them (the runtime's containers, the predictor's
ports) against the bundled Kubernetes schemas, and the runtime's flags through the server's own
parser and settings (on top of the image's variables, as the container would run)."""

from __future__ import annotations

import jsonschema
import pytest

from tests.support.deploy_manifests import K8S_VERSIONS, REPO, kserve, one, part_validator, settings_for
from tests.support.dockerfile import parse

REQUIRED = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {"metadata": {"type": "object", "required": ["name"]}, "spec": {"type": "object"}},
}
SERVING_RUNTIME_SPEC = {
    "type": "object",
    "required": ["supportedModelFormats", "containers", "protocolVersions"],
    "properties": {
        "supportedModelFormats": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object", "required": ["name"]},
        },
        "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
        "multiModel": {"type": "boolean"},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "containers": {"type": "array", "minItems": 1},
    },
}
PREDICTOR = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "model": {
            "type": "object",
            "required": ["modelFormat", "runtime", "protocolVersion", "storageUri"],
            "properties": {"modelFormat": {"type": "object", "required": ["name"]}},
        },
    },
}


def runtime_and_service() -> tuple[dict, dict]:  # type: ignore[type-arg]
    objects = kserve()
    assert {(o["apiVersion"], o["kind"]) for o in objects} == {
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    }
    for obj in objects:
        jsonschema.validate(obj, REQUIRED)
    return one(objects, "ServingRuntime"), one(objects, "InferenceService")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_structure_and_the_core_types_inside_validate(version: str) -> None:
    runtime, service = runtime_and_service()
    jsonschema.validate(runtime["spec"], SERVING_RUNTIME_SPEC)
    jsonschema.validate(service["spec"]["predictor"], PREDICTOR)
    container = part_validator("container-v1", version)
    for item in runtime["spec"]["containers"]:
        container.validate(item)
    port = part_validator("containerport-v1", version)
    for item in service["spec"]["predictor"]["model"]["ports"]:
        port.validate(item)


def test_a_misspelt_container_field_fails() -> None:
    runtime, _ = runtime_and_service()
    broken = {**runtime["spec"]["containers"][0], "arg": ["--port=1"]}
    with pytest.raises(jsonschema.ValidationError):
        part_validator("container-v1", K8S_VERSIONS[-1]).validate(broken)


def test_runtime_flags_and_ports_match_the_server() -> None:
    runtime, _ = runtime_and_service()
    (container,) = runtime["spec"]["containers"]
    image_env = {k: v for k, v in parse(REPO / "Dockerfile")[-1].env().items() if k.startswith("SLUICEWAY_")}
    settings = settings_for(image_env, container["args"])
    assert str(settings.model_repository) == "/mnt/models"  # where KServe's storage initializer writes
    assert settings.host == "0.0.0.0"
    (port,) = container["ports"]
    assert port == {"name": "h2c", "containerPort": settings.port, "protocol": "TCP"}  # h2c: gRPC
    # The readiness probe asks grpc.health.v1 on the gRPC port (a TCP check passes during loading).
    assert container["readinessProbe"]["grpc"] == {"port": settings.port}
    annotations = runtime["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == settings.metrics_port
    assert settings.metrics_host == "0.0.0.0"


def test_the_inference_service_uses_the_runtime_with_a_canary() -> None:
    runtime, service = runtime_and_service()
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert 0 < predictor["canaryTrafficPercent"] < 100
    assert model["ports"] == runtime["spec"]["containers"][0]["ports"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
