"""The fuzz target for request decoding and validation, shared by the hypothesis tests
(tests/unit/test_fuzz_decode.py) and the atheris run (scripts/fuzz.sh).

`check_bytes(data)` parses `data` as a ModelInferRequest (a DecodeError is the transport's
business, not ours) and sends it down the server's own request path up to the batcher: decode,
validate inputs and outputs, request parameters, the admission record (`InferJob.prepare`), then
the response-cache key. Any exception other than one the error table maps to a client status is
a failure: a client's mistake must never answer INTERNAL or UNKNOWN.

The models are real ModelVersion values (signature and batcher) whose backend is never run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf.message import DecodeError

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import status_for
from server.models.response_cache import request_key
from server.models.versions import ModelVersion
from server.protocol.infer_job import InferJob
from server.protocol.validate import Signature

NOT_CLIENT_ERRORS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

# Every datatype, as tests/integration/conftest.py's identity model has them: in_<TYPE> [N, 3].
WIRE_TYPES: dict[str, int] = {
    "BOOL": mc.TYPE_BOOL,
    "UINT8": mc.TYPE_UINT8,
    "UINT16": mc.TYPE_UINT16,
    "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64,
    "INT8": mc.TYPE_INT8,
    "INT16": mc.TYPE_INT16,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "FP16": mc.TYPE_FP16,
    "FP32": mc.TYPE_FP32,
    "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING,
}


def mlp_config() -> mc.ModelConfig:
    """The demo `mlp`: features FP32 [N, 64] -> scores FP32 [N, 2], max_batch_size 128."""
    config = mc.ModelConfig(name="mlp", max_batch_size=128)
    config.input.add(name="features", data_type=mc.TYPE_FP32, dims=[64])
    config.output.add(name="scores", data_type=mc.TYPE_FP32, dims=[2])
    return config


def identity_config(max_batch_size: int = 8) -> mc.ModelConfig:
    """The integration zoo's `identity`: in_<TYPE> [N, 3] -> out_<TYPE> [N, 3] for every datatype."""
    config = mc.ModelConfig(name="identity", max_batch_size=max_batch_size)
    for wire, config_type in WIRE_TYPES.items():
        config.input.add(name=f"in_{wire}", data_type=config_type, dims=[3])
        config.output.add(name=f"out_{wire}", data_type=config_type, dims=[3])
    return config


def unbatched_config() -> mc.ModelConfig:
    """No batch dimension, a variable dimension, text and an optional input."""
    config = mc.ModelConfig(name="unbatched", max_batch_size=0)
    config.input.add(name="tokens", data_type=mc.TYPE_INT64, dims=[-1, 2])
    config.input.add(name="text", data_type=mc.TYPE_STRING, dims=[2])
    config.input.add(name="mask", data_type=mc.TYPE_BOOL, dims=[-1], optional=True)
    config.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[-1])
    config.output.add(name="label", data_type=mc.TYPE_STRING, dims=[1])
    return config


def narrow_config() -> mc.ModelConfig:
    """Datatypes narrower than their typed contents field (int_contents carries INT8 as int32)."""
    config = mc.ModelConfig(name="narrow", max_batch_size=4)
    for wire in ("BOOL", "UINT8", "UINT16", "INT8", "INT16"):
        config.input.add(name=f"in_{wire}", data_type=WIRE_TYPES[wire], dims=[-1])
    config.output.add(name="out", data_type=mc.TYPE_FP32, dims=[1])
    return config


def fuzz_configs() -> list[mc.ModelConfig]:
    return [mlp_config(), identity_config(), unbatched_config(), narrow_config()]


class _NeverRuns:
    async def run(self, inputs: Tensors) -> Tensors:
        raise AssertionError("the fuzz target never runs a model")


def served(config: mc.ModelConfig, policy: BatchingPolicy | None = None) -> ModelVersion:
    """A ModelVersion for `config` with a real (never started) batcher; nothing runs on it."""
    policy = policy or BatchingPolicy(max_batch_size=config.max_batch_size, priority_levels=3)
    return ModelVersion(
        name=config.name,
        version=1,
        config=config,
        signature=Signature.from_config(config),
        backends=[],
        batcher=DynamicBatcher([_NeverRuns()], policy, ModelStats()),
        stats=ModelStats(),
    )


def fuzz_models() -> dict[str, ModelVersion]:
    return {config.name: served(config) for config in fuzz_configs()}


def is_client_error(exc: BaseException) -> bool:
    """Whether the error table answers `exc` with a client status (not INTERNAL or UNKNOWN)."""
    code, _, expected = status_for(exc)
    return expected and code not in NOT_CLIENT_ERRORS


def check_request(
    request: pb.ModelInferRequest, model: ModelVersion, remaining_s: float | None = None
) -> InferJob | None:
    """The server's request path up to the batcher: the prepared job, or None when the request
    was refused with a client status. Anything else propagates: that is the failure."""
    try:
        job = InferJob.prepare(model, request, remaining_s)
    except Exception as exc:
        if is_client_error(exc):
            return None
        raise
    request_key(model.name, model.version_str, job.inputs)
    return job


def route(request: pb.ModelInferRequest, models: Mapping[str, ModelVersion], salt: int) -> ModelVersion:
    """The request's model when it names one of `models`, else one chosen by `salt`, so that
    arbitrary bytes reach every signature."""
    model = models.get(request.model_name)
    if model is not None:
        return model
    ordered: Sequence[ModelVersion] = list(models.values())
    return ordered[salt % len(ordered)]


def check_bytes(data: bytes, models: Mapping[str, ModelVersion]) -> InferJob | None:
    """The fuzz target: raw request bytes through parsing and the request path (see above)."""
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return None
    return check_request(request, route(request, models, len(data)))
