"""Whether the version serving a step's model now still fits the ensemble's step, per request.

An ensemble is checked against its step models when it loads (ensemble_config.plan_ensemble), and
a step naming no version runs on the version serving its model when the step runs, so a step
model's reload is picked up without reloading the ensemble (README "Ensembles"). A reload that no
longer fits the step (an input_map or output_map key the model no longer has, a required input the
step does not give, a max_batch_size below the ensemble's that the request's rows pass, an input's
datatype other than the tensor the step gives it: `retyped`, or dims other than at the ensemble's
load that the tensor does not fit: `reshaped`) is not the
client's mistake: its request is valid by the ensemble's own config. It is ChangedByReload
(UNAVAILABLE, retryable, as a request a reload handed to a version it no longer fits:
InferJob.retarget), not INVALID_ARGUMENT, and had been INTERNAL (a KeyError) for a renamed tensor.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from batcher.types import Array
from server.errors import ChangedByReload, WrongDatatype, WrongShape
from server.models.ensemble_config import Step, agree, fit_batch_dim
from server.protocol.validate import Signature


def _misfit_names(step: Step, signature: Signature) -> str | None:
    """What of the step's maps the model no longer has (None: every name fits)."""
    for model_input in step.input_map:
        if model_input not in signature.inputs:
            return (
                f"it has no input '{model_input}' (its inputs: {sorted(signature.inputs)}), "
                "which the step's input_map names"
            )
    for model_output in step.output_map:
        if model_output not in signature.outputs:
            return (
                f"it has no output '{model_output}' (its outputs: {sorted(signature.outputs)}), "
                "which the step's output_map names"
            )
    needed = next(
        (n for n, s in signature.inputs.items() if not s.optional and n not in step.input_map), None
    )
    if needed is not None:
        return f"it needs input '{needed}', which the step's input_map does not give"
    return None


def _misfit_rows(
    signature: Signature, ensemble_max_batch_size: int, inputs: Mapping[str, Array]
) -> str | None:
    """The step's max_batch_size below the ensemble's and passed by the request's rows (a step
    with none, or at least the ensemble's, checks its rows itself, as a request to it)."""
    limit = signature.max_batch_size
    if not 0 < limit < ensemble_max_batch_size:
        return None
    rows = max((array.shape[0] for array in inputs.values() if array.ndim > 0), default=0)
    if limit < rows <= ensemble_max_batch_size:
        return (
            f"its max_batch_size {limit} is below the ensemble's {ensemble_max_batch_size}, and the "
            f"request has {rows} rows"
        )
    return None


def _refusal(step: Step, version: str, why: str) -> ChangedByReload:
    return ChangedByReload(
        f"model '{step.model}' (version {version}, serving it now) no longer fits the ensemble: "
        f"{why} (it changed since the ensemble loaded: load either again so that they fit)"
    )


def step_inputs(
    step: Step,
    signature: Signature,
    version: str,
    ensemble_max_batch_size: int,
    tensors: Mapping[str, Array],
    batched: Mapping[str, bool],
) -> dict[str, Array]:
    """The step model's inputs from the ensemble's tensors (a batch dim fitted as Triton's ensembles
    fit it); ChangedByReload when the version serving it (`signature`, `version`) no longer fits
    the step. The caller names the ensemble and the step (ensemble._named)."""
    why = _misfit_names(step, signature)
    if why is not None:
        raise _refusal(step, version, why)
    batches = signature.max_batch_size > 0
    inputs = {
        model_input: fit_batch_dim(
            tensors[tensor], batched[tensor], signature.inputs[model_input].dims, batches
        )
        for model_input, tensor in step.input_map.items()
    }
    why = _misfit_rows(signature, ensemble_max_batch_size, inputs)
    if why is not None:
        raise _refusal(step, version, why)
    return inputs


def reshaped(
    step: Step,
    signature: Signature,
    version: str,
    wrong: WrongShape,
    loaded: tuple[int, ...] | None,
    shape: tuple[int, ...],
) -> WrongShape | ChangedByReload:
    """A step input of `shape` that the step's model refused (its check_inputs): the reload's
    (ChangedByReload) when the dims the ensemble loaded against (`loaded`) took it, else the
    client's (with a -1 in the ensemble's own dims a request's shape can miss a step's fixed one,
    before or after a reload)."""
    now = signature.inputs[wrong.name].dims
    rows = 1 if signature.max_batch_size > 0 else 0  # a batching model's dims leave its rows out
    if loaded is None or now == loaded or not agree(loaded, shape[rows:]):
        return wrong
    why = f"its input '{wrong.name}' takes dims {list(now)}, not {list(loaded)} as when the ensemble loaded"
    return _refusal(step, version, why)


def retyped(step: Step, version: str, wrong: WrongDatatype) -> ChangedByReload:
    """A step input in another datatype than the step's model now takes (its check_inputs found
    it). Never the client's: the ensemble's own inputs were checked against its config, which fitted
    the step at load, and its inner tensors are what the earlier steps made (one reloaded, maybe)."""
    why = (
        f"its input '{wrong.name}' takes {wrong.model}, and the step gives it "
        f"'{step.input_map[wrong.name]}' as {wrong.sent}"
    )
    return _refusal(step, version, why)
