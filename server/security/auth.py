"""Bearer-token auth: a grpc.aio interceptor that checks `authorization: Bearer <token>` per RPC.

Which scope an RPC needs is one table (`required_scope`): health checks are open (load balancers
and Kubernetes probe without credentials), repository load/unload and the trace and log settings
need `admin`, everything else
(inference, metadata, statistics, reflection, and any RPC added later) needs at least `inference`
unless it is added to a table here; every RPC of our admin service (sluiceway.admin.v1.Admin)
needs `admin`. A missing, malformed or unknown token is UNAUTHENTICATED; a known token without
the scope is PERMISSION_DENIED. Messages say what is missing, never echo the
token. With no tokens file there is no interceptor at all, so plaintext serving pays nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from protos import admin_pb2 as apb
from protos import grpc_service_pb2 as pb
from server.protocol.calls import QuietRefusals
from server.security.tokens import GRANTS, Scope, TokenTable, load_tokens

if TYPE_CHECKING:
    from server.settings import ServerSettings

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
ADMIN_SERVICE = apb.DESCRIPTOR.services_by_name["Admin"].full_name  # sluiceway.admin.v1: all admin
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# ServerLive/ServerReady are the protocol's own health checks (tritonclient's is_server_live and
# is_server_ready, orchestrators' probes), as open as grpc.health.v1: they tell only up or not.
OPEN_METHODS = frozenset({f"/{INFERENCE_SERVICE}/ServerLive", f"/{INFERENCE_SERVICE}/ServerReady"})
# RPCs that change what the server serves or what it records (Triton's trace and log settings,
# read and changed through one RPC each): admin.
ADMIN_METHODS = frozenset(
    f"/{INFERENCE_SERVICE}/{name}"
    for name in ("RepositoryModelLoad", "RepositoryModelUnload", "TraceSetting", "LogSettings")
) | frozenset(f"/{ADMIN_SERVICE}/{m.name}" for m in apb.DESCRIPTOR.services_by_name["Admin"].methods)
BEARER = "bearer"  # the scheme name is case-insensitive (RFC 7235)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def required_scope(method: str) -> Scope | None:
    """The scope a full method name ("/package.Service/Method") needs; None: open to anyone."""
    if method.startswith(HEALTH_PREFIX) or method in OPEN_METHODS:
        return None
    if method in ADMIN_METHODS:
        return Scope.ADMIN
    return Scope.INFERENCE  # closed by default: reflection, and RPCs nobody classified


def bearer_token(metadata: Any) -> str | None:
    """The token of the first `authorization` metadata entry; "" when it is not 'Bearer <token>'."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == BEARER else ""
    return None


def check(table: TokenTable, method: str, metadata: Any) -> tuple[grpc.StatusCode, str] | None:
    """None when `method` may be called with this metadata, else the status and message to answer."""
    needed = required_scope(method)
    if needed is None:
        return None
    token = bearer_token(metadata)
    if token is None:
        return grpc.StatusCode.UNAUTHENTICATED, "missing credentials: send 'authorization: Bearer <token>'"
    if not token:
        return grpc.StatusCode.UNAUTHENTICATED, "the authorization metadata is not 'Bearer <token>'"
    scope = table.scope_of(token)
    if scope is None:
        return grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"
    if needed not in GRANTS[scope]:
        name = method.rsplit("/", 1)[-1]
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"{name} needs a token with the '{needed.value}' scope; this one has '{scope.value}'",
        )
    return None


def _refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str, refusals: QuietRefusals
) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary or streaming) that answers `code` without running anything."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await refusals.read_until_quiet(requests)  # grpc/grpc#36066: see there
        await context.abort(code, message)

    # No deserializer: the refused request stays bytes and is never parsed.
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse_stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses RPCs whose bearer token is missing, unknown or lacks the scope `required_scope` says."""

    def __init__(self, table: TokenTable, refusals: QuietRefusals) -> None:
        self._table = table
        self._refusals = refusals

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        method: str = handler_call_details.method
        refused = check(self._table, method, handler_call_details.invocation_metadata)
        if refused is None:
            return handler
        log.debug("refused %s: %s", method, refused[0].name)
        return _refusal(handler, *refused, self._refusals)


def server_interceptors(
    settings: ServerSettings, refusals: QuietRefusals
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors the settings ask for (none without a tokens file); `refusals`: the server's
    bound on refused streams read until quiet (server/protocol/calls.py)."""
    if settings.auth_tokens_file is None:
        return []
    if settings.tls_cert_file is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("bearer tokens are checked but TLS is off: tokens cross the network in clear text")
    warn_if_others_can_read(settings.auth_tokens_file)
    return [BearerTokenInterceptor(load_tokens(settings.auth_tokens_file), refusals)]


def warn_if_others_can_read(path: Path) -> None:
    """A tokens file other users may read or write (0644 had started without a word) gives every
    local user the tokens: one warning, naming the mode and the fix."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # the settings' check already read it; a file gone since fails at load_tokens
    if mode & 0o077:
        log.warning(
            "auth_tokens_file %s can be read or written by other users (mode %04o): chmod 600 it", path, mode
        )
