"""RepositoryModelLoad requests with Triton's optional parameters, for both clients."""

from __future__ import annotations

from collections.abc import Mapping

from protos import grpc_service_pb2 as pb


def load_request(
    model: str, config: str | None = None, files: Mapping[str, bytes] | None = None
) -> pb.RepositoryModelLoadRequest:
    """`config`: a JSON ModelConfig used instead of the repository's config.pbtxt; `files`:
    '<version>/<name>' -> contents, sent as `file:` parameters (the server requires `config` too)."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        request.parameters["config"].string_param = config
    for path, data in (files or {}).items():
        request.parameters[f"file:{path}"].bytes_param = data
    return request
