"""One serving version of a model (onnxruntime or identity): its config completed and checked,
its instances started and warmed up, its batcher started. The manager (manager.py) decides which
versions load and when; this builds one, closing what it started if it fails."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort

from batcher.budget import ByteBudget
from batcher.dynamic import DynamicBatcher
from batcher.run_count import RunCount
from batcher.stats import ModelStats
from protos import model_config_pb2 as mc
from server.backends.fault_backend import FaultSpec, Session
from server.backends.gpu_devices import visible_gpus
from server.backends.hosted_backend import hosted
from server.backends.instance_groups import describe, instance_device, served_groups
from server.backends.instances import factory_for, run_timeout_for
from server.backends.io_binding import string_binding_notes
from server.errors import InvalidRequest, ModelNotFound, ModelNotReady
from server.models.completion import complete_version
from server.models.config import (
    IDENTITY,
    ConfigError,
    batching_policy,
    dynamic_batching_enabled,
    latest_frame_wins,
    validate_config,
    validate_response_cache,
)
from server.models.config_backend import ORT_PARAMETERS
from server.models.config_fields import warn_unapplied
from server.models.config_tensors import load_labels
from server.models.dim_ties import dim_ties
from server.models.ensemble import EnsembleScheduler, Resolve
from server.models.ensemble_admission import admission_batcher
from server.models.ensemble_config import EnsemblePlan, Step, plan_ensemble
from server.models.first_run import first_run, first_run_limit
from server.models.gpu_load import inline_limit_s
from server.models.repository import DEFAULT_MODEL_FILENAME, ModelSource, version_fingerprint
from server.models.response_cache import ResponseCache
from server.models.sequence_config import DEFAULT_IDLE_US, sequence_batcher, sequence_model, sequence_policy
from server.models.value_costed import value_costed
from server.models.versions import ModelVersion
from server.models.warmup import warm_up
from server.observability.sampling import SamplingRegistry, sample_policy
from server.protocol.validate import Signature
from server.settings import ServerSettings

log = logging.getLogger(__name__)


async def load_version(
    source: ModelSource,
    number: int,
    path: Path,
    settings: ServerSettings,
    response_cache: ResponseCache | None,
    sampling_registry: SamplingRegistry,
    queued_bytes: ByteBudget,
    run_count: RunCount | None = None,
) -> ModelVersion:
    """Version `number` of `source` (its model file at `path`), serving; raises (ConfigError,
    BackendLoadError, OSError) when it cannot, having closed the sessions it had opened.
    `queued_bytes`: the server-wide budget every version's batcher shares; `run_count`: the
    server-wide count of backend runs (batcher/run_count.py)."""
    fingerprint = await asyncio.to_thread(
        version_fingerprint, source, number
    )  # before: a change meanwhile reloads
    # With the look for a Loop (a run's cost a request's value may set: value_costed.py), in the same
    # thread hop: one more had let a pool thread start inside the first load, counted in its footprint.
    done, looped = await asyncio.to_thread(
        lambda: (complete_version(source, path, settings.default_max_batch_size), value_costed(path))
    )
    config, inputs, outputs, listed_initializers = done  # the graph's tensors (none: identity)
    source_file = source.where
    validate_config(config, source_file)
    labels = await asyncio.to_thread(load_labels, config, source.directory, source_file)
    seq_model = sequence_model(config, inputs, outputs, source.directory, source_file)
    allowed = settings.allow_fault_injection
    faults = FaultSpec.from_config(config, source_file, allowed=allowed, version=number)
    run_timeout_s = run_timeout_for(config, source_file, settings.run_timeout_s)
    sampling = await asyncio.to_thread(sample_policy, config, source.directory, settings, source_file)
    cache = response_cache
    validate_response_cache(config, source.where, 0 if cache is None else cache.capacity_bytes)
    # The visible GPUs, found off the loop: where the driver's folder is missing it runs nvidia-smi.
    gpus = await asyncio.to_thread(visible_gpus, ort.get_available_providers())
    factory, plan = factory_for(  # onnxruntime or identity instances; instance_groups, devices
        config,
        path,
        settings,
        source_file,
        faults=faults,
        batch_axes=None if seq_model is None else seq_model.batch_axes,
        gpus=gpus,
        fingerprint=fingerprint,  # a changed version's reload: a shared session of its own
    )
    notes = plan.unapplied + string_binding_notes(config, inputs, outputs)
    warn_unapplied(config, source_file, notes)  # one line per load (config_fields.py)
    sessions: list[Session] = []
    try:
        for slot in plan.slots:
            sessions.append(await asyncio.to_thread(factory.session, plan.providers_of(slot)))
        devices = tuple(instance_device(session) for session in sessions)
        log.info("model %s version %d: instances %s", source.name, number, describe(plan.slots, sessions))
        try:
            # On the sessions themselves: injected faults count the batcher's runs only.
            await warm_up(config, sessions, source.directory, settings.max_message_bytes, seq_model)
        except Exception as exc:
            raise ConfigError(f"{source_file}: model_warmup failed: {exc}") from exc
        if settings.model_memory_budget_mb > 0:
            # Without model_warmup: one row of zeros, so the load's footprint holds each session's
            # arena chunk, allocated at its first run (it fell into the next load's measure). Only
            # under a budget, the one reader of footprints: a zero input may take a slow or costly
            # path real inputs never do. Bounded by the model's run timeout (first_run.py).
            async def renew(index: int) -> Session:
                return await asyncio.to_thread(factory.session, plan.providers_of(plan.slots[index]), index)

            limit_s = first_run_limit(run_timeout_s)
            max_bytes = settings.max_message_bytes
            await first_run(config, sessions, max_bytes, seq_model, renew=renew, limit_s=limit_s)
    except BaseException:
        for session in sessions:
            session.close()
        raise
    backends = [factory.wrap(session) for session in sessions]
    policy = batching_policy(
        config,
        default_max_queue_size=settings.max_queue_size,
        max_batches_in_flight=settings.max_batches_in_flight,
        idle_dispatch=settings.idle_dispatch,
    )
    if seq_model is not None:
        policy = sequence_policy(config, policy)
    elif not dynamic_batching_enabled(config):
        # Without dynamic batching each request runs alone, whatever its rows.
        policy = replace(policy, max_batch_size=0, alone_with_rows=config.max_batch_size > 0)
    stats = ModelStats()
    batcher = DynamicBatcher(
        backends,
        policy,
        stats,
        # Never on a GPU, nor in the session host (a run's CPU here is its copy, not its wait).
        inline_max_s=inline_limit_s(devices, 0 if hosted(sessions) or looped else settings.inline_run_max_us),
        run_timeout_s=run_timeout_s,
        replace=factory.replacer(backends),
        name=f"model {source.name} version {number}",
        byte_budgets=(
            ByteBudget(settings.max_queued_bytes_per_model, "max_queued_bytes_per_model"),
            queued_bytes,
        ),
        run_count=run_count,
    )
    batcher.start()
    fill_defaults(config)  # after the instances are made: what ModelConfig shows, as Triton
    shown = served_groups(config, plan.slots, devices)  # each group as its instances run
    del config.instance_group[:]
    config.instance_group.extend(shown)
    return ModelVersion(
        name=source.name,
        version=number,
        config=config,
        signature=Signature.from_config(config, dim_ties(config, inputs, listed_initializers)),
        backends=backends,
        batcher=batcher,
        stats=stats,
        response_cache=cache if config.response_cache.enable else None,
        sampler=sampling_registry.sampler_for(source.name, number, sampling),
        sequences=None if seq_model is None else sequence_batcher(seq_model, batcher, settings, source.name),
        labels=labels,
        devices=devices,
        latest_frame_wins=latest_frame_wins(config, source_file),
        fingerprint=fingerprint,
    )


async def load_ensemble(
    source: ModelSource,
    number: int,
    kept: ModelVersion | None,
    resolve: Resolve,
    response_cache: ResponseCache | None,
    max_queue_size: int,
) -> ModelVersion:
    """An ensemble's version; `kept` (the one serving, when the load keeps unchanged versions)
    when its files are the same and its steps check as they did: its statistics and rollout state
    go on (it had been rebuilt at every load, its statistics started over)."""
    cache_bytes = 0 if response_cache is None else response_cache.capacity_bytes
    plan = ensemble_plan(source, resolve, cache_bytes)
    warn_unapplied(source.config, source.where, backend_keys_on_ensemble(source.config))
    files = await asyncio.to_thread(version_fingerprint, source, number)
    steps = None if kept is None or kept.ensemble is None else kept.ensemble.plan
    if kept is not None and (kept.fingerprint, steps) == (files, plan):
        return kept
    return ensemble_version(source, number, plan, resolve, response_cache, max_queue_size, files)


def backend_keys_on_ensemble(config: mc.ModelConfig) -> list[str]:
    """The onnxruntime backend's parameters an ensemble sets (its steps run the models; Triton
    ignores them there too), for its load warning: CUDA and padding keys had been taken silently."""
    keys = sorted(k for k in config.parameters if k in ORT_PARAMETERS)
    if not keys:
        return []
    return [
        f"parameters {keys} (onnxruntime settings; an ensemble runs no model itself: set them on its steps)"
    ]


def ensemble_plan(source: ModelSource, resolve: Resolve, cache_bytes: int) -> EnsemblePlan:
    """An ensemble's steps checked against their step models, which must be ready already
    (`resolve`: the manager's, which finds the version serving a step), and its response cache
    against the server's (`cache_bytes`); ConfigError saying what does not fit."""

    def step_config(step: Step) -> mc.ModelConfig:
        try:
            return resolve(step.model, step.version, None).config
        except (ModelNotFound, ModelNotReady, InvalidRequest) as exc:
            raise ConfigError(str(exc)) from None

    plan = plan_ensemble(source.config, source.where, step_config)
    validate_response_cache(source.config, source.where, cache_bytes)
    return plan


def ensemble_version(
    source: ModelSource,
    number: int,
    plan: EnsemblePlan,
    resolve: Resolve,
    response_cache: ResponseCache | None,
    max_queue_size: int,
    fingerprint: tuple[object, ...],
) -> ModelVersion:
    """An ensemble's version running `plan` (ensemble_plan's)."""
    config = mc.ModelConfig()
    config.CopyFrom(source.config)
    stats = ModelStats()
    return ModelVersion(
        name=source.name,
        version=number,
        config=config,
        signature=Signature.from_config(config),
        backends=[],
        batcher=admission_batcher(config, stats, max_queue_size),
        stats=stats,
        ensemble=EnsembleScheduler(plan, resolve),
        latest_frame_wins=latest_frame_wins(config, source.where),
        # Its own cache, as Triton's ensembles have one: a hit answers without running a step
        # (the setting was accepted and silently unused).
        response_cache=response_cache if config.response_cache.enable else None,
        fingerprint=fingerprint,
    )


def fill_defaults(config: mc.ModelConfig) -> None:
    """The defaults Triton writes into the config it serves, where the file left them out: an
    instance group named after the model (the one an empty list runs: served_groups then shows its
    kind and count), a group's name (`<model>_<index>`) and count, the latest version, the model
    file's name. Tools that read ModelConfig saw none of them."""
    if not config.instance_group:
        config.instance_group.add(name=config.name, count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for index, group in enumerate(config.instance_group):
        group.name = group.name or f"{config.name}_{index}"
        group.count = max(group.count, 1)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.default_model_filename and config.backend != IDENTITY:
        config.default_model_filename = DEFAULT_MODEL_FILENAME
    _fill_normalized(config)


def _fill_normalized(config: mc.ModelConfig) -> None:
    """What Triton's NormalizeModelConfig adds to a version's config (model_config_utils.cc): the
    max_batch_size as the one preferred size where none is given, the sequence idle default, and
    pinned memory on. Shown only: the batcher was made from the config as written, and a preferred
    size equal to max_batch_size forms the same batches as none (batcher/form.py, max_preferred)."""
    top = config.max_batch_size
    if config.HasField("dynamic_batching") and not config.dynamic_batching.preferred_batch_size and top > 0:
        config.dynamic_batching.preferred_batch_size.append(top)
    if config.HasField("sequence_batching"):
        sb = config.sequence_batching
        sb.max_sequence_idle_microseconds = sb.max_sequence_idle_microseconds or DEFAULT_IDLE_US
        if sb.HasField("oldest") and not sb.oldest.preferred_batch_size and top > 0:
            sb.oldest.preferred_batch_size.append(top)
    for pinned in ("input_pinned_memory", "output_pinned_memory"):
        if not config.optimization.HasField(pinned):
            getattr(config.optimization, pinned).enable = True
