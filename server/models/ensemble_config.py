"""Ensemble configs (`platform: "ensemble"`): checked on their own, then against their step models.

`check_ensemble` runs with every config (it also refuses `ensemble_scheduling` on a model that is
not an ensemble); `plan_ensemble` runs at load, once the step models are loaded, and returns the
steps in an order where each step's inputs are produced before it. As Triton: every ensemble input
is consumed, every ensemble output is produced by exactly one step, input_map keys are the step
model's inputs and values are ensemble tensors, output_map keys are the step model's outputs, and
there is no cycle. Every message names the step ("ensemble 'e' step 2 (model 'm'): ...").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from batcher.types import Array
from protos import model_config_pb2 as mc
from server import datatypes
from server.models.config_errors import ConfigError
from server.models.config_tensors import ReshapePlan

ENSEMBLE_PLATFORM = "ensemble"
# Fields that configure how a model runs: an ensemble runs nothing itself (its steps do).
_NOT_FOR_ENSEMBLES = ("dynamic_batching", "sequence_batching", "model_warmup", "optimization")


@dataclass(frozen=True, slots=True)
class Step:
    """One step: run `model` (version "" = the serving one) on ensemble tensors."""

    index: int  # 1-based, as listed in the config
    model: str
    version: str
    input_map: Mapping[str, str]  # step model input -> ensemble tensor
    output_map: Mapping[str, str]  # step model output -> ensemble tensor

    def where(self, ensemble: str) -> str:
        return f"ensemble '{ensemble}' step {self.index} (model '{self.model}')"


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    name: str
    steps: tuple[Step, ...]  # in dependency order
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batching: bool = False  # the ensemble's max_batch_size > 0: its inputs lead with a batch dim
    max_batch_size: int = 0  # the ensemble's: a step's reload below it no longer fits (ensemble_fit)
    # Dims of `outputs` as the steps make them (`reshape.shape` where given, else `dims`), in order.
    output_dims: tuple[tuple[int, ...], ...] = ()
    # Each step's inputs' dims in its model's config when the ensemble loaded, by step index: a
    # reload that changed them no longer fits (ensemble_fit.reshaped).
    step_dims: Mapping[int, Mapping[str, tuple[int, ...]]] = field(default_factory=dict)
    reshape: ReshapePlan | None = None  # the ensemble's own `reshape`s: the steps see those shapes


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM


def load_rank(configs: Mapping[str, mc.ModelConfig]) -> Callable[[str], tuple[int, str]]:
    """A sort key loading models before the ensembles that use them, and an ensemble before the
    ensembles that nest it: (nesting depth, name), 0 for a model that is not an ensemble."""
    depths: dict[str, int] = {}

    def depth(name: str, seen: frozenset[str] = frozenset()) -> int:
        config = configs.get(name)
        if config is None or not is_ensemble(config) or name in seen:  # a cycle is refused at load
            return 0
        if name not in depths:
            steps = config.ensemble_scheduling.step
            depths[name] = 1 + max((depth(s.model_name, seen | {name}) for s in steps), default=0)
        return depths[name]

    return lambda name: (depth(name), name)


def _steps(config: mc.ModelConfig) -> list[Step]:
    return [
        Step(
            index=i,
            model=s.model_name,
            version="" if s.model_version < 0 else str(s.model_version),
            input_map=dict(s.input_map),
            output_map=dict(s.output_map),
        )
        for i, s in enumerate(config.ensemble_scheduling.step, start=1)
    ]


def check_ensemble(config: mc.ModelConfig, source: str) -> None:
    """The checks that need no other model; ConfigError names the field or the step."""
    if not is_ensemble(config):
        if config.HasField("ensemble_scheduling"):
            raise ConfigError(f'{source}: ensemble_scheduling needs platform "{ENSEMBLE_PLATFORM}"')
        return
    for setting in _NOT_FOR_ENSEMBLES:
        if config.HasField(setting) if setting != "model_warmup" else config.model_warmup:
            raise ConfigError(f"{source}: {setting} cannot be set on an ensemble (set it on its step models)")
    if config.instance_group:
        raise ConfigError(f"{source}: instance_group cannot be set on an ensemble (it has no instances)")
    if not config.ensemble_scheduling.step:
        raise ConfigError(f"{source}: ensemble_scheduling needs at least one step")
    for step in _steps(config):
        if config.name and step.model == config.name:
            # Triton's "circular dependency": a lazy one had answered "not ready (loading)" for good.
            raise ConfigError(
                f"{source}: {step.where(config.name)}: an ensemble cannot be its own step (a cycle)"
            )
    if not config.input or not config.output:
        raise ConfigError(
            f"{source}: an ensemble must list its inputs and outputs (no graph to complete from)"
        )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if tensor.data_type == mc.TYPE_INVALID:
                raise ConfigError(f"{source}: ensemble {kind} '{tensor.name}' needs a data_type")
    order(config, source)


def order(config: mc.ModelConfig, source: str) -> list[Step]:
    """The steps in dependency order, after the checks on tensor names (no cycle, one producer each)."""
    name = config.name
    steps = _steps(config)
    inputs = {t.name for t in config.input}
    producer: dict[str, Step] = {}
    for step in steps:
        if not step.model:
            raise ConfigError(f"{source}: ensemble '{name}' step {step.index} has no model_name")
        if config.ensemble_scheduling.step[step.index - 1].model_namespace:
            raise ConfigError(f"{source}: {step.where(name)}: model_namespace is not supported")
        if not step.output_map:
            raise ConfigError(f"{source}: {step.where(name)} has an empty output_map")
        for tensor in step.output_map.values():
            if tensor in inputs:
                raise ConfigError(f"{source}: {step.where(name)} writes '{tensor}', an ensemble input")
            first = producer.setdefault(tensor, step)
            if first is not step:
                raise ConfigError(
                    f"{source}: {step.where(name)} writes '{tensor}', already written by step {first.index}"
                )
    known = inputs | set(producer)
    for step in steps:
        for model_input, tensor in step.input_map.items():
            if tensor not in known:
                raise ConfigError(
                    f"{source}: {step.where(name)} input_map '{model_input}' reads '{tensor}', which is "
                    "neither an ensemble input nor any step's output"
                )
    consumed = {t for s in steps for t in s.input_map.values()}
    for tensor in sorted(inputs - consumed):
        raise ConfigError(f"{source}: ensemble '{name}' input '{tensor}' is not read by any step")
    for out in config.output:
        if out.name not in producer:
            raise ConfigError(f"{source}: ensemble '{name}' output '{out.name}' is not written by any step")
    return _topological(steps, producer, inputs, name, source)


def _topological(steps: list[Step], producer: Mapping[str, Step], inputs: set[str], name: str,
                 source: str) -> list[Step]:  # fmt: skip
    ready, done, left = set(inputs), [], list(steps)
    while left:
        runnable = [s for s in left if all(t in ready for t in s.input_map.values())]
        if not runnable:
            step = left[0]
            waits = sorted(t for t in step.input_map.values() if t not in ready)
            raise ConfigError(
                f"{source}: {step.where(name)} is in a cycle: it reads {waits}, written by step(s) "
                f"{sorted({producer[t].index for t in waits})} which depend on it"
            )
        for step in runnable:
            ready.update(step.output_map.values())
            done.append(step)
            left.remove(step)
    return done


StepConfig = Callable[[Step], mc.ModelConfig]  # the step model's completed config, or raises


def _shape(max_batch_size: int, dims: Sequence[int]) -> list[int]:
    return ([-1] if max_batch_size > 0 else []) + list(dims)


def agree(a: Sequence[int], b: Sequence[int]) -> bool:
    """Triton's CompareDimsWithWildcard: same rank, each dim equal or either one -1."""
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def fit_batch_dim(array: Array, batched: bool, dims: tuple[int, ...], batches: bool) -> Array:
    """A tensor passed between a batching and a non-batching model, as Triton's ensembles pass it.

    Into a batching model, a tensor without a batch dim whose shape matches the model's dims gets
    a batch of 1; into a non-batching model, a batch of 1 loses its batch dim unless the whole
    shape already matches. Anything else is passed as it is (and checked by the step model)."""
    if batched == batches:
        return array
    if batches:
        return array.reshape((1, *array.shape)) if agree(dims, array.shape) else array
    if array.shape[:1] == (1,) and not agree(dims, array.shape):
        return array.reshape(array.shape[1:])
    return array


