"""server/models/ensemble_config.py where the whole-scope mutation run (2026-12-05) left survivors:
load_rank's ranks (plain models, unknown names, nesting, cycles, an ensemble without steps), a
step's pinned version, and check_ensemble's and order's refusals word for word (the tests beside
them match parts of the messages: the source, the ensemble's name and the kind went unchecked)."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.models.config import ConfigError, parse_config
from server.models.ensemble_config import check_ensemble, load_rank, order
from tests.support.ensemble_repo import _step, ensemble

SOURCE = "models/e/config.pbtxt"

PLAIN = """
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def _config(text: str, name: str = "e") -> mc.ModelConfig:
    config = parse_config(text, SOURCE)
    config.name = name
    return config


def _over(*models: str) -> str:
    """An ensemble whose steps run `models` one after the other, IN to OUT."""
    tensors = ["IN", *(f"T{i}" for i in range(1, len(models))), "OUT"]
    return ensemble([_step(m, {"x": tensors[i]}, {"y": tensors[i + 1]}) for i, m in enumerate(models)])


def _refusal(check: object, text: str) -> str:
    assert callable(check)
    with pytest.raises(ConfigError) as refused:
        check(_config(text), SOURCE)
    return str(refused.value)


# -- load_rank ---------------------------------------------------------------------------------


def test_load_rank_is_the_nesting_depth_0_for_plain_models_and_names_without_a_config() -> None:
    """A plain model (and a step model not in the repository) loads first at 0; an ensemble over
    plain models at 1; one nesting it at 2, one more than its deepest step (the depth of the
    nested ensemble is looked up by its step's name, with the path so far)."""
    configs = {
        "m": _config(PLAIN, "m"),
        "inner": _config(_over("m"), "inner"),
        "outer": _config(_over("inner", "m", "absent"), "outer"),
    }
    rank = load_rank(configs)
    assert [rank(n) for n in ("m", "absent", "inner", "outer")] == [
        (0, "m"),
        (0, "absent"),
        (1, "inner"),
        (2, "outer"),
    ]
    assert sorted(["outer", "inner", "m"], key=rank) == ["m", "inner", "outer"]


def test_load_rank_stops_at_a_cycle_instead_of_recursing_for_ever() -> None:
    """A cycle is refused at load (cycle_refusal), but the start ranks every model first: an
    ensemble already on the path counts 0 there. Its own step: 1. 'a' -> 'b' -> 'a', asked for 'a'
    first: 'b' is ranked on the way with 'a' on the path (1), and 'a' one above it (2)."""
    assert load_rank({"e": _config(_over("e"))})("e") == (1, "e")
    rank = load_rank({"a": _config(_over("b"), "a"), "b": _config(_over("a"), "b")})
    assert (rank("a"), rank("b")) == ((2, "a"), (1, "b"))


def test_an_ensemble_without_steps_ranks_1() -> None:
    """An ensemble is ranked above plain models even with no step to take the depth of (such a
    config is refused by check_ensemble; load_rank takes whatever configs it is given)."""
    configs = {"e": _config('platform: "ensemble"\nensemble_scheduling { }\n'), "m": _config(PLAIN, "m")}
    assert load_rank(configs)("e") == (1, "e")


# -- a step's version --------------------------------------------------------------------------


def test_a_steps_version_is_the_serving_one_only_for_a_negative_model_version() -> None:
    """model_version -1 is "the serving version" (""); 0 is a version number like 3, pinned as
    written (no version 0 is ever loaded: repository.py skips names with a leading 0, so such a step
    is refused at run instead of served by another version)."""
    text = _over("m", "m", "m")  # each step with model_version -1
    text = text.replace("model_version: -1", "model_version: 0", 1)
    text = text.replace("model_version: -1", "model_version: 3", 1)
    config = _config(text)
    assert [(s.index, s.version) for s in order(config, SOURCE)] == [(1, "0"), (2, "3"), (3, "")]


