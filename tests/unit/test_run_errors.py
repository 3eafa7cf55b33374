"""server/backends/run_errors.py: onnxruntime's run errors as the caller's status and message.
onnxruntime's exception classes are stood in for by classes of the same names and module, which
is all the module looks at (tests/integration/test_run_errors.py has onnxruntime raise real ones)."""

from __future__ import annotations

import logging

import pytest

from server.backends.run_errors import MESSAGE_MAX_CHARS, is_onnxruntime_error, run_failure
from server.errors import ModelRefusedInput, ModelRunFailed

ORT_MODULE = "onnxruntime.capi.onnxruntime_pybind11_state"


def ort_error(name: str, message: str) -> Exception:
    """An exception of class `name` from onnxruntime's module, as onnxruntime raises them."""
    cls = type(name, (Exception,), {"__module__": ORT_MODULE})
    return cls(message)


def test_only_onnxruntimes_classes_are_its_errors() -> None:
    assert is_onnxruntime_error(ort_error("Fail", "x"))
    assert is_onnxruntime_error(type("E", (Exception,), {"__module__": "onnxruntime"})())
    assert not is_onnxruntime_error(ValueError("x"))
    assert not is_onnxruntime_error(type("Fail", (Exception,), {"__module__": "server.onnxruntime"})())


def test_invalid_argument_is_the_inputs_fault_with_onnxruntimes_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    err = ort_error(
        "InvalidArgument",
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x\n  index: 1 Got: 3",
    )
    with caplog.at_level(logging.INFO, logger="server.backends.run_errors"):
        got = run_failure("mlp", err)
    assert type(got) is ModelRefusedInput
    said = "Got invalid dimensions for input: x index: 1 Got: 3"
    assert str(got) == f"onnxruntime refused the inputs of model 'mlp': {said}"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"model mlp: onnxruntime refused a batch's inputs: {said}"


def test_any_other_error_is_a_failed_run_with_its_class_named(caplog: pytest.LogCaptureFixture) -> None:
    err = ort_error("RuntimeException", "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")
    with caplog.at_level(logging.INFO, logger="server.backends.run_errors"):
        got = run_failure("resnet", err)
    assert type(got) is ModelRunFailed
    assert str(got) == "onnxruntime failed the run of model 'resnet': Non-zero status code"
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert (
        record.getMessage()
        == "model resnet: onnxruntime failed a batch (RuntimeException): Non-zero status code"
    )


def test_only_a_leading_prefix_is_taken_off() -> None:
    text = "see [ONNXRuntimeError] : 1 : FAIL : inner"
    assert str(run_failure("m", ort_error("Fail", text))).endswith(f": {text}")
    # The prefix's code is any number of digits, its name any upper-case word with underscores.
    assert str(
        run_failure("m", ort_error("Fail", "[ONNXRuntimeError] : 13 : NOT_IMPLEMENTED : op"))
    ).endswith("model 'm': op")


def test_an_empty_message_names_the_class() -> None:
    assert str(run_failure("m", ort_error("Fail", ""))) == "onnxruntime failed the run of model 'm': Fail"
    assert str(run_failure("m", ort_error("Fail", "[ONNXRuntimeError] : 1 : FAIL :  \n "))).endswith(": Fail")


@pytest.mark.parametrize("length", [1000, 1001, 6000])
def test_a_caller_gets_at_most_a_thousand_characters_of_it(length: int) -> None:
    text = "y" * length
    tail = str(run_failure("m", ort_error("Fail", text))).split("model 'm': ", 1)[1]
    assert tail == (text if length <= 1000 else "y" * 1000 + "...")
    assert MESSAGE_MAX_CHARS == 1000


@pytest.mark.parametrize("what", ["division", "modulo"])
def test_an_integer_division_by_zero_is_the_inputs_fault(what: str) -> None:
    # onnxruntime 1.31's own words for a client's zero divisor: FAIL, though the zero is the input's.
    err = ort_error(
        "Fail",
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Div node. "
        f"Name:'Div_3' Status Message: element_wise_ops.cc:692 Compute Integer {what} by zero",
    )
    got = run_failure("div", err, log_it=False)
    assert type(got) is ModelRefusedInput
    assert f"Integer {what} by zero" in str(got) and "Name:'Div_3'" in str(got)
