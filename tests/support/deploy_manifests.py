"""Helpers of the deploy tests: rendered manifests, offline schema checks, and the server settings a
container would run with, computed by the server's own settings model and command-line parser."""

from __future__ import annotations

import json
import math
import os
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

from server.cli import _INTERNAL, _parser, settings_from_args
from server.settings import ServerSettings
from tests.support.kustomize_lite import Object, load_all, render

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes we claim (native gRPC probes are GA from 1.27) and the newest with schemas.
K8S_VERSIONS = ("1.27", kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version()))
ENV_PREFIX = "SLUICEWAY_"


@cache
def overlay(name: str) -> tuple[Object, ...]:
    return tuple(render(DEPLOY / "kubernetes" / "overlays" / name))


def kserve() -> list[Object]:
    return [obj for path in sorted((DEPLOY / "kserve").glob("*.yaml")) for obj in load_all(path)]


def one(objects: tuple[Object, ...] | list[Object], kind: str, name: str | None = None) -> Object:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} objects of kind {kind} named {name}"
    return found[0]


@cache
def _schema_dir(version: str) -> Any:
    schemas = kubernetes_validate.utils.importlib_resources.files("kubernetes_validate")
    return schemas / "kubernetes-json-schema" / f"v{version}.0-local-strict"


def part_validator(name: str, version: str) -> jsonschema.protocols.Validator:
    """A strict validator for a part of an object (`container-v1`: io.k8s.api.core.v1.Container),
    with the bundled definitions, for the core types inside custom resources."""
    folder = _schema_dir(version)
    schema = json.loads((folder / f"{name}.json").read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(schema) @ (Resource.from_contents(definitions) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def quantity_cores(value: str) -> int:
    """A CPU quantity ("2", "500m") as whole cores, rounded up as resourceFieldRef with divisor 1."""
    return math.ceil(int(value[:-1]) / 1000) if value.endswith("m") else math.ceil(float(value))


def container_env(container: Object) -> dict[str, str]:
    """The container's SLUICEWAY_* variables as the kubelet would set them."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        field = item["valueFrom"]["resourceFieldRef"]
        assert field["resource"] == "limits.cpu" and field.get("divisor", "1") == "1", item
        env[item["name"]] = str(quantity_cores(container["resources"]["limits"]["cpu"]))
    return env


def setting_names(env: dict[str, str]) -> set[str]:
    """Each variable's setting; fails on a variable the server does not read (a typo is silent)."""
    names = set()
    for key in env:
        assert key.startswith(ENV_PREFIX), key
        name = key[len(ENV_PREFIX) :].lower()
        assert name in ServerSettings.model_fields and name not in _INTERNAL, f"{key} is no setting"
        names.add(name)
    return names


def settings_for(env: dict[str, str], args: list[str]) -> ServerSettings:
    """What `sluiceway serve *args` reads with exactly `env` set: the real parser and settings model."""
    setting_names(env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return settings_from_args(_parser().parse_args(["serve", *args]))
