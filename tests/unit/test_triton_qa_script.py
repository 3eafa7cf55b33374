"""scripts/triton_qa.sh checks the Triton path as the harness does (loadtest/triton_qa/harness.py
extract_qa) before it makes .venv-qa or installs anything: a mistyped path had made the venv and
run pip first. A stand-in venv ($QA_VENV) notes what the script would run in it; nothing is
installed and nothing is fetched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.server_process import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "triton_qa.sh"
REFUSED = "neither a git repository nor a Triton checkout with qa/common"


@pytest.fixture()
def venv(tmp_path: Path) -> Path:
    """A venv whose python only notes its arguments (pip installs, the harness run)."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../ran"\n')
    python.chmod(0o755)
    return tmp_path / "venv"


def qa(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QA_VENV": str(venv)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def ran(venv: Path) -> list[str]:
    log = venv / "ran"
    return log.read_text().splitlines() if log.exists() else []


def git(where: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True, timeout=60)


def test_a_path_that_is_no_triton_source_is_refused_before_any_install(venv: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in ("/nonexistent", str(empty)):  # missing; a folder without qa/common
        done = qa(venv, path)
        assert done.returncode == 2
        assert done.stderr.strip() == f"{path}: {REFUSED}"
    assert ran(venv) == []  # no pip install, no harness
    # A checkout with qa/common goes on to install and run the harness.
    triton = tmp_path / "triton"
    (triton / "qa" / "common").mkdir(parents=True)
    (triton / "qa" / "common" / "gen_qa_models.py").write_text("")
    assert qa(venv, str(triton), "--suites", "L0_infer").returncode == 0
    lines = ran(venv)
    assert lines[0] == "-m pip install -q --upgrade pip"
    assert lines[-1] == f"-m loadtest.triton_qa.qa --triton {triton} --suites L0_infer"


def test_a_git_repository_is_checked_at_rev(venv: Path, tmp_path: Path) -> None:
    triton = tmp_path / "triton"
    triton.mkdir()
    git(triton, "init", "-q")
    git(triton, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    done = qa(venv, str(triton), "--rev", "no-such-rev")
    assert done.returncode == 2 and REFUSED in done.stderr
    assert ran(venv) == []
    assert qa(venv, str(triton), "--rev=HEAD").returncode == 0
    assert ran(venv)[-1] == f"-m loadtest.triton_qa.qa --triton {triton} --rev=HEAD"
