"""Triton's TraceSetting and LogSettings RPCs through tritonclient (sync and aio) against a real
server: server-wide and per-model trace settings, clearing, bad values, log settings and their
effect on the server's log, and the admin scope they need under tokens."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.certs import write_tokens
from tests.support.server_process import ServerProcess

INFER_TOKEN = "settings-infer-0123456789"
ADMIN_TOKEN = "settings-admin-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
INFER = {"authorization": f"Bearer {INFER_TOKEN}"}
AT_START = {
    "trace_level": ["TIMESTAMPS"],
    "trace_rate": "1",
    "trace_count": "-1",
    "log_frequency": "0",  # shown, as in Triton's response
    "trace_mode": "opentelemetry",
    "tracing": "on",
    "tracing_sample_ratio": "1",
}


@pytest.fixture(scope="module")
def traced() -> Iterator[ServerProcess]:
    with ServerProcess("--tracing", "--tracing-exporter", "none") as server:
        yield server


@pytest.fixture
def client(traced: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(traced.address) as opened:
        yield opened
        for model in ("mlp", ""):  # back to the values at start for the next test
            clear: dict[str, Any] = {"trace_level": None, "trace_rate": None, "trace_count": None}
            opened.update_trace_settings(model_name=model, settings=clear)


def settings_of(client: grpcclient.InferenceServerClient, model: str = "") -> dict[str, Any]:
    return dict(client.get_trace_settings(model_name=model, as_json=True)["settings"])


def plain(shown: dict[str, Any]) -> dict[str, Any]:
    """Triton's JSON form: one value as a string, a level as a list."""
    return {k: v["value"] if k == "trace_level" else v["value"][0] for k, v in shown.items()}


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_the_settings_at_start_server_wide_and_per_model(client: grpcclient.InferenceServerClient) -> None:
    assert plain(settings_of(client)) == AT_START
    assert plain(settings_of(client, "mlp")) == AT_START


def test_a_models_settings_shadow_the_servers_until_cleared(client: grpcclient.InferenceServerClient) -> None:
    shown = client.update_trace_settings(model_name="mlp", settings={"trace_rate": "12"}, as_json=True)
    assert plain(shown["settings"])["trace_rate"] == "12"
    server_wide = {"trace_rate": "56", "trace_count": "78", "trace_level": ["OFF"]}
    shown = client.update_trace_settings(settings=server_wide, as_json=True)
    assert plain(shown["settings"]) == {**AT_START, **server_wide}
    assert plain(settings_of(client, "mlp")) == {**AT_START, **server_wide, "trace_rate": "12"}
    client.update_trace_settings(settings={"trace_rate": None, "trace_count": None})
    assert plain(settings_of(client)) == {**AT_START, "trace_level": ["OFF"]}
    shown = client.update_trace_settings(model_name="mlp", settings={"trace_rate": None}, as_json=True)
    assert plain(shown["settings"]) == {**AT_START, "trace_level": ["OFF"]}  # follows the server's


@pytest.mark.parametrize(
    ("model", "changes", "code", "says"),
    [
        ("", {"trace_rat": "5"}, "INVALID_ARGUMENT", "unknown trace setting 'trace_rat'"),
        ("", {"trace_rate": "abc"}, "INVALID_ARGUMENT", "Unable to parse 'trace_rate', got: 'abc'"),
        ("", {"trace_level": ["LOUD"]}, "INVALID_ARGUMENT", "Unable to parse 'trace_level', got: 'LOUD'"),
        ("mlp", {"trace_count": "-5"}, "INVALID_ARGUMENT", "Unable to parse 'trace_count', got: '-5'"),
        ("mlp", {"trace_file": "model.log"}, "UNIMPLEMENTED", "trace file location can not be updated"),
        ("nope", {"trace_rate": "5"}, "NOT_FOUND", "Request for unknown model: 'nope' is not found"),
    ],
)
def test_bad_keys_values_and_models_are_refused_and_change_nothing(
    client: grpcclient.InferenceServerClient, model: str, changes: dict[str, Any], code: str, says: str
) -> None:
    error = refused(lambda: client.update_trace_settings(model_name=model, settings=changes))
    assert error.status() == f"StatusCode.{code}" and says in error.message()
    assert plain(settings_of(client)) == AT_START and plain(settings_of(client, "mlp")) == AT_START


def test_an_unknown_model_is_not_found_for_a_read_too(client: grpcclient.InferenceServerClient) -> None:
    error = refused(lambda: client.get_trace_settings(model_name="does-not-exist"))
    assert error.status() == "StatusCode.NOT_FOUND"


