"""How a model version's instances are made (server/backends/instances.py): which providers, options,
executor and session host each instance gets, the fault gates, a stuck instance's replacement, and what
the operator reads in the log. onnxruntime and the session host are recorded by fakes where their
arguments are what is pinned; one test loads and runs a real CPU session."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from protos import model_config_pb2 as mc
from server.backends import instances
from server.backends.batch_axes import BatchAxes
from server.backends.fault_backend import FaultBackend, FaultSpec
from server.backends.hosted_backend import Unhostable
from server.backends.hosted_session import OpenRequest
from server.backends.identity_backend import IdentityBackend, IdentitySpec, OffLoop
from server.backends.instances import InstanceFactory, SharedSessions, factory_for
from server.backends.onnxruntime_backend import BackendLoadError, OrtBackend, OrtOptions
from server.models.config import ConfigError
from server.models.config_tensors import ReshapePlan
from server.settings import ServerSettings
from tests.support.division_models import save

CPU = ("CPUExecutionProvider", {})
CUDA0 = ("CUDAExecutionProvider", {"device_id": "0"})
CUDA1 = ("CUDAExecutionProvider", {"device_id": "1"})
TRT = ("TensorrtExecutionProvider", {})
SPEC = IdentitySpec(pairs=(("INPUT0", "OUTPUT0"),), zeros=())
RESHAPE = ReshapePlan(True, {"x": (2, 2)}, {})
TENSORS = """
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


class FakeOrt:
    """OrtBackend's arguments, recorded; it prepares a graph only when asked to keep it."""

    made: list[FakeOrt] = []

    def __init__(
        self,
        path: Path,
        options: OrtOptions,
        providers: Any,
        executor: ThreadPoolExecutor,
        *,
        model_name: str = "",
        reshape: ReshapePlan | None = None,
        prepared: object = None,
        keep_prepared: bool = False,
    ) -> None:
        self.args = (path, options, list(providers), executor)
        self.model_name, self.reshape, self.given, self.keep = model_name, reshape, prepared, keep_prepared
        self.prepared = f"graph {len(FakeOrt.made)}" if keep_prepared and prepared is None else None
        self.executor, self.closed, self.abandoned = executor, False, False
        FakeOrt.made.append(self)

    def close(self) -> None:
        self.closed = True

    def abandon(self) -> None:
        self.abandoned = True


class FakeHosted:
    """HostedBackend's arguments, recorded."""

    made: list[FakeHosted] = []

    def __init__(
        self, socket_path: Path, request: OpenRequest, executor: ThreadPoolExecutor, *, reshape: Any = None
    ) -> None:
        self.socket, self.request, self.executor, self.reshape = socket_path, request, executor, reshape
        FakeHosted.made.append(self)


class Shutdowns(ThreadPoolExecutor):
    """A real executor that records how it was shut down."""

    waits: list[object] = []

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        Shutdowns.waits.append(wait)
        super().shutdown(wait=False)


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> list[FakeOrt]:
    FakeOrt.made = []
    FakeHosted.made = []
    monkeypatch.setattr(instances, "OrtBackend", FakeOrt)
    monkeypatch.setattr(instances, "HostedBackend", FakeHosted)
    return FakeOrt.made


def made(providers: list[Any] | None = None, **kwargs: Any) -> InstanceFactory:
    kwargs.setdefault("faults", None)
    return InstanceFactory(
        Path("/r/m/1/model.onnx"), OrtOptions(), providers or [CPU], name="m", workers=2, **kwargs
    )


def shared(socket: Path = Path("/run/host.sock"), *, every: bool = False) -> SharedSessions:
    return SharedSessions(socket, every, 8, OrtOptions(intra_op_threads=5), "fp")


def parse(text: str, name: str = "m") -> mc.ModelConfig:
    parsed = mc.ModelConfig()
    text_format.Parse(text, parsed)
    parsed.name = name
    return parsed


def identity_config(extra: str = "") -> mc.ModelConfig:
    return parse(
        'backend: "identity"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] reshape { shape: [ 1, 2 ] } } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] reshape { shape: [ 1, 2 ] } } ]\n'
        + extra
    )


