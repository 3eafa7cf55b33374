"""The GPU check's repository copy (loadtest/gpu_repository.py): the exact config text written for each
model and provider, read back from tmp_path, over a small fake demo repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from loadtest.gpu_plan import PROVIDERS, Plan
from loadtest.gpu_repository import MODELS, load_config, profile_shapes, tensorrt_parameters, write_copy
from protos import model_config_pb2 as mc

CUDA, TENSORRT, CPU = PROVIDERS
PLAN = Plan(False, (1, 8, 32, 64), (1, 16, 64), 1.5, 3.0, 1.0, 4, 3)

DEMO = {
    "mlp": 'name: "mlp"\nmax_batch_size: 128\ninput { name: "features" data_type: TYPE_FP32 dims: 64 }\n'
    "instance_group { count: 1 kind: KIND_CPU }\n",
    "resnet": 'name: "resnet"\nmax_batch_size: 16\n'
    'input { name: "image" data_type: TYPE_FP32 dims: 3 dims: 224 dims: 224 }\n',
    "resnet_u8": 'name: "resnet_u8"\ninput { name: "image" data_type: TYPE_UINT8 dims: 3 dims: 8 dims: 8 }\n'
    'input { name: "scale" data_type: TYPE_FP32 dims: 1 }\n',
}

WARMUP_MLP = """model_warmup {
  name: "gpu_check 1 rows"
  batch_size: 1
  inputs {
    key: "features"
    value {
      data_type: TYPE_FP32
      dims: 64
      random_data: true
    }
  }
  count: 2
}
model_warmup {
  name: "gpu_check 64 rows"
  batch_size: 64
  inputs {
    key: "features"
    value {
      data_type: TYPE_FP32
      dims: 64
      random_data: true
    }
  }
  count: 2
}
"""


def demo(root: Path) -> Path:
    """A fake demo repository: each model's config text and a placeholder model.onnx."""
    for model, text in DEMO.items():
        (root / model / "1").mkdir(parents=True)
        (root / model / "config.pbtxt").write_text("# a demo model\n" + text, encoding="utf-8")
        (root / model / "1" / "model.onnx").write_bytes(f"onnx {model}".encode())
    return root


def copy(tmp_path: Path, provider: object, plan: Plan = PLAN) -> Path:
    """write_copy of the fake demo into a target folder that does not exist yet."""
    target = tmp_path / "out" / "copy"
    write_copy(demo(tmp_path / "demo"), target, provider, plan, tmp_path / "trt")  # type: ignore[arg-type]
    return target


def test_load_config_parses_utf8_text(tmp_path: Path) -> None:
    """A config with a non-ASCII comment and name parses into the message."""
    path = tmp_path / "config.pbtxt"
    path.write_bytes('# démo\nname: "résnet"\nmax_batch_size: 4\n'.encode())
    assert load_config(path) == mc.ModelConfig(name="résnet", max_batch_size=4)


def test_profile_shapes_join_every_input_with_a_comma() -> None:
    """Two inputs: 'name:rowsxdims' each, comma separated."""
    config = load_config_text(DEMO["resnet_u8"])
    assert profile_shapes(config, 64) == "image:64x3x8x8,scale:64x1"
    assert profile_shapes(config, 1) == "image:1x3x8x8,scale:1x1"


def load_config_text(text: str) -> mc.ModelConfig:
    """A config from its text."""
    return text_format.Parse(text, mc.ModelConfig())


def test_tensorrt_parameters_are_exactly_fp16_caches_and_one_profile(tmp_path: Path) -> None:
    """Every key and value: FP16, both caches on in `cache`, a profile from 1 to max_rows rows."""
    config = load_config_text(DEMO["resnet"])
    assert tensorrt_parameters(config, 32, tmp_path / "c") == {
        "precision_mode": "FP16",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path / "c"),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(tmp_path / "c"),
        "trt_profile_min_shapes": "image:1x3x224x224",
        "trt_profile_opt_shapes": "image:32x3x224x224",
        "trt_profile_max_shapes": "image:32x3x224x224",
    }


def mlp_head(label: str, group: str) -> str:
    """The mlp config's text up to its instance group, which holds count 3 and `group`'s lines."""
    return (
        f"# gpu_check: the demo's mlp for {label}\n"
        'name: "mlp"\nmax_batch_size: 64\n'
        'input {\n  name: "features"\n  data_type: TYPE_FP32\n  dims: 64\n}\n'
        f"instance_group {{\n  count: 3\n{group}}}\n"
    )


