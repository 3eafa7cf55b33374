"""`sluiceway-loadtest realtime` against a server that refuses streams (its stream limit): the
refused streams' chunks are offered and counted as errors with the server's status and message,
as the plain harness counts them (test_loadtest_claims.py). They had vanished from the report: 22
chunks/s offered of 60, 2 NO_ANSWER."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.realtime import main
from tests.support.server_process import ServerProcess

RATE = 20  # chunks/s of each stream: 20 due in the 1 s window


def test_refused_streams_count_their_chunks_as_errors_with_the_servers_status(
    demo_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerProcess("--model-repository", str(demo_repo), "--max-streams", "1") as server:
        argv = ["--target", server.address, "--model", "mlp", "--rate", str(RATE), "--streams", "3",
                "--duration-s", "1", "--warmup-s", "0", "--drain-s", "5", "--processes", "1",
                "--out", str(tmp_path)]  # fmt: skip
        assert main(argv) == 0
    (step,) = json.loads((tmp_path / "realtime.json").read_text())
    streams = step["per_stream"]
    for s in streams:  # every stream's schedule offered, every chunk accounted for
        assert s["scheduled"] == pytest.approx(RATE, abs=1), s
        assert s["computed"] + s["dropped"] + sum(s["errors"].values()) == s["scheduled"], s
    assert step["offered_per_s"] == pytest.approx(3 * RATE, abs=3)
    refused = [s for s in streams if s["computed"] == 0]
    assert len(refused) == 2, streams  # one stream admitted, two refused
    for s in refused:
        assert s["errors"] == {"RESOURCE_EXHAUSTED": s["scheduled"]}, s
        assert not s["real_time"]
    assert step["errors"] == {"RESOURCE_EXHAUSTED": sum(s["scheduled"] for s in refused)}
    assert "max_streams=1" in step["error_messages"]["RESOURCE_EXHAUSTED"]
    assert "RESOURCE_EXHAUSTED x" in capsys.readouterr().err