def test_aio_trace_and_log_settings(traced: ServerProcess) -> None:
    async def calls() -> tuple[Any, Any, Any, Any]:
        async with aioclient.InferenceServerClient(traced.address) as client:
            trace = await client.get_trace_settings(model_name="mlp", as_json=True)
            changed = await client.update_trace_settings(settings={"trace_count": "3"}, as_json=True)
            await client.update_trace_settings(settings={"trace_count": None})
            logs = await client.get_log_settings(as_json=True)
            log_changed = await client.update_log_settings(settings={"log_warning": True}, as_json=True)
            return trace, changed, logs, log_changed

    trace, changed, logs, log_changed = asyncio.run(calls())
    assert plain(trace["settings"]) == AT_START
    assert plain(changed["settings"])["trace_count"] == "3"
    assert logs["settings"]["log_verbose_level"] == {"uint32_param": 0}
    assert log_changed == logs


def test_the_trace_level_is_kept_without_a_tracer_and_says_tracing_is_off() -> None:
    with ServerProcess() as server, grpcclient.InferenceServerClient(server.address) as client:
        assert plain(settings_of(client))["trace_level"] == ["OFF"]
        shown = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, as_json=True)
        assert plain(shown["settings"])["trace_level"] == ["TIMESTAMPS"]
        assert plain(shown["settings"])["tracing"] == "off"
        server.wait_for_output("but tracing is off (start the server with --tracing)")


def test_log_settings_read_change_and_refuse_as_triton(
    client: grpcclient.InferenceServerClient, traced: ServerProcess
) -> None:
    at_start = {
        "log_file": {"string_param": ""},
        "log_info": {"bool_param": True},
        "log_warning": {"bool_param": True},
        "log_error": {"bool_param": True},
        "log_verbose_level": {"uint32_param": 0},
        "log_format": {"string_param": "default"},
    }
    assert client.get_log_settings(as_json=True)["settings"] == at_start
    shown = client.update_log_settings(settings={"log_verbose_level": 1}, as_json=True)["settings"]
    assert shown == {**at_start, "log_verbose_level": {"uint32_param": 1}}
    channel = grpc.insecure_channel(traced.address)
    error = refused(lambda: client.update_log_settings(settings={"log_file": "x.log"}))
    assert error.status() == "StatusCode.UNIMPLEMENTED"
    assert error.message().startswith("log file location can not be updated through network protocol")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    for bad, says in (
        ({"log_verbose_level": True}, "expect uint32 for 'log_verbose_level'"),
        ({"log_info": 1}, "expect boolean for 'log_info'"),
        ({"log_format": "xml"}, "invalid argument for log_format, got: 'xml'"),
        ({"log_colour": True}, "unknown log setting 'log_colour'"),
    ):
        request = pb.LogSettingsRequest()  # typed as meant here (tritonclient types by the name)
        for name, value in bad.items():
            field = {bool: "bool_param", int: "uint32_param", str: "string_param"}[type(value)]
            setattr(request.settings[name], field, value)
        with pytest.raises(grpc.RpcError) as caught:
            stub.LogSettings(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert says in caught.value.details(), bad
    channel.close()
    client.update_log_settings(settings={"log_verbose_level": 0})
    assert client.get_log_settings(as_json=True)["settings"] == at_start


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tokens = write_tokens(tmp_path_factory.mktemp("secrets") / "tokens", INFER_TOKEN, ADMIN_TOKEN)
    with ServerProcess("--auth-tokens-file", str(tokens)) as server:
        yield server


def test_the_settings_need_an_admin_token(guarded: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(guarded.address) as client:
        for call in (
            lambda h: client.get_trace_settings(headers=h),
            lambda h: client.update_trace_settings(settings={"trace_rate": "2"}, headers=h),
            lambda h: client.get_log_settings(headers=h),
        ):
            error = refused(lambda call=call: call(INFER))
            assert error.status() == "StatusCode.PERMISSION_DENIED" and "'admin' scope" in error.message()
            assert call(ADMIN) is not None
        client.update_trace_settings(settings={"trace_rate": None}, headers=ADMIN)


def test_verbose_and_iso8601_change_the_servers_own_lines(guarded: ServerProcess) -> None:
    """A refused call writes a DEBUG line (server/security/auth.py): none at verbose 0; one after
    log_verbose_level 1, its time in ISO 8601 after log_format ISO8601."""
    marker = "refused /inference.GRPCInferenceService/LogSettings"
    with grpcclient.InferenceServerClient(guarded.address) as client:
        refused(lambda: client.get_log_settings(headers=INFER))  # verbose 0: no line
        settings = {"log_verbose_level": 1, "log_format": "ISO8601"}
        client.update_log_settings(settings=settings, headers=ADMIN)
        try:
            refused(lambda: client.get_log_settings(headers=INFER))
            guarded.wait_for_output(marker)
        finally:
            back = {"log_verbose_level": 0, "log_format": "default"}
            client.update_log_settings(settings=back, headers=ADMIN)
    (line,) = [line for line in guarded.lines if marker in line]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z DEBUG server\.security\.auth: ", line), line
