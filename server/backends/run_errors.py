"""onnxruntime's run errors as the caller's status: its message goes to every request of the batch,
as Triton's onnxruntime backend passes it on, instead of a generic INTERNAL.

onnxruntime raises its own classes (onnxruntime.capi.onnxruntime_pybind11_state: InvalidArgument,
Fail, RuntimeException, ...) with messages such as "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got
invalid dimensions for input: x ...". Its INVALID_ARGUMENT is the inputs' fault (INVALID_ARGUMENT),
and so is its FAIL for an integer division by zero; anything else it raises is INTERNAL with its
message. Both are logged here, once per batch.
"""

from __future__ import annotations

import logging
import re

from batcher.log_ration import Ration, rationed
from server.errors import ModelRefusedInput, ModelRunFailed

log = logging.getLogger(__name__)

MESSAGE_MAX_CHARS = 1000  # onnxruntime's messages are a few lines; a caller never gets more
_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
# onnxruntime 1.31 refuses an integer Div/Mod by zero with FAIL, not INVALID_ARGUMENT, though the
# zero is the caller's (int_division_guard.py answers the same on builds that would trap instead).
_ZERO_DIVISOR = re.compile(r"Integer (division|modulo) by zero")


def is_onnxruntime_error(err: BaseException) -> bool:
    return type(err).__module__.startswith("onnxruntime")


def run_failure(
    model: str, err: Exception, log_it: bool = True, ration: Ration | None = None
) -> ModelRefusedInput | ModelRunFailed:
    """The exception every request of a batch whose run raised `err` (onnxruntime's) is answered
    with; logged unless not `log_it` (a run that is no batch, whose caller logs it its own way),
    a refusal of the inputs (the client's) within `ration` where one is given."""
    text = " ".join(_PREFIX.sub("", str(err)).split()) or type(err).__name__
    if len(text) > MESSAGE_MAX_CHARS:
        text = text[:MESSAGE_MAX_CHARS] + "..."
    if type(err).__name__ == "InvalidArgument" or _ZERO_DIVISOR.search(text):
        end = rationed(ration) if log_it else None
        if end is not None:
            log.warning("model %s: onnxruntime refused a batch's inputs: %s%s", model, text, end)
        return ModelRefusedInput(f"onnxruntime refused the inputs of model '{model}': {text}")
    if log_it:
        log.error("model %s: onnxruntime failed a batch (%s): %s", model, type(err).__name__, text)
    return ModelRunFailed(f"onnxruntime failed the run of model '{model}': {text}")
