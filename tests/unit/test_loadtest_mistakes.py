"""A careless operator's loadtest mistakes, each said in one line before any load is sent: an
input file that is not there, an --out that is a file, a target where nothing listens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtest import inputs
from loadtest.cli import main
from loadtest.inputs import fetch_metadata, load_files
from loadtest.scenario import parse_target
from loadtest.start import TargetUnreachable
from protos import grpc_service_pb2 as pb
from tests.support.nothing_listening import nothing_listening


def test_a_missing_input_file_is_named(tmp_path: Path) -> None:
    metadata = pb.ModelMetadataResponse(name="m")
    metadata.inputs.add(name="features", datatype="FP32", shape=[-1, 4])
    with pytest.raises(ValueError, match=r"--input features: cannot read .*missing\.npy"):
        load_files(metadata, {"features": str(tmp_path / "missing.npy")}, 1)


def test_an_out_that_is_a_file_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The whole run happened, then a FileExistsError traceback lost its results.
    out = tmp_path / "afile"
    out.write_text("x")
    assert main(["--target", "127.0.0.1:1", "--model", "m", "--out", str(out), "--quiet"]) == 2
    assert f"--out {out} is not a folder" in capsys.readouterr().err


def test_a_target_where_nothing_listens_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "CONNECT_WAIT_S", 0.5)
    unreachable = r"accepted no connection within 0.5 s \(is a server listening there\?\)"
    with nothing_listening() as address, pytest.raises(TargetUnreachable, match=unreachable):
        fetch_metadata(parse_target(address, "m"))  # exit 3, as before a later step


def test_an_out_that_cannot_be_made_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"  # under a file: a traceback after the whole run
    assert main(["--target", "127.0.0.1:1", "--model", "m", "--out", str(out), "--quiet"]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_input_rows_must_match_the_batch_size_the_results_count(tmp_path: Path) -> None:
    """8 rows sent with the default --batch-size 1: throughput_ips read 8x too low."""
    metadata = pb.ModelMetadataResponse(name="m")
    metadata.inputs.add(name="features", datatype="FP32", shape=[-1, 4])
    np.save(tmp_path / "b8.npy", np.zeros((8, 4), np.float32))
    with pytest.raises(ValueError, match=r"holds 8 rows but --batch-size is 1: pass --batch-size 8"):
        load_files(metadata, {"features": str(tmp_path / "b8.npy")}, 1)
    assert load_files(metadata, {"features": str(tmp_path / "b8.npy")}, 8)["features"].shape == (8, 4)