def ort_factory(
    tmp_path: Path, text: str, settings: ServerSettings | None = None, **kwargs: Any
) -> InstanceFactory:
    kwargs.setdefault("faults", None)
    kwargs.setdefault("batch_axes", None)
    config = parse(text + TENSORS)
    made_factory, _ = factory_for(
        config, tmp_path / "m" / "1" / "model.onnx", settings or ServerSettings(cache_dir=tmp_path), "src",
        gpus=[], **kwargs,
    )  # fmt: skip
    return made_factory


def hosted_settings(tmp_path: Path, **kwargs: Any) -> ServerSettings:
    kwargs.setdefault("shared_sessions", "all")
    return ServerSettings(cache_dir=tmp_path, session_host=tmp_path / "host.sock", **kwargs)


# -- SharedSessions.holds ---------------------------------------------------------------------------


def test_the_host_holds_gpu_instances_only_unless_every_one() -> None:
    """`gpu` holds an instance whose first provider is CUDA or TensorRT; `all` holds every one."""
    assert shared().holds([CUDA0, CPU]) and shared().holds([TRT])
    assert not shared().holds([CPU, CUDA0])
    assert not shared().holds([])
    assert shared(every=True).holds([]) and shared(every=True).holds([CPU])


# -- InstanceFactory.session: onnxruntime instances -------------------------------------------------


def test_an_instance_gets_its_own_executor_sized_and_named_for_the_model(fake_ort: list[FakeOrt]) -> None:
    """Each onnxruntime instance: a new executor of `workers` threads named ort-<model>, with the
    factory's path, options, name and reshape."""
    options = OrtOptions(intra_op_threads=3)
    factory = InstanceFactory(
        Path("/r/m/1/model.onnx"), options, [CPU], name="m", workers=2, faults=None, reshape=RESHAPE
    )
    first, second = factory.session(), factory.session()
    assert first.args[:3] == (Path("/r/m/1/model.onnx"), options, [CPU])
    assert first.model_name == "m" and first.reshape == RESHAPE
    assert first.executor is not second.executor
    assert first.executor._max_workers == 2
    assert first.executor._thread_name_prefix == "ort-m"


def test_an_instance_given_a_device_keeps_it_when_replaced(fake_ort: list[FakeOrt]) -> None:
    """A slot's providers are remembered: its replacement runs on the same device, others on the default."""
    factory = made([CPU])
    factory.session([CUDA0])
    factory.session([CUDA1])
    factory.session(None, 1)
    factory.session()
    assert [ort.args[2] for ort in fake_ort] == [[CUDA0], [CUDA1], [CUDA1], [CPU]]


def test_the_prepared_graph_is_shared_by_the_same_providers_only(fake_ort: list[FakeOrt]) -> None:
    """The first instance's graph serves later ones on the same providers; a CUDA one prepares its own."""
    factory = made([CPU], planned=4)
    factory.session()
    factory.session([CUDA0])
    factory.session()
    factory.session()
    assert [ort.keep for ort in fake_ort] == [True, True, True, False]
    assert [ort.given for ort in fake_ort] == [None, None, "graph 0", "graph 0"]


def test_without_a_plan_no_instance_keeps_its_graph(fake_ort: list[FakeOrt]) -> None:
    """A factory told of no planned instances keeps nothing prepared."""
    factory = made([CPU])
    factory.session()
    factory.session()
    assert [(ort.keep, ort.given) for ort in fake_ort] == [(False, None), (False, None)]


def test_an_injected_load_failure_names_the_model() -> None:
    """fault_load_error: the load fails with the model's name and the parameter."""
    factory = made(faults=FaultSpec(load_error=True))
    with pytest.raises(BackendLoadError) as caught:
        factory.session()
    assert str(caught.value) == "model 'm': failed to load on purpose (parameters 'fault_load_error')"