def test_cuda_copy_mlp_config_text_exactly(tmp_path: Path) -> None:
    """CUDA: header, max_batch_size 64, one KIND_GPU group of 3 on GPU 0, warm-up of 1 and 64 rows."""
    target = copy(tmp_path, CUDA)
    assert (target / "mlp" / "config.pbtxt").read_text() == (
        mlp_head("CUDA", "  gpus: 0\n  kind: KIND_GPU\n") + WARMUP_MLP
    )


def test_cpu_copy_mlp_config_text_exactly(tmp_path: Path) -> None:
    """CPU: one KIND_CPU group of 3 without GPUs, no accelerator."""
    target = copy(tmp_path, CPU)
    assert (target / "mlp" / "config.pbtxt").read_text() == mlp_head("CPU", "  kind: KIND_CPU\n") + WARMUP_MLP


def test_tensorrt_copy_mlp_config_text_exactly(tmp_path: Path) -> None:
    """TensorRT: a KIND_GPU group and the tensorrt accelerator with its parameters."""
    target = copy(tmp_path, TENSORRT)
    cache = tmp_path / "trt"
    params = {
        "precision_mode": "FP16",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_profile_max_shapes": "features:64x64",
        "trt_profile_min_shapes": "features:1x64",
        "trt_profile_opt_shapes": "features:64x64",
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache),
    }
    entries = "".join(
        f'      parameters {{\n        key: "{k}"\n        value: "{v}"\n      }}\n'
        for k, v in params.items()
    )
    assert (target / "mlp" / "config.pbtxt").read_text() == (
        mlp_head("TensorRT FP16", "  gpus: 0\n  kind: KIND_GPU\n")
        + "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator {\n"
        '      name: "tensorrt"\n' + entries + "    }\n  }\n}\n" + WARMUP_MLP
    )


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.key)
def test_every_model_is_copied_with_its_model_linked(tmp_path: Path, provider: object) -> None:
    """Each model: version 1's model.onnx a link to the demo's, a config that parses, the header."""
    target = copy(tmp_path, provider)
    for model in MODELS:
        link = target / model / "1" / "model.onnx"
        assert link.is_symlink() and link.read_bytes() == f"onnx {model}".encode()
        assert link.readlink() == (tmp_path / "demo" / model / "1" / "model.onnx").resolve()
        text = (target / model / "config.pbtxt").read_text()
        assert text.startswith(f"# gpu_check: the demo's {model} for {provider.label}\n")  # type: ignore[attr-defined]
        config = load_config(target / model / "config.pbtxt")
        assert config.name == model and config.max_batch_size == 64
    assert sorted(p.name for p in target.iterdir()) == sorted(MODELS)


def test_tensorrt_copy_profiles_every_input_of_a_two_input_model(tmp_path: Path) -> None:
    """resnet_u8's two inputs: both in the profile and both in each warm-up sample."""
    config = load_config(copy(tmp_path, TENSORRT) / "resnet_u8" / "config.pbtxt")
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.parameters["trt_profile_min_shapes"] == "image:1x3x8x8,scale:1x1"
    assert accel.parameters["trt_profile_max_shapes"] == "image:64x3x8x8,scale:64x1"
    first = config.model_warmup[0].inputs
    assert first["image"] == mc.ModelWarmup.Input(data_type=mc.TYPE_UINT8, dims=[3, 8, 8], random_data=True)
    assert first["scale"] == mc.ModelWarmup.Input(data_type=mc.TYPE_FP32, dims=[1], random_data=True)


def test_dry_plan_copy_warms_up_with_one_and_two_rows(tmp_path: Path) -> None:
    """A dry plan's largest batch of 2: max_batch_size 2, warm-up of 1 and 2 rows, one instance."""
    dry = Plan(True, (1, 2), (1, 2), 0.05, 0.6, 0.1, 1, 1, min_runs=1)
    config = load_config(copy(tmp_path, CPU, dry) / "resnet" / "config.pbtxt")
    assert config.max_batch_size == 2
    assert [(w.name, w.batch_size, w.count) for w in config.model_warmup] == [
        ("gpu_check 1 rows", 1, 2),
        ("gpu_check 2 rows", 2, 2),
    ]
    assert list(config.instance_group) == [
        mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    ]


def test_one_row_plan_warms_up_once_with_one_row(tmp_path: Path) -> None:
    """max_rows 1: the set {1, 1} gives a single warm-up sample."""
    one = Plan(True, (1,), (1,), 0.05, 0.6, 0.1, 1, 1)
    config = load_config(copy(tmp_path, CUDA, one) / "mlp" / "config.pbtxt")
    assert [w.batch_size for w in config.model_warmup] == [1]
