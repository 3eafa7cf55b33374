"""Careless settings refused at start-up (exit 2, one line naming the setting) instead of a wrong
server or a crash later: empty values, grpc arguments past a C int, worker metrics ports past
65535, inf and nan in float settings, an empty provider list."""

from __future__ import annotations

import pytest

from server.cli import main
from tests.unit.test_settings_flags import clean_environment, settings

__all__ = ["clean_environment"]  # autouse: no SLUICEWAY_* leaks in, and nothing starts

EMPTY = "must not be empty"


@pytest.mark.parametrize(
    ("flags", "environ", "named", "why"),
    [
        # Path("") is "." : the current directory had been served, every folder a failed model.
        (("--model-repository", ""), {}, "model_repository", EMPTY),
        ((), {"SLUICEWAY_MODEL_REPOSITORY": ""}, "model_repository", EMPTY),
        (("--cache-dir", " "), {}, "cache_dir", EMPTY),
        (("--sample-dir", ""), {}, "sample_dir", EMPTY),
        (("--host", ""), {}, "host", EMPTY),  # had exited 1 with grpc's raw error
        ((), {"SLUICEWAY_METRICS_HOST": ""}, "metrics_host", EMPTY),
        ((), {"SLUICEWAY_GRPC_SERVER_ARGS": ""}, "grpc_server_args", EMPTY),
        ((), {"SLUICEWAY_TRACING": ""}, "tracing", EMPTY),  # every setting alike, not only paths
        # A C int in grpc core: these had passed and crashed at start with an OverflowError.
        (("--grpc-server-args", "grpc.http2.lookahead_bytes=2147483648"), {}, "grpc_server_args", "-2^31"),
        (("--grpc-server-args", "grpc.a=99999999999999999999"), {}, "grpc_server_args", "2^31-1"),
        (("--grpc-server-args", "grpc.a=-2147483649"), {}, "grpc_server_args", "2^31-1"),
        # Worker 1 would serve metrics on 65536: it had failed in the worker, the parent exiting 1.
        (("--workers", "2", "--metrics-port", "65535"), {}, "metrics_port 65535", "65536"),
        (("--workers", "8", "--metrics-port", "65530"), {}, "metrics_port 65530", "65537"),
        (("--cost-per-core-hour", "inf"), {}, "cost_per_core_hour", "finite"),
        (("--cost-per-gpu-hour", "nan"), {}, "cost_per_gpu_hour", ""),
        (("--run-timeout-s", "inf"), {}, "run_timeout_s", "finite"),
        (("--shutdown-grace-s", "inf"), {}, "shutdown_grace_s", "finite"),
        (("--stream-idle-timeout-s", "inf"), {}, "stream_idle_timeout_s", "finite"),
        (("--execution-providers", ""), {}, "execution_providers", "no execution provider"),
        (("--execution-providers", " , "), {}, "execution_providers", "no execution provider"),
        ((), {"SLUICEWAY_EXECUTION_PROVIDERS": "[]"}, "execution_providers", "no execution provider"),
        # Digit separators: argparse's float() and pydantic took "0.1_0" as 0.1, "1_0" as 10.
        (("--sample-ratio", "0.1_0"), {}, "sample_ratio", "plain number"),
        ((), {"SLUICEWAY_SAMPLE_RATIO": "0.1_0"}, "sample_ratio", "plain number"),
        (("--port", "80_01"), {}, "port", "plain number"),
        (("--max-queue-size", "1_000"), {}, "max_queue_size", "plain number"),
        # h19 cli2: an empty model name had started a server that loaded nothing ("no such model").
        (("--model-control-mode", "explicit", "--load-model", ""), {}, "load_model", "empty name"),
        (
            ("--model-control-mode", "explicit", "--load-model", "mlp", "--load-model", " "),
            {},
            "load_model",
            "empty name",
        ),
        (("--model-control-mode", "explicit"), {"SLUICEWAY_LOAD_MODEL": '[""]'}, "load_model", "empty name"),
        # Spaces around a number had passed (pydantic strips them); the sample_ratio parameter refuses them.
        (("--sample-ratio", " 0.5"), {}, "sample_ratio", "without spaces"),
        (("--max-queue-size", " 5"), {}, "max_queue_size", "without spaces"),
        ((), {"SLUICEWAY_PORT": " 48001 "}, "port", "without spaces"),
        # int() takes any Unicode digit: "=\u0661" had been 1, where "=+1" was refused.
        (("--grpc-server-args", "grpc.http2.bdp_probe=\u0661"), {}, "grpc_server_args", "<integer>"),
        (("--grpc-server-args", "grpc.a=1,grpc.b=2,grpc.a=3"), {}, "grpc_server_args", "'grpc.a' is given"),
    ],
)
def test_a_careless_setting_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    environ: dict[str, str],
    named: str,
    why: str,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sluiceway: invalid setting") and named in err and why in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_edges_that_fit_are_accepted() -> None:
    assert settings("--workers", "2", "--metrics-port", "65534").metrics_port == 65534
    assert settings("--workers", "8", "--metrics-port", "0").metrics_port == 0  # free ports
    assert settings("--workers", "2", "--metrics-port", "65535", "--no-metrics").workers == 2
    args = "grpc.a=2147483647,grpc.b=-2147483648"
    assert settings("--grpc-server-args", args).grpc_server_args == args
    assert settings().grpc_server_args is None
    assert settings("--run-timeout-s", "0", "--cost-per-core-hour", "0.05").run_timeout_s == 0