# -- check_ensemble's refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "text"),
    [
        ("dynamic_batching", "dynamic_batching { }"),
        ("sequence_batching", "sequence_batching { }"),
        ("optimization", "optimization { }"),
        ("model_warmup", 'model_warmup [ { name: "w" batch_size: 1 } ]'),
    ],
)
def test_a_setting_for_running_a_model_is_refused_on_an_ensemble(setting: str, text: str) -> None:
    """Message fields are tested for being set (HasField); model_warmup, a list, for being
    non-empty. Each refusal names the source and the setting. (dynamic_batching and
    sequence_batching share a oneof with ensemble_scheduling: such a config lists no steps.)"""
    assert _refusal(check_ensemble, f'platform: "ensemble"\nmax_batch_size: 8\n{text}\n') == (
        f"{SOURCE}: {setting} cannot be set on an ensemble (set it on its step models)"
    )


@pytest.mark.parametrize("kind", ["input", "output"])
def test_an_ensemble_listing_only_its_inputs_or_only_its_outputs_is_refused(kind: str) -> None:
    """Either list missing is refused (no graph to complete an ensemble's tensors from), not only
    both; without its outputs an ensemble had otherwise passed every check."""
    text = "\n".join(line for line in _over("m").splitlines() if not line.startswith(f"{kind} "))
    assert f"{kind} [" not in text
    assert _refusal(check_ensemble, text) == (
        f"{SOURCE}: an ensemble must list its inputs and outputs (no graph to complete from)"
    )


@pytest.mark.parametrize("kind", ["input", "output"])
def test_an_ensemble_tensor_without_a_data_type_is_refused_naming_its_kind(kind: str) -> None:
    name = "IN" if kind == "input" else "OUT"
    text = _over("m").replace(f'name: "{name}" data_type: TYPE_FP32', f'name: "{name}"')
    assert _refusal(check_ensemble, text) == f"{SOURCE}: ensemble {kind} '{name}' needs a data_type"


def test_check_ensemble_passes_its_source_to_the_tensor_name_checks() -> None:
    text = ensemble([_step("m", {"x": "IN"}, {"y": "OUT"})], inputs=("IN", "UNUSED"))
    assert _refusal(check_ensemble, text) == f"{SOURCE}: ensemble 'e' input 'UNUSED' is not read by any step"


# -- order's refusals --------------------------------------------------------------------------


def test_a_step_without_a_model_name_is_refused() -> None:
    text = _over("m", "m").replace('model_name: "m"', "", 1)
    assert _refusal(order, text) == f"{SOURCE}: ensemble 'e' step 1 has no model_name"


@pytest.mark.parametrize(("index", "model"), [(1, "m"), (2, "n")])
def test_a_model_namespace_is_refused_on_the_step_that_sets_it(index: int, model: str) -> None:
    """Each step reads its own entry of the config's list (index - 1): the namespace set on one of
    two steps is refused on that step, not on the other."""
    text = _over("m", "n").replace(f'model_name: "{model}"', f'model_name: "{model}" model_namespace: "ns"')
    assert _refusal(order, text) == (
        f"{SOURCE}: ensemble 'e' step {index} (model '{model}'): model_namespace is not supported"
    )


def test_a_step_with_an_empty_output_map_is_refused() -> None:
    text = ensemble([_step("m", {"x": "IN"}, {}), _step("n", {"x": "IN"}, {"y": "OUT"})])
    assert _refusal(order, text) == f"{SOURCE}: ensemble 'e' step 1 (model 'm') has an empty output_map"


def test_a_step_writing_an_ensemble_input_is_refused() -> None:
    text = ensemble([_step("m", {"x": "IN"}, {"y": "IN"})])
    assert _refusal(order, text) == (
        f"{SOURCE}: ensemble 'e' step 1 (model 'm') writes 'IN', an ensemble input"
    )


def test_a_step_reading_a_tensor_nobody_writes_is_refused() -> None:
    text = ensemble([_step("m", {"x": "IN"}, {"y": "T"}), _step("n", {"x": "NOWHERE"}, {"y": "OUT"})])
    assert _refusal(order, text) == (
        f"{SOURCE}: ensemble 'e' step 2 (model 'n') input_map 'x' reads 'NOWHERE', which is "
        "neither an ensemble input nor any step's output"
    )
