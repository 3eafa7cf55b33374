"""The server factory: explicit settings in, a running grpc.aio server out. No module state."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import onnxruntime
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from protos import admin_pb2 as apb
from protos import grpc_service_pb2 as pb
from server.admin.service import SERVICE_NAME as ADMIN_SERVICE
from server.admin.service import AdminServicer
from server.announce import announce
from server.backends.instance_groups import setting_note
from server.bind_failure import PortInUse, bind_failure
from server.grpc_options import grpc_server_options
from server.models import load_metrics, rollout
from server.models.control import RepositoryControl
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.models.memory_budget import MIB
from server.models.response_cache import ResponseCache
from server.models.rollout_share import RolloutShare
from server.models.versions import READY
from server.observability import gpu_usage, host_usage, sampling, tracing_export
from server.observability.log_settings import LogSettings
from server.observability.metrics import Catalog, GaugeSource, Metrics
from server.observability.metrics_views import Costs, MetricViews
from server.observability.trace_settings import TraceSettings
from server.observability.tracing import build_tracing
from server.protocol import calls, core_calls, loop_pace, message_wait, rpc_slots
from server.protocol.calls import CallTracker, QuietRefusals, StreamLimits, refusal_room
from server.protocol.cuda_shm_workers import cuda_registry
from server.protocol.grpc_logs import GRPC_AIO_LOGGER, quiet_unsent_answers
from server.protocol.loop_pace import LoopPace
from server.protocol.malformed import add_service
from server.protocol.message_wait import message_waits_for
from server.protocol.reflection_pool import reflection_pool
from server.protocol.servicer import InferenceServicer
from server.protocol.shm_workers import system_registry
from server.protocol.side_streams import LimitedHealth, LimitedReflection
from server.security.auth import server_interceptors
from server.security.tls import bind_port
from server.settings import ServerSettings
from server.settings_rules import grpc_address
from server.start_signals import stop_was_asked

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

# A drain keeps the endpoint open until no call has arrived for this long (within the grace
# period): calls in transit when the drain began get their UNAVAILABLE instead of CANCELLED.
# Arrivals are counted where grpc core takes a call (core_calls.py), not only where a handler
# sees it: a call core holds when the endpoint closes is answered CANCELLED (grpc/grpc#41785).
_QUIET_S = 0.25
# ... but no longer than this once the calls in progress are answered: a client that keeps
# calling (every call answered UNAVAILABLE) kept it open for the whole grace, and only the
# endpoint's close (GOAWAY) sends a plain gRPC client to another replica (379 calls refused over
# 20 s behind a connection-balancing Service).
_QUIET_MAX_S = 1.0
# After the grace period the batchers fail what is left; the handlers get this long to send those
# errors before the endpoint closes.
_ANSWER_LEFTOVERS_S = 0.5
# How long past the grace grpc's own stop may take to hand its last answers to the network.
_GRPC_STOP_EXTRA_S = 1.0


class SluicewayServer:
    """One server: gRPC endpoint, health, reflection and the model manager behind them."""

    def __init__(self, settings: ServerSettings, *, span_exporter: SpanExporter | None = None) -> None:
        """`span_exporter` (tests): where spans go when settings.tracing is on, instead of the
        exporter the settings and OTEL_* variables choose."""
        self.settings = settings
        self.tracing = build_tracing(settings, span_exporter)  # None when off
        self.port = 0
        self._stopping = False
        self._stopped = asyncio.Event()
        options = grpc_server_options(settings)
        # Refused streams read until quiet, shared by the stream caps and the token check.
        self.refusals = QuietRefusals(refusal_room(settings.max_concurrent_rpcs, settings.max_streams))
        servers_before = core_calls.server_ids()
        self._grpc = grpc.aio.server(
            options=options,
            interceptors=server_interceptors(settings, self.refusals) or None,
        )
        # grpc core's count of the calls it has taken, handed to a handler or not: the drain
        # waits for those too (grpc/grpc#41785), None where channelz is off.
        self.core_calls = core_calls.CoreCalls.of_new_server(servers_before)
        # One response cache for the server, shared by every model that enables response_cache.
        self.response_cache = (
            ResponseCache(settings.response_cache_bytes) if settings.response_cache_bytes > 0 else None
        )
        root = self._repository()
        self.models = ModelManager(root, settings, self._set_model_health, response_cache=self.response_cache)
        # Every load goes through `loads` (memory budget, lazy models); `control` is the mode.
        self.loads = ModelLoads(
            self.models,
            root,
            settings.model_memory_budget_mb * MIB,
            default_max_batch_size=settings.default_max_batch_size,
            runs=self.models.runs,
        )
        self.models.on_demand = self.loads
        self.control = RepositoryControl(root, settings, self.models, self.loads)
        # Under --workers: each worker's rollbacks and operator changes followed by the others.
        self.rollout_share = (
            RolloutShare(settings.rollout_share_dir, settings.worker_index or 0, self.models)
            if settings.rollout_share_dir is not None
            else None
        )
        limits = (settings.max_streams, settings.max_streams_per_connection, settings.max_streams_per_peer)
        self.calls = CallTracker(StreamLimits(*limits))
        self._health = LimitedHealth(self.calls)  # Watch streams count as streams
        costs = Costs(settings.cost_per_core_hour, settings.cost_per_gpu_hour)
        self.metrics = Metrics(
            MetricViews(self.models, lambda: self.calls.open_streams, costs), settings.metrics
        )
        self.add_gauge_source(self.calls.gauge_values, calls.METRICS)  # streams refused at a cap
        self.add_gauge_source(self.models.sampling.gauge_values, sampling.METRICS)  # samples, drift
        self.add_gauge_source(self.models.rollout.gauge_values, rollout.METRICS)  # shadow comparisons
        self.add_gauge_source(self.loads.gauge_values, load_metrics.METRICS)  # loads, evictions, footprints
        if self.tracing is not None:  # spans lost on their way out
            self.add_gauge_source(self.tracing.drops.gauge_values, tracing_export.METRICS)
        self.add_gauge_source(host_usage.HostUsage().gauge_values, host_usage.METRICS)  # Triton's CPU gauges
        if settings.metrics and settings.gpu_metrics:  # Triton's GPU gauges, where NVML finds GPUs
            every_s = settings.metrics_interval_ms / 1000  # polled on a thread once started
            gpus = gpu_usage.GpuUsage(onnxruntime.get_available_providers(), poll_s=every_s)
            self.metrics.add_gauge_source(gpus.gauge_values, gpu_usage.METRICS, gpus.close, gpus.start)
        self.metrics_port = 0  # bound once started (0: metrics off)
        self.shared_memory = system_registry(settings)  # every worker's regions under --workers
        # CUDA IPC regions where a GPU is present (every worker's under --workers), else a refusal.
        cuda_shm = cuda_registry(settings, onnxruntime.get_available_providers(), self.shared_memory.has)
        self.shared_memory.device_regions = cuda_shm  # requests name either kind of region
        self._cuda_shm = cuda_shm
        # Stream reads wait a tick while the loop lags and new calls wait (loop_pace.py).
        lag_s, tick_s = settings.stream_pace_lag_ms / 1000, settings.stream_pace_tick_ms / 1000
        self.pace = LoopPace(lag_s, tick_s, self._calls_wait)
        self.add_gauge_source(self.pace.gauge_values, loop_pace.METRICS)
        self._servicer = InferenceServicer(
            self.models,
            self.calls,
            lambda: self._stopping,
            stream_max_in_flight=settings.stream_max_in_flight,
            stream_idle_timeout_s=settings.stream_idle_timeout_s,
            stream_max_held_bytes=settings.stream_max_held_bytes,
            refusals=self.refusals,
            max_message_bytes=settings.max_message_bytes,
            tracing=self.tracing,
            shm=self.shared_memory,
            cuda_shm=cuda_shm,
            repository=self.control,
            pace=self.pace,
            trace_settings=TraceSettings(self.tracing is not None, settings.tracing_sample_ratio),
            log_settings=LogSettings(settings.log_level, json_lines=settings.log_format == "json"),
        )
        # Registered with tolerant request parsing: a message that does not parse is answered
        # INVALID_ARGUMENT (in-band on a stream), not UNKNOWN with a logged traceback.
        # A message over max_message_bytes is refused unparsed, RESOURCE_EXHAUSTED (frame_size.py).
        # A call's one request message is waited for within bounds (message_wait.py).
        self.message_waits = message_waits_for(settings)
        self.add_gauge_source(self.message_waits.gauge_values, message_wait.METRICS)
        self.slots = rpc_slots.RpcSlots(settings.max_concurrent_rpcs)  # kept here, not by grpc: counted
        self.add_gauge_source(self.slots.gauge_values, rpc_slots.METRICS)
        serve = functools.partial(
            add_service,
            server=self._grpc,
            max_message_bytes=settings.max_message_bytes,
            waits=self.message_waits,
            slots=self.slots,
        )
        serve(pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], self._servicer)
        admin = AdminServicer(self.models, settings.worker_index, self.rollout_share, lambda: self._stopping)
        serve(apb.DESCRIPTOR.services_by_name["Admin"], admin)
        # grpc's own services too, their streams ended by such a message (malformed.add_service).
        health = health_pb2.DESCRIPTOR.services_by_name["Health"]
        serve(health, self._health, streams_answer_in_band=False)
        if settings.reflection:
            names = (SERVICE_NAME, ADMIN_SERVICE, health.full_name, reflection.SERVICE_NAME)
            # Ours are in a private pool, grpc's in the default one: one pool with both.
            descriptors = (pb.DESCRIPTOR, apb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
            pool = reflection_pool(*descriptors)
            # Its streams count as streams (server/protocol/side_streams.py).
            reflecting = LimitedReflection(names, pool, self.calls)
            serve(
                reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
                reflecting,
                streams_answer_in_band=False,
            )

    def _repository(self) -> Path:
        if self.settings.model_repository is not None:
            return self.settings.model_repository
        from server.models.demo import build_demo_repository

        return build_demo_repository(self.settings.cache_dir / "demo")

    def _calls_wait(self) -> bool:
        """Whether grpc core holds calls no handler has taken (or a handler has just answered):
        they wait for the event loop's turns. Unknown without channelz: then say yes. A call whose
        handler waits for its request message waits for its client, not for the loop."""
        counts = self.core_calls.counts() if self.core_calls is not None else None
        return counts is None or counts.unanswered > self.calls.active + self.message_waits.count

    def _set_model_health(self, name: str, ready: bool | None) -> None:
        # None: a name the server forgot, answered as one it never knew.
        if ready is None:
            self._health.forget(name)
        else:
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING if ready else _NOT_SERVING)

    async def start(self, on_listening: Callable[[int], None] | None = None) -> int:
        """Bind, start answering (live, not yet ready), load every model, then report SERVING.
        `on_listening(port)` is called once the endpoint answers, before the models load."""
        address = grpc_address(self.settings.host, self.settings.port)
        try:
            self.port = bind_port(self._grpc, address, self.settings)  # TLS when configured
        except RuntimeError as exc:
            raise bind_failure(self.settings, address, str(exc)) from None
        if self.port == 0:
            raise bind_failure(self.settings, address, "")
        if self.settings.metrics:
            try:
                self.metrics_port = self.metrics.start(self.settings.metrics_host, self.settings.metrics_port)
            except OSError as exc:
                where = f"{self.settings.metrics_host}:{self.settings.metrics_port}"
                raise PortInUse(f"cannot serve metrics on {where}: {exc}") from None
        self._health.set("", _NOT_SERVING)
        self._health.set(SERVICE_NAME, _NOT_SERVING)
        providers_note = setting_note(self.settings.execution_providers)
        if providers_note is not None:  # once for the server, not in every model's load warning
            log.warning("%s", providers_note)
        self.models.reading_repository()  # no NOT_FOUND before the repository is listed
        await self._grpc.start()
        if on_listening is not None:
            on_listening(self.port)
        await self.control.start()  # what the model control mode loads at start
        if self.rollout_share is not None:
            self.rollout_share.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        self.models.start_load_ended()  # ServerReady with health "": not before this
        self._health.set("", serving)
        self._health.set(SERVICE_NAME, serving)
        self.metrics.views.mark_start()  # cost counts process CPU from here on
        return self.port

    def add_gauge_source(self, source: GaugeSource, catalog: Catalog) -> None:
        """Show what `source()` yields, (metric name, labels, value), on /metrics, as the kinds and
        with the HELP texts `catalog` gives."""
        self.metrics.add_gauge_source(source, catalog)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, stop admitting, drain or fail what is queued, then close the endpoint."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True  # from now on new calls are answered UNAVAILABLE
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace  # one grace period for every step below
        self._health.enter_graceful_shutdown()
        self.calls.finish_streams()  # stop reading; answer what was read; end with UNAVAILABLE
        # Batchers dispatch what is queued at once; at the deadline they fail what is left.
        await self.control.stop()  # no more polling or lazy loads
        if self.rollout_share is not None:
            await self.rollout_share.stop()
        models_stopped = asyncio.create_task(self.models.stop(drain_timeout_s=grace))
        drained = await self.calls.wait_idle(deadline)  # the calls in progress are answered
        if drained:
            core = self.core_calls.counts if self.core_calls is not None else None
            await self.calls.wait_quiet(min(deadline, time.monotonic() + _QUIET_MAX_S), _QUIET_S, core)
        await models_stopped
        self.control.cleanup()  # files sent with RepositoryModelLoad
        if not drained:  # the failed leftovers are being answered now
            await self.calls.wait_idle(time.monotonic() + _ANSWER_LEFTOVERS_S)
        # grpc.aio cancels handlers still running at stop(); ours are done unless a client stopped
        # reading its stream's answers. Its stop also waits for answers already handed to grpc
        # core: to a client that stopped reading (SIGSTOP, a hung process), until keepalive drops
        # the connection, 20 s by default whatever the grace. Bounded: the process exits anyway.
        left = max(0.0, deadline - time.monotonic())
        if self.calls.only_stalled_left(self.core_calls.counts() if self.core_calls is not None else None):
            stalled = self.calls.stalled
            log.warning(
                "%d side streams whose clients took no write for 1 s were left (health, reflection)", stalled
            )
            left = 0.0
        grpc_stopped = asyncio.ensure_future(self._grpc.stop(left))
        done, _ = await asyncio.wait({grpc_stopped}, timeout=left + _GRPC_STOP_EXTRA_S)
        if not done:
            log.warning(
                "answers to clients that stopped reading were still being sent %.1f s after the "
                "grace; exiting without them",
                _GRPC_STOP_EXTRA_S,
            )
        self.shared_memory.close()  # regions are unmapped as their last holders let go
        self._cuda_shm.close()
        await asyncio.to_thread(self.metrics.stop)
        if self.tracing is not None:  # export the spans still buffered, within the grace
            left = max(_ANSWER_LEFTOVERS_S, deadline - time.monotonic())
            if not await asyncio.to_thread(self.tracing.shutdown, left):
                log.warning("spans still buffered were not exported within the grace: dropped")
        self.pace.close()
        self.message_waits.close()
        self.slots.close()  # the refusals not yet logged are
        self._servicer.close()  # every stream has ended: the lines still rationed are logged
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def build_server(settings: ServerSettings) -> SluicewayServer:
    """Build (but do not start) a server; call inside the event loop that will run it."""
    return SluicewayServer(settings)


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM, SIGINT or SIGHUP, then shut down gracefully."""
    server = build_server(settings)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    # SIGHUP too (a closed terminal, a supervisor's hang-up): its default action killed the
    # process without a drain.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if sig == signal.SIGHUP and previous is signal.SIG_IGN:
            continue  # under nohup: a hang-up is to be ignored, as it asked
        loop.add_signal_handler(sig, stop_requested.set)
        if stop_was_asked(previous):  # a start-up SIGTERM whose Terminated was lost on the way
            stop_requested.set()
    json_lines = settings.log_format == "json"  # then these lines are JSON objects too

    def listening(port: int) -> None:  # the port `--port 0` chose, for a client that watches the load
        announce(f"sluiceway listening on {grpc_address(settings.host, port)} (loading models)", json_lines)

    port = await _start_unless_stopped(server, stop_requested, listening)
    if port is None:
        return
    names = _model_summary(server)
    log.info("sluiceway serving on %s:%d (models: %s)", settings.host, port, names)
    if server.metrics_port:  # before the ready line: whoever waits for that has this one too
        announce(f"sluiceway metrics on {settings.metrics_host}:{server.metrics_port}/metrics", json_lines)
    announce(f"sluiceway ready on {grpc_address(settings.host, port)} (models: {names})", json_lines)
    unsent = quiet_unsent_answers()
    try:
        await stop_requested.wait()
    finally:
        logging.getLogger(GRPC_AIO_LOGGER).removeFilter(unsent)
    log.info("shutting down (%d answers were not sent: their callers had gone)", unsent.dropped)
    await server.stop()