def _dims(tensor: mc.ModelInput | mc.ModelOutput) -> list[int]:
    return list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)


# An ensemble tensor: datatype, dims without the batch dimension, whether it carries one, who made it.
Tensor = tuple[int, list[int], bool, str]


def plan_ensemble(config: mc.ModelConfig, source: str, step_config: StepConfig) -> EnsemblePlan:
    """Check the steps against their models' configs; `step_config` raises to say a step model is
    not there (the message is put after the step's name)."""
    name = config.name
    steps = order(config, source)
    batching = config.max_batch_size > 0
    tensors: dict[str, Tensor] = {
        t.name: (t.data_type, _dims(t), batching, f"ensemble input '{t.name}'") for t in config.input
    }
    step_dims: dict[int, dict[str, tuple[int, ...]]] = {}
    for step in steps:
        where = f"{source}: {step.where(name)}"
        try:
            model = step_config(step)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        # A batching ensemble may hold non-batching steps (Triton: shapes then agree in full).
        if 0 < model.max_batch_size < config.max_batch_size:
            raise ConfigError(
                f"{where}: max_batch_size {model.max_batch_size} is below the ensemble's "
                f"{config.max_batch_size}"
            )
        ins = {t.name: t for t in model.input}
        for model_input, tensor in step.input_map.items():
            spec = ins.get(model_input)
            if spec is None:
                raise ConfigError(
                    f"{where}: input_map key '{model_input}' is not an input (inputs: {sorted(ins)})"
                )
            _check_same(
                where, f"input '{model_input}'", spec, model.max_batch_size, tensors[tensor], list(spec.dims)
            )
            step_dims.setdefault(step.index, {})[model_input] = tuple(spec.dims)
        missing = sorted(n for n, t in ins.items() if not t.optional and n not in step.input_map)
        if missing:
            raise ConfigError(f"{where}: inputs {missing} are not in its input_map")
        outs = {t.name: t for t in model.output}
        for model_output, tensor in step.output_map.items():
            spec_out = outs.get(model_output)
            if spec_out is None:
                raise ConfigError(
                    f"{where}: output_map key '{model_output}' is not an output (outputs: {sorted(outs)})"
                )
            origin = f"step {step.index} output '{model_output}'"
            # A step model's tensors as it takes them on the wire: dims, not reshape (as Triton).
            tensors[tensor] = (spec_out.data_type, list(spec_out.dims), model.max_batch_size > 0, origin)
    for out in config.output:
        _check_same(f"{source}: ensemble '{name}'", f"output '{out.name}'", out, config.max_batch_size,
                    tensors[out.name], _dims(out))  # fmt: skip
    return EnsemblePlan(
        name=name,
        steps=tuple(steps),
        inputs=tuple(t.name for t in config.input),
        outputs=tuple(t.name for t in config.output),
        batching=batching,
        max_batch_size=config.max_batch_size,
        output_dims=tuple(tuple(_dims(t)) for t in config.output),
        step_dims=step_dims,
        reshape=ReshapePlan.from_config(config),
    )


