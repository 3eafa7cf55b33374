"""`sluiceway top` against a server with TLS and bearer tokens: it had no way to present either
and exited 1 with UNAUTHENTICATED; it takes the load-test harness's `--tls-*` and `--token*` flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.certs import make_pki, write_tokens
from tests.support.repositories import write_model
from tests.support.server_process import REPO_ROOT, ServerProcess

INFER_TOKEN = "top-inference-token-0123456789"


def run_top(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "top", "--once", "--interval", "0.2", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_top_reads_a_server_with_tls_and_tokens(demo_repo: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tokens = write_tokens(tmp_path / "tokens", INFER_TOKEN, "top-admin-token-0123456789")
    token_file = tmp_path / "token"
    token_file.write_text(INFER_TOKEN + "\n")
    repo = tmp_path / "repo"
    write_model(
        repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", (demo_repo / "mlp" / "config.pbtxt").read_text()
    )
    args = ("--model-repository", str(repo), "--auth-tokens-file", str(tokens),
            "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key))  # fmt: skip
    with ServerProcess(*args) as server:
        metrics = (
            "--target",
            server.address,
            "--metrics-url",
            f"http://127.0.0.1:{server.metrics_port}/metrics",
        )
        shown = run_top(*metrics, "--tls-ca", str(pki.ca), "--token-file", str(token_file))
        assert shown.returncode == 0, shown.stderr
        (mlp,) = [line for line in shown.stdout.splitlines() if " mlp " in f" {line} "]
        assert "0.0" in mlp, shown.stdout
        # Without the token: one line that names the option to pass.
        refused = run_top(*metrics, "--tls-ca", str(pki.ca))
        assert refused.returncode == 1
        assert "UNAUTHENTICATED" in refused.stderr and "--token-file" in refused.stderr, refused.stderr
        unreadable = run_top(*metrics, "--tls-ca", str(tmp_path / "missing.pem"))
        assert unreadable.returncode == 2 and "--tls-ca: cannot read" in unreadable.stderr


@pytest.mark.parametrize("flags", [("--token", "a", "--token-file", "b"), ("--tls-key", "k.pem")])
def test_top_names_the_flag_that_does_not_fit(flags: tuple[str, ...]) -> None:
    run = run_top("--target", "127.0.0.1:1", *flags)
    assert run.returncode == 2 and run.stderr.startswith("sluiceway top: "), run.stderr
    assert flags[0] in run.stderr or "--tls-cert" in run.stderr
