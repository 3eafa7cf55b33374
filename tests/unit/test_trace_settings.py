"""Triton's trace settings rules (server/observability/trace_settings.py): what a model and the
server show, shadowing and clearing, the checks, and which requests the gate lets through."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest, Unsupported
from server.observability.trace_settings import TraceSettings


def settings(tracer: bool = True) -> TraceSettings:
    return TraceSettings(tracer, 0.5)


def admitted(gate: TraceSettings, model: str, requests: int, has_parent: bool = False) -> list[int]:
    """The 1-based numbers of the requests the gate let through."""
    return [n for n in range(1, requests + 1) if gate.admit(model, has_parent)]


def test_the_values_at_start_with_and_without_a_tracer() -> None:
    assert settings().view("") == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": ["1"],
        "trace_count": ["-1"],
        "log_frequency": ["0"],  # shown, as Triton's response has it (a tester's tools read it back)
        "trace_mode": ["opentelemetry"],
        "tracing": ["on"],
        "tracing_sample_ratio": ["0.5"],
    }
    off = settings(tracer=False).view("m")
    assert off["trace_level"] == ["OFF"] and off["tracing"] == ["off"]


def test_a_models_values_shadow_the_servers_until_cleared() -> None:
    gate = settings()
    gate.update("m", {"trace_rate": ["12"]})
    gate.update("", {"trace_rate": ["56"], "trace_count": ["78"], "trace_level": ["OFF"]})
    assert gate.view("m")["trace_rate"] == ["12"]  # its own
    assert gate.view("m")["trace_count"] == ["78"] and gate.view("m")["trace_level"] == ["OFF"]  # followed
    assert gate.view("other")["trace_rate"] == ["56"]
    gate.update("", {"trace_rate": [], "trace_count": []})  # back to the values at start
    assert gate.view("")["trace_rate"] == ["1"] and gate.view("")["trace_count"] == ["-1"]
    assert gate.view("m")["trace_rate"] == ["12"]
    gate.update("m", {"trace_rate": [], "trace_level": []})  # back to the server's
    assert gate.view("m") == gate.view("")


def test_levels_are_listed_in_one_order_and_off_goes_alone() -> None:
    gate = settings()
    gate.update("", {"trace_level": ["TENSORS", "TIMESTAMPS", "TENSORS"]})
    assert gate.view("")["trace_level"] == ["TIMESTAMPS", "TENSORS"]
    with pytest.raises(InvalidRequest, match="Expect only one trace level 'OFF'"):
        gate.update("", {"trace_level": ["OFF", "TIMESTAMPS"]})


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"trace_levels": ["OFF"]}, "unknown trace setting 'trace_levels'"),
        ({"trace_level": ["FULL"]}, "Unable to parse 'trace_level', got: 'FULL'"),
        ({"trace_rate": ["abc"]}, "Unable to parse 'trace_rate', got: 'abc'"),
        ({"trace_rate": ["0"]}, "Unable to parse 'trace_rate', got: '0'; expected a whole number from 1"),
        ({"trace_rate": ["+5"]}, "Unable to parse 'trace_rate'"),
        ({"trace_rate": ["4294967296"]}, "to 4294967295"),
        ({"trace_rate": ["1", "2"]}, "expect only 1 value for 'trace_rate'"),
        (
            {"trace_count": ["-2"]},
            "Unable to parse 'trace_count', got: '-2'; expected a whole number from -1 ",
        ),
        ({"trace_count": ["2147483648"]}, "to 2147483647"),
        ({"log_frequency": ["-1"]}, "Unable to parse 'log_frequency'"),
        ({"trace_mode": ["triton"]}, "trace_mode 'triton' is not available"),
        ({"tracing": ["on"]}, "'tracing' is set at start (--tracing)"),
        ({"tracing_sample_ratio": ["1"]}, "set at start (--tracing-sample-ratio)"),
    ],
)
def test_a_bad_key_or_value_is_invalid_argument_naming_it(changes: dict[str, list[str]], says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        settings().update("", changes)
    assert says in str(refused.value)


def test_trace_file_is_refused_in_tritons_words() -> None:
    with pytest.raises(
        Unsupported, match=r"^trace file location can not be updated through network protocol"
    ):
        settings().update("m", {"trace_file": ["model.log"]})


def test_one_bad_value_changes_nothing() -> None:
    gate = settings()
    before = gate.view("")
    with pytest.raises(InvalidRequest):
        gate.update("", {"trace_rate": ["7"], "trace_count": ["x"]})
    assert gate.view("") == before


def test_trace_mode_is_accepted_and_log_frequency_shown_per_model() -> None:
    gate = settings()
    gate.update("m", {"log_frequency": ["100"], "trace_mode": ["opentelemetry"]})
    # log_frequency changes nothing (no trace files) but is shown back, as Triton's response has it
    assert gate.view("m") == {**gate.view(""), "log_frequency": ["100"]}


def test_trace_rate_lets_one_in_n_through() -> None:
    gate = settings()
    gate.update("", {"trace_rate": ["3"]})
    assert admitted(gate, "m", 9) == [3, 6, 9]


def test_trace_count_limits_the_traces_and_counts_down() -> None:
    gate = settings()
    gate.update("", {"trace_count": ["2"]})
    assert admitted(gate, "m", 5) == [1, 2]
    assert gate.view("")["trace_count"] == ["0"]
    gate.update("", {"trace_count": []})  # unlimited again
    assert admitted(gate, "m", 2) == [1, 2]


def test_a_models_own_rate_and_count_are_its_own() -> None:
    gate = settings()
    gate.update("m", {"trace_rate": ["2"], "trace_count": ["1"]})
    assert admitted(gate, "m", 6) == [2]
    assert admitted(gate, "other", 3) == [1, 2, 3]
    assert gate.view("m")["trace_count"] == ["0"] and gate.view("")["trace_count"] == ["-1"]


def test_level_off_stops_every_request_even_with_a_callers_context() -> None:
    gate = settings()
    gate.update("m", {"trace_level": ["OFF"]})
    assert admitted(gate, "m", 3) == [] and admitted(gate, "m", 3, has_parent=True) == []
    assert admitted(gate, "other", 2) == [1, 2]
    gate.update("m", {"trace_level": []})
    assert admitted(gate, "m", 2) == [1, 2]


def test_a_callers_context_is_left_to_its_parent_uncounted() -> None:
    gate = settings()
    gate.update("", {"trace_rate": ["100"], "trace_count": ["1"]})
    assert admitted(gate, "m", 3, has_parent=True) == [1, 2, 3]
    assert gate.view("")["trace_count"] == ["1"]


def test_a_level_without_a_tracer_is_said_once() -> None:
    gate = settings(tracer=False)
    assert not gate.update("", {"trace_rate": ["5"]})  # still OFF: nothing to say
    assert gate.update("", {"trace_level": ["TIMESTAMPS"]})
    assert not gate.update("m", {"trace_level": ["TIMESTAMPS"]})
    assert not settings().update("", {"trace_level": ["TIMESTAMPS"]})


def test_log_frequency_set_is_shown_back() -> None:
    gate = settings()
    gate.update("", {"log_frequency": ["50"]})
    assert gate.view("")["log_frequency"] == ["50"]


def test_the_settings_of_a_model_gone_are_dropped() -> None:
    # An uploaded model unloaded: its settings had been kept for good (a later model of that name
    # inherited trace_level OFF; 1,500 names held ~1.5 MB).
    gate = settings()
    gate.update("gone", {"trace_level": ["OFF"]})
    gate.update("kept", {"trace_rate": ["5"]})
    gate.keep(lambda name: name == "kept")
    assert gate.view("gone")["trace_level"] == ["TIMESTAMPS"]
    assert gate.view("kept")["trace_rate"] == ["5"]
