"""A hostile tester's findings on the command lines (h19 cli2): the load-test harness against a
target that never answers, `sluiceway top`'s options, `sluiceway drift` on a model with nothing
to score, an ensemble that is its own step."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest import cli, inputs
from loadtest import runner as runner_module
from loadtest.runner import RunRecord
from loadtest.scenario import Scenario


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)  # cli.main takes SIGTERM as Ctrl-C
    yield
    signal.signal(signal.SIGTERM, before)


def _nothing_listening() -> Iterator[str]:
    with socket.socket() as free:  # bound, never listened: the connection is refused
        free.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{free.getsockname()[1]}"


def _never_answering() -> Iterator[str]:
    with socket.socket() as held:  # listening, never accepted: the kernel completes TCP, no HTTP/2
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        yield f"127.0.0.1:{held.getsockname()[1]}"


@pytest.mark.usefixtures("sigterm_kept")
@pytest.mark.parametrize("target", [_nothing_listening, _never_answering])
def test_a_target_unreachable_from_the_start_exits_3_not_2(
    target: Callable[[], Iterator[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The real metadata fetch, without the worker processes (a second each to start).
    def run_scenario(
        scenario: Scenario, tick: Any, on_record: Callable[[RunRecord], None]
    ) -> list[RunRecord]:
        inputs.payloads_for(scenario.targets[0], scenario, "closed")
        raise AssertionError("the metadata of a target that never answered")

    monkeypatch.setattr(runner_module, "run_scenario", run_scenario)
    monkeypatch.setattr(inputs, "CONNECT_WAIT_S", 0.5, raising=False)  # keeps the test short
    for address in target():
        assert cli.main(["--target", address, "--concurrency", "2", "--no-plots", "--quiet"]) == 3
        err = capsys.readouterr().err
        assert err == (
            f"sluiceway-loadtest: target {address} accepted no connection within 0.5 s (is a server "
            "listening there?); no step was measured\n"
        )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        # 70000 had printed 70,016 lines, polling ports past 65535; serve takes at most 64 workers.
        (("--workers", "70000"), "--workers must be 1 to 64"),
        (("--workers", "0"), "--workers must be 1 to 64"),
        # serve's own rule: worker i's metrics on port + i, the last at most 65535.
        (("--workers", "2", "--metrics-url", "http://127.0.0.1:65535/metrics"), "65536 is above 65535"),
        # grpc core's "Source Location Trace" block and UNKNOWN "Failed to create channel", exit 1.
        (("--target", ""), "--target must not be empty"),
        (("--target", " "), "--target must not be empty"),
        # urllib opened the file; the caption showed its first line.
        (("--metrics-url", "file:///etc/passwd"), "--metrics-url must be an http:// or https:// URL"),
        (("--metrics-url", "ftp://127.0.0.1/metrics"), "--metrics-url must be an http:// or https:// URL"),
    ],
)
def test_top_refuses_options_that_cannot_fit_exit_2_naming_them(
    flags: tuple[str, ...], named: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli import main

    monkeypatch.delenv("SLUICEWAY_TOKEN", raising=False)
    with socket.socket() as free:  # nothing listens: a check that let it through fails fast, not 2
        free.bind(("127.0.0.1", 0))
        target = ("--target", f"127.0.0.1:{free.getsockname()[1]}")
        assert main(["top", *target, *flags, "--once", "--interval", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sluiceway top: ") and named in err and len(err.splitlines()) == 1, err


def test_top_takes_the_most_workers_that_fit() -> None:
    from server.observability.top import worker_urls

    urls = worker_urls("http://127.0.0.1:65472/metrics", 64)
    assert len(urls) == 64 and urls[-1] == "http://127.0.0.1:65535/metrics"


def _bytes_only_samples(directory: Path, files: int) -> None:
    """Sample files as the server writes a model whose tensors are all BYTES (lengths and bytes)."""
    directory.mkdir(parents=True)
    for i in range(files):
        lengths, data = np.full((4, 2), 3, dtype=np.int64), np.frombuffer(b"abc" * 8, dtype=np.uint8)
        np.savez(
            directory / f"samples-{i:020d}-1-000001.npz",
            **{"len:in:X": lengths, "bytes:in:X": data, "len:out:Y": lengths, "bytes:out:Y": data},
            rows=np.array([4]), time_ns=np.array([i]), load_ns=np.array([7]),
        )  # fmt: skip


def test_drift_of_a_bytes_only_model_says_there_is_nothing_to_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    # More rows than both windows: "not enough sampled rows yet" (exit 1) sent the operator waiting.
    _bytes_only_samples(tmp_path / "b" / "1", files=6)
    argv = ["drift", "b", "--sample-dir", str(tmp_path), "--drift-reference-samples", "8",
            "--drift-window-samples", "8"]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "nothing to score" in err and "BYTES" in err and "not enough" not in err, err


def test_an_ensemble_that_is_its_own_step_is_refused_naming_the_cycle() -> None:
    from server.models.config import ConfigError, parse_config, validate_config

    config = parse_config(
        """name: "e" platform: "ensemble" max_batch_size: 8
        input { name: "X" data_type: TYPE_FP32 dims: [4] }
        output { name: "Z" data_type: TYPE_FP32 dims: [4] }
        ensemble_scheduling {
          step { model_name: "add1" model_version: -1 input_map { key: "X" value: "X" }
                 output_map { key: "Y" value: "mid" } }
          step { model_name: "e" model_version: -1 input_map { key: "X" value: "mid" }
                 output_map { key: "Y" value: "Z" } }
        }""",
        "e/config.pbtxt",
    )
    # Lazy, it had answered "model 'e' is not ready (loading: a load is under way)" for good.
    with pytest.raises(
        ConfigError, match=r"ensemble 'e' step 2 \(model 'e'\): an ensemble cannot be its own step"
    ):
        validate_config(config, "e/config.pbtxt")