def _check_same(where: str, what: str, spec: mc.ModelInput | mc.ModelOutput, max_batch_size: int,
                given: Tensor, spec_dims: list[int]) -> None:  # fmt: skip
    data_type, dims, batched, origin = given
    if spec.data_type != data_type:
        raise ConfigError(
            f"{where}: {what} is {datatypes.config_name(spec.data_type)} but {origin} is "
            f"{datatypes.config_name(data_type)}"
        )
    # Triton's rule: the dims agree, or the full shapes do (a tensor passed between a batching and
    # a non-batching model: [-1, 16] and [16] as the non-batching one's [-1, 16]); else refused.
    want, shape = _shape(max_batch_size, spec_dims), ([-1] if batched else []) + dims
    if not (agree(spec_dims, dims) or agree(want, shape)):
        raise ConfigError(f"{where}: {what} has shape {want} but {origin} has {shape} (-1 is variable)")


def steps_of(names: set[str], configs: Mapping[str, mc.ModelConfig]) -> set[str]:
    """The models the ensembles among `names` use, nested ensembles' too (none for others)."""
    found: set[str] = set()
    todo = [n for n in names if n in configs]
    while todo:
        config = configs[todo.pop()]
        if not is_ensemble(config):
            continue
        for step in config.ensemble_scheduling.step:
            if step.model_name not in found and step.model_name not in names:
                found.add(step.model_name)
                if step.model_name in configs:
                    todo.append(step.model_name)
    return found


def ensemble_cycle(name: str, configs: Mapping[str, mc.ModelConfig]) -> list[str] | None:
    """The path by which ensemble `name` reaches itself through its steps' ensembles
    (['a', 'b', 'a']), or None. An ensemble that is its own step is refused by check_ensemble."""
    path = [name]
    on_path = {name}
    done: set[str] = set()  # ensembles from which `name` is not reached

    def reaches(current: str) -> bool:
        config = configs.get(current)
        if config is None or not is_ensemble(config):
            return False
        for step in config.ensemble_scheduling.step:
            model = step.model_name
            if model == name and current != name:
                path.append(name)
                return True
            if model in on_path or model in done:
                continue
            path.append(model)
            on_path.add(model)
            if reaches(model):
                return True
            path.pop()
            on_path.discard(model)
            done.add(model)
        return False

    return path if reaches(name) else None


def cycle_refusal(name: str, configs: Mapping[str, mc.ModelConfig]) -> str | None:
    """Why ensemble `name` is not loaded when it is in a cycle of ensembles (None: it is not): its
    load had waited on the other's and failed "model 'b' is not ready", naming no cycle (Triton: a
    circular dependency)."""
    cycle = ensemble_cycle(name, configs)
    if cycle is None:
        return None
    return (
        f"ensemble '{name}' is in a cycle of ensembles: {' -> '.join(cycle)} (an ensemble "
        "cannot reach itself through its steps; change a step in one of their config.pbtxt)"
    )


def cycle_refusals(configs: Mapping[str, mc.ModelConfig]) -> dict[str, str]:
    """Each ensemble of `configs` in a cycle of ensembles, and why it is not loaded (cycle_refusal)."""
    refused = {name: cycle_refusal(name, configs) for name in sorted(configs)}
    return {name: reason for name, reason in refused.items() if reason is not None}
