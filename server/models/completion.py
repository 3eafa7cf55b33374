"""A version's config, completed from what the version runs (blocks: call it off the event loop).

An ONNX model's config is completed from its graph (inputs, outputs, max_batch_size: see
server/models/onnx_completion.py). An identity model (`backend: "identity"`) has no model file: its config
must list everything, and is only checked (server/backends/identity_backend.py).
"""

from __future__ import annotations

from pathlib import Path

from protos import model_config_pb2 as mc
from server.backends.identity_backend import complete_identity
from server.backends.onnx_inspect import outputs_fed, read_signature
from server.models.config import IDENTITY
from server.models.onnx_completion import OnnxTensor, complete_from_onnx
from server.models.repository import ModelSource


def complete_version(
    source: ModelSource, path: Path, default_max_batch_size: int
) -> tuple[mc.ModelConfig, list[OnnxTensor], list[OnnxTensor]]:
    """The completed config of `source`'s version at `path`, and the graph's inputs and outputs
    (none for an identity model)."""
    config = mc.ModelConfig()
    config.CopyFrom(source.config)
    config.name = source.name
    where = source.where
    if config.backend == IDENTITY:
        return complete_identity(config, where), [], []
    signature = read_signature(path)

    def complete(outputs: list[OnnxTensor]) -> mc.ModelConfig:
        return complete_from_onnx(
            config,
            signature.inputs,
            outputs,
            default_max_batch_size=default_max_batch_size,
            source=where,
            initializers=signature.overridable,
        )

    outputs = signature.outputs
    # The inputs a config lists come first: an output sized by an input clients may send says
    # so before a row mixing found upstream of it (a Range to the batch's largest value) does.
    completed = complete([t._replace(mixes_rows=None) for t in outputs])
    fed = {entry.name for entry in completed.input} & {t.name for t in signature.overridable}
    if fed:  # clients may send these: a size computed from one is the data's (onnx_data_sized.py)
        outputs = outputs_fed(path, fed)
    if fed or any(t.mixes_rows is not None for t in outputs):
        completed = complete(outputs)
    return completed, signature.inputs, outputs