async def _start_unless_stopped(
    server: SluicewayServer, stop_requested: asyncio.Event, on_listening: Callable[[int], None]
) -> int | None:
    """Start `server`; a stop asked for while it loads its models ends the loading (a model whose
    session is being made finishes in its thread, unused) and shuts the server down: the port,
    or None when stopped. Waiting for every model first kept a pod's SIGTERM waiting ~10 s past
    its grace, and printed the ready line just before shutting down."""
    starting = asyncio.ensure_future(server.start(on_listening))
    stopping = asyncio.ensure_future(stop_requested.wait())
    try:
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if starting.done() and not stop_requested.is_set():  # a stop asked for meanwhile wins
        return starting.result()  # raises what start raised (a port in use, say)
    log.info("shutting down during start-up: models still loading are not loaded")
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    await server.stop()
    return None


def _model_summary(server: SluicewayServer) -> str:
    """The ready line's models: those serving, then those that failed and those not loaded by
    design (lazy, or not asked for), each named: listing them all as served misled operators."""
    entries = list(server.models.entries())
    parts = [", ".join(sorted(e.name for e in entries if e.state == READY)) or "none ready"]
    for label, chosen in (
        ("failed to load", [e.name for e in entries if not e.ready_or_by_design]),
        ("not loaded", [e.name for e in entries if e.state != READY and e.ready_or_by_design]),
    ):
        if chosen:
            parts.append(f"{label}: {', '.join(sorted(chosen))}")
    return "; ".join(parts)
