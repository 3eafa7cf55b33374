"""Three slips in loadtest/gpu_check.py that its mutation run brought up (forty-fifth session): a
warning about resnet_u8 had marked resnet's rows warned (a prefix match), a SIGTERM (the script's
time limit) during the demo build ended the run with no table, and one during the server's start
left the server to the script's watchdog."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import gpu_check as gc
from tests.unit.test_mutants_gpu_check_run import CUDA, GPU, Check, FakeServer, Main


@pytest.mark.parametrize(
    ("line", "model", "about"),
    [
        ("instance_group 'resnet_u8_0' KIND_GPU fell back", "resnet", False),
        ("model 'resnet_u8': CUDA not available", "resnet", False),
        ("x /resnet_u8/config.pbtxt: unused", "resnet", False),
        ("instance_group 'resnet_u8_0' KIND_GPU fell back", "resnet_u8", True),
        ("instance_group 'resnet_0' KIND_GPU (no GPU)", "resnet", True),
        ("instance_group 'resnet' (the group added)", "resnet", True),
        ("x /resnet/config.pbtxt: unused", "resnet", True),
        ("model resnet: instances resnet_0 x1 (cpu)", "resnet", True),
        ("model 'mlp' ready", "resnet", False),
    ],
)
def test_a_line_is_about_a_model_by_its_own_name_not_a_longer_one(line: str, model: str, about: bool) -> None:
    assert gc.mentions(line, model) is about


def test_a_sigterm_during_the_demo_build_still_writes_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main = Main(monkeypatch)

    def stopped_build(cache: Path) -> Path:
        main.record("demo", cache)
        raise gc.Stopped()

    monkeypatch.setattr(gc, "build_demo", stopped_build)
    assert gc.main(["--dry"]) == 1  # not every point measured
    assert [call[0] for call in main.calls] == ["budget", "context", "signal", "demo", "write"]
    report = main.calls[-1][1]
    assert report.log == ["[demo] stopped by SIGTERM (the time limit) while building: nothing measured"]
    assert "not every point was measured: [demo] stopped by SIGTERM" in capsys.readouterr().err


def test_a_sigterm_during_the_servers_start_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    check = Check(monkeypatch, tmp_path)
    FakeServer.error = gc.Stopped()  # type: ignore[assignment]
    with pytest.raises(gc.Stopped):
        check.run(CUDA, GPU)
    (server,) = FakeServer.made
    assert server.events == [("start", pytest.approx(server.events[0][1])), "stop"]
    assert "served" not in [call[0] for call in check.calls]
