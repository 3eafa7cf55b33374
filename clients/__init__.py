"""Python clients for sluiceway (and any KServe v2 gRPC server). Needs no onnxruntime.

    from clients import Client
    with Client("127.0.0.1:8001") as client:
        scores = client.infer("mlp", {"features": features})["scores"]

`Client` blocks, `AsyncClient` awaits and also streams (`async with client.stream("mlp") as s`).
Both take one endpoint or several (round-robin, health-checked, retried with backoff) and an
optional `fallback` endpoint used only while every primary is down. Errors are `SluicewayError`
subclasses named after gRPC status codes.
"""

from clients.aio_client import AsyncClient
from clients.base import MAX_TIMEOUT_S
from clients.endpoints import NO_RETRY, Backoff, ChannelOptions, RetryPolicy
from clients.errors import (
    DeadlineExceeded,
    FrameDropped,
    InternalError,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    Overloaded,
    SluicewayError,
    Unavailable,
    error_for,
)
from clients.security import TlsOptions
from clients.stream import StreamResult, StreamSession
from clients.sync_client import Client

__all__ = [
    "MAX_TIMEOUT_S",
    "NO_RETRY",
    "AsyncClient",
    "Backoff",
    "ChannelOptions",
    "Client",
    "DeadlineExceeded",
    "FrameDropped",
    "InternalError",
    "InvalidArgument",
    "MessageTooLarge",
    "NotFound",
    "Overloaded",
    "RetryPolicy",
    "SluicewayError",
    "StreamResult",
    "StreamSession",
    "TlsOptions",
    "Unavailable",
    "error_for",
]
