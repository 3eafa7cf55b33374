"""A version's config, completed from what the version runs (blocks: call it off the event loop).

An ONNX model's config is completed from its graph (inputs, outputs, max_batch_size: see
server/models/onnx_completion.py). An identity model (`backend: "identity"`) has no model file: its config
must list everything, and is only checked (server/backends/identity_backend.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from protos import model_config_pb2 as mc
from server.backends.identity_backend import complete_identity
from server.backends.onnx_inspect import outputs_fed, read_signature
from server.models.config import IDENTITY
from server.models.onnx_completion import OnnxTensor, complete_from_onnx, server_fed_inputs
from server.models.repository import ModelSource


class CompletedVersion(NamedTuple):
    config: mc.ModelConfig
    inputs: list[OnnxTensor]  # the graph's inputs, initializers aside (none for an identity model)
    outputs: list[OnnxTensor]
    # Overridable initializers the config lists as inputs (clients may send them), each with its
    # initializer's shape (`default`).
    listed_initializers: list[OnnxTensor]


def complete_version(source: ModelSource, path: Path, default_max_batch_size: int) -> CompletedVersion:
    """The completed config of `source`'s version at `path`, and the graph's tensors."""
    config = mc.ModelConfig()
    config.CopyFrom(source.config)
    config.name = source.name
    where = source.where
    if config.backend == IDENTITY:
        return CompletedVersion(complete_identity(config, where), [], [], [])
    server_fed = server_fed_inputs(config)  # their dims tie to no request's (dim_ties.py)
    signature = read_signature(path, server_fed)

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
        outputs = outputs_fed(path, fed, server_fed)
    if fed or any(t.mixes_rows is not None for t in outputs):
        completed = complete(outputs)
    names = {entry.name for entry in completed.input}
    listed = [t for t in signature.overridable if t.name in names]
    return CompletedVersion(completed, signature.inputs, outputs, listed)