def test_the_load_gate_holds_the_first_instance_only(
    fake_ort: list[FakeOrt], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fault_load_gate: the load waits once, before instance 0, naming the model and the FIFO."""
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(instances, "wait_at_gate", lambda *args: calls.append((len(fake_ort), *args)))
    factory = made(faults=FaultSpec(load_gate="/tmp/load.fifo"))
    factory.session()
    factory.session()
    factory.session(None, 0)
    assert calls == [(0, "model m: load", "/tmp/load.fifo")]  # before instance 0 was made


def test_the_replace_gate_holds_a_replacement_only(
    fake_ort: list[FakeOrt], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fault_replace_gate: only a replacement waits, naming the instance, the FIFO and the parameter."""
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(instances, "wait_at_gate", lambda *args: calls.append(args))
    factory = made(faults=FaultSpec(replace_gate="/tmp/replace.fifo"))
    factory.session()
    factory.session()
    assert calls == []
    factory.session(None, 1)
    assert calls == [("model m: instance 1 replaced", "/tmp/replace.fifo", "fault_replace_gate")]


# -- InstanceFactory.session: identity instances ----------------------------------------------------


def identity_factory(spec: IdentitySpec = SPEC, **kwargs: Any) -> InstanceFactory:
    return InstanceFactory(
        Path("unused"), OrtOptions(), [], name="m", workers=2, faults=None, identity=spec, **kwargs
    )


def test_an_identity_instance_gets_the_model_s_name_reshape_and_batching() -> None:
    """An identity instance: a new executor named identity-<model>, its reshape and max_batch_size."""
    factory = identity_factory(reshape=RESHAPE, max_batch_size=4)
    instance = factory.session()
    assert isinstance(instance, IdentityBackend)
    assert instance.name == "m" and instance._reshape == RESHAPE and instance._batched
    assert instance.executor._max_workers == 2
    assert instance.executor._thread_name_prefix == "identity-m"
    unbatched = identity_factory().session()
    assert isinstance(unbatched, IdentityBackend) and not unbatched._batched
    for done in (instance, unbatched):
        done.close()


def test_creation_delay_is_slept_before_the_first_identity_instance_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """creation_delay_sec: instance 0 sleeps it (off the loop), later ones and a zero delay do not."""
    slept: list[object] = []
    monkeypatch.setattr(instances, "time", SimpleNamespace(sleep=slept.append))
    delayed = identity_factory(IdentitySpec(pairs=SPEC.pairs, zeros=(), creation_delay_s=0.5))
    made_now = [delayed.session()]
    assert slept == [0.5]
    made_now.append(delayed.session())
    assert slept == [0.5]
    made_now.append(identity_factory().session())
    assert slept == [0.5]
    for instance in made_now:
        instance.close()


# -- InstanceFactory.session and _hosted: the session host ------------------------------------------


def test_a_held_instance_opens_in_the_session_host(fake_ort: list[FakeOrt]) -> None:
    """Under --shared-sessions a GPU instance asks the host for its slot's session with the host's options."""
    factory = made([CPU], planned=2, reshape=RESHAPE, shared=shared())
    factory.session()
    hosted = factory.session([CUDA1])
    assert len(fake_ort) == 1 and isinstance(hosted, FakeHosted)
    assert hosted.socket == Path("/run/host.sock") and hosted.reshape == RESHAPE
    assert hosted.request == OpenRequest(
        "/r/m/1/model.onnx", OrtOptions(intra_op_threads=5), (CUDA1,), "m", 1, 8, "fp"
    )
    assert hosted.executor._max_workers == 2 and hosted.executor._thread_name_prefix == "ort-m"


def test_an_unhostable_instance_runs_here_and_says_why(
    fake_ort: list[FakeOrt], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the host will not hold it, the instance is an onnxruntime one here, and the log says why."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise Unhostable("its tensors are strings")

    monkeypatch.setattr(instances, "HostedBackend", refuse)
    factory = made([CUDA0], shared=shared())
    factory.session()
    with caplog.at_level(logging.WARNING, logger="server.backends.instances"):
        backend = factory.session()
    assert backend is fake_ort[1] and backend.args[2] == [CUDA0]
    assert caplog.messages == [
        f"model m: instance {slot} runs here, not in the session host: its tensors are strings"
        for slot in (0, 1)
    ]


def test_a_failed_open_in_the_host_shuts_the_executor_without_waiting(
    fake_ort: list[FakeOrt], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any other failure to open in the host propagates, the instance's executor shut at once."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("host gone")

    monkeypatch.setattr(instances, "HostedBackend", broken)
    monkeypatch.setattr(instances, "ThreadPoolExecutor", Shutdowns)
    Shutdowns.waits = []
    with pytest.raises(OSError, match="host gone"):
        made([CPU], shared=shared(every=True)).session()
    assert Shutdowns.waits == [False] and fake_ort == []


# -- wrap ---------------------------------------------------------------------------------------------


def test_wrap_puts_faults_delays_and_batch_axes_around_the_session() -> None:
    """wrap: faults first, a waiting identity instance off the loop, and tensors batched on another axis."""
    waits = identity_factory(IdentitySpec(pairs=SPEC.pairs, zeros=(), execute_delay_s=0.01))
    session = waits.session()
    wrapped = waits.wrap(session)
    assert isinstance(wrapped, OffLoop) and wrapped.inner is session
    axes = identity_factory(batch_axes={"INPUT0": 1})
    plain = axes.session()
    assert isinstance(axes.wrap(plain), BatchAxes)
    assert identity_factory(batch_axes={}).wrap(plain) is plain
    for done in (session, plain):
        done.close()


# -- replacer ----------------------------------------------------------------------------------------


def test_a_stuck_instance_is_replaced_on_its_own_device_and_logged(
    fake_ort: list[FakeOrt], caplog: pytest.LogCaptureFixture
) -> None:
    """The replacement takes the stuck one's place and device; the stuck one is abandoned; a line says so."""
    factory = made([CPU])
    served: list[Any] = [factory.session([CUDA0]), factory.session([CUDA1])]
    stuck = served[1]
    with caplog.at_level(logging.WARNING, logger="server.backends.instances"):
        fresh = asyncio.run(factory.replacer(served)(stuck))
    assert fresh is served[1] and fresh is fake_ort[2] and fresh.args[2] == [CUDA1]
    assert stuck.abandoned and not served[0].abandoned
    assert caplog.messages == ["model m: instance 1 replaced (new session and executor)"]


def test_a_stuck_instance_no_longer_served_is_not_replaced(fake_ort: list[FakeOrt]) -> None:
    """When the stuck one is gone already, the fresh instance is closed and the replacement refused."""
    factory = made([CPU])
    served: list[Any] = [factory.session()]
    gone = FakeOrt(Path("x"), OrtOptions(), [CPU], ThreadPoolExecutor(1))
    with pytest.raises(RuntimeError) as caught:
        asyncio.run(factory.replacer(served)(gone))  # type: ignore[arg-type]
    assert str(caught.value) == "model m: the stuck instance is no longer served"
    assert fake_ort[-1].closed and served == [fake_ort[0]]


# -- factory_for ---------------------------------------------------------------------------------------


def test_factory_for_identity_builds_instances_from_the_config() -> None:
    """backend identity: instances named for the model, with its reshape, batching, workers and axes."""
    factory, plan = factory_for(
        identity_config(), Path("unused"), ServerSettings(max_batches_in_flight=2), "src",
        faults=None, batch_axes={"INPUT0": 1},
    )  # fmt: skip
    instance = factory.session()
    assert isinstance(instance, IdentityBackend) and len(plan.slots) >= 1
    assert instance.name == "m" and instance._batched
    assert instance._reshape == ReshapePlan.from_config(identity_config()) and instance._reshape is not None
    assert instance.executor._max_workers == 2 and instance.executor._thread_name_prefix == "identity-m"
    assert isinstance(factory.wrap(instance), BatchAxes)
    instance.close()


def test_factory_for_identity_keeps_the_faults_and_the_source() -> None:
    """backend identity: injected faults apply, and a config error names its source."""
    factory, _ = factory_for(
        identity_config(),
        Path("unused"),
        ServerSettings(),
        "src",
        faults=FaultSpec(load_error=True),
        batch_axes=None,
    )
    with pytest.raises(BackendLoadError):
        factory.session()
    bad = parse('backend: "identity"\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    with pytest.raises(ConfigError, match=r"^src: backend 'identity' needs as many outputs"):
        factory_for(bad, Path("unused"), ServerSettings(), "src", faults=None, batch_axes=None)


def test_factory_for_passes_the_settings_options_and_config_to_each_instance(
    tmp_path: Path, fake_ort: list[FakeOrt]
) -> None:
    """The server's session settings, workers, reshape, faults and batch axes reach every instance."""
    settings = ServerSettings(
        cache_dir=tmp_path, intra_op_threads=3, inter_op_threads=2, allow_spinning=True,
        graph_optimization_level="basic", max_batches_in_flight=2,
    )  # fmt: skip
    reshaped = TENSORS.replace("dims: [ 4 ] }", "dims: [ 4 ] reshape { shape: [ 2, 2 ] } }", 1)
    config = parse("max_batch_size: 8\n" + reshaped)
    factory, _ = factory_for(
        config,
        tmp_path / "m" / "1" / "model.onnx",
        settings,
        "src",
        faults=None,
        batch_axes={"x": 1},
        gpus=[],
    )
    backend = factory.session()
    assert backend.args[1] == OrtOptions(intra_op_threads=3, inter_op_threads=2, allow_spinning=True,
                                         graph_optimization_level="basic")  # fmt: skip
    assert backend.reshape == ReshapePlan.from_config(config) and backend.reshape is not None
    assert backend.executor._max_workers == 2
    assert isinstance(factory.wrap(backend), BatchAxes)
    faulty = ort_factory(tmp_path, "max_batch_size: 8\n", faults=FaultSpec(raise_every=2))
    assert isinstance(faulty.wrap(faulty.session()), FaultBackend)


def test_factory_for_plans_with_the_version_s_engine_cache(
    tmp_path: Path, fake_ort: list[FakeOrt], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan gets <cache_dir>/tensorrt/<model>/<version> for TensorRT's engines."""
    seen: list[dict[str, Any]] = []
    real = instances.plan_instances

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(instances, "plan_instances", spy)
    ort_factory(tmp_path, "max_batch_size: 8\n")
    assert seen[0]["engine_cache"] == tmp_path / "tensorrt" / "m" / "1"


def test_factory_for_refuses_a_tensorrt_path_naming_the_source(tmp_path: Path) -> None:
    """A TensorRT path parameter outside the model's and cache's directories is refused, naming the source."""
    text = (
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
        'parameters { key: "trt_engine_cache_path" value: "/elsewhere" } } ] } }\n'
    )
    with pytest.raises(ConfigError, match=r"^src: tensorrt accelerator parameter 'trt_engine_cache_path'"):
        ort_factory(tmp_path, text)


def test_factory_for_tells_the_first_of_several_instances_to_keep_its_graph(
    tmp_path: Path, fake_ort: list[FakeOrt]
) -> None:
    """Two planned CPU instances: the first prepares the graph the second uses."""
    factory = ort_factory(tmp_path, "instance_group [ { kind: KIND_CPU count: 2 } ]\n")
    factory.session()
    factory.session()
    assert [(ort.keep, ort.given) for ort in fake_ort] == [(True, None), (False, "graph 0")]


def test_factory_for_opens_instances_in_the_session_host_with_its_request(
    tmp_path: Path, fake_ort: list[FakeOrt]
) -> None:
    """In a worker under shared_sessions all: the host's socket, threads, merged rows and the fingerprint."""
    settings = hosted_settings(tmp_path, session_host_threads=5, intra_op_threads=3)
    text = "max_batch_size: 8\ndynamic_batching { }\noptimization { graph { level: 1 } }\n"
    hosted = ort_factory(tmp_path, text, settings, fingerprint=("fp", 1)).session()
    assert isinstance(hosted, FakeHosted) and fake_ort == []
    assert hosted.socket == tmp_path / "host.sock"
    request = hosted.request
    options = request.options
    assert (options.intra_op_threads, options.inter_op_threads) == (5, 1)  # the host's threads, not 3
    assert options.graph_optimization_level == "extended"  # the config's level
    assert (request.name, request.slot, request.max_batch_size) == ("m", 0, 8)
    assert request.fingerprint == "('fp', 1)" and request.providers == (CPU,)


@pytest.mark.parametrize(
    "text",
    [
        "max_batch_size: 8\n",  # no dynamic batching: batches run as they are
        "max_batch_size: 8\nsequence_batching { }\n",  # a sequence model's
        "max_batch_size: 0\ndynamic_batching { }\n",
    ],
)
def test_the_host_merges_no_rows_without_dynamic_batching(
    tmp_path: Path, fake_ort: list[FakeOrt], text: str
) -> None:
    """A model whose batches are not merged asks the host for 0 rows."""
    hosted = ort_factory(tmp_path, text, hosted_settings(tmp_path)).session()
    assert isinstance(hosted, FakeHosted) and hosted.request.max_batch_size == 0


@pytest.mark.parametrize(
    ("where", "shared_sessions", "batch_axes", "providers"),
    [
        ("worker", "gpu", None, [CPU]),  # a CPU instance under shared_sessions gpu
        ("worker", "off", None, [CUDA0]),
        ("worker", "all", {"x": 1}, [CPU]),  # batched on another axis: never merged
        ("parent", "all", None, [CPU]),  # no host socket: the parent runs its own
    ],
)
def test_instances_run_here_when_the_host_is_not_asked(
    tmp_path: Path, fake_ort: list[FakeOrt], where: str, shared_sessions: str, batch_axes: Any, providers: Any
) -> None:
    """Without a host socket, with shared_sessions off, batch axes or a CPU instance under gpu: run here."""
    if where == "parent":
        settings = ServerSettings(cache_dir=tmp_path, shared_sessions=shared_sessions, workers=2)
    else:
        settings = hosted_settings(tmp_path, shared_sessions=shared_sessions)
    factory = ort_factory(
        tmp_path, "max_batch_size: 8\ndynamic_batching { }\n", settings, batch_axes=batch_axes
    )
    assert factory.session(providers) is fake_ort[0] and FakeHosted.made == []


def test_a_gpu_instance_is_hosted_under_shared_sessions_gpu(tmp_path: Path, fake_ort: list[FakeOrt]) -> None:
    """shared_sessions gpu: a CUDA instance opens in the host."""
    factory = ort_factory(tmp_path, "max_batch_size: 8\n", hosted_settings(tmp_path, shared_sessions="gpu"))
    hosted = factory.session([CUDA0])
    assert isinstance(hosted, FakeHosted) and hosted.request.providers == (CUDA0,)


# -- a real CPU session --------------------------------------------------------------------------------


def test_a_real_instance_from_factory_for_runs_and_its_replacement_too(tmp_path: Path) -> None:
    """End to end on onnxruntime's CPU: the planned instance runs the model, and so does a replacement."""
    path = tmp_path / "m" / "1" / "model.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    factory, plan = factory_for(
        parse("max_batch_size: 8\n" + TENSORS), path, ServerSettings(cache_dir=tmp_path), "src",
        faults=None, batch_axes=None, gpus=[],
    )  # fmt: skip
    served: list[Any] = [factory.wrap(factory.session(plan.providers_of(slot))) for slot in plan.slots]
    x = np.array([[-1, 2, -3, 4]], np.float32)
    try:
        assert isinstance(served[0], OrtBackend)
        np.testing.assert_array_equal(served[0].run_blocking({"x": x})["y"], np.maximum(x, 0))
        fresh = asyncio.run(factory.replacer(served)(served[0]))
        assert served[0] is fresh and isinstance(fresh, OrtBackend)
        np.testing.assert_array_equal(fresh.run_blocking({"x": x})["y"], np.maximum(x, 0))
    finally:
        for instance in served:
            instance.close()
