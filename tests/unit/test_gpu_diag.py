"""scripts/gpu_diag.py's repository: each variant a config the server accepts, asking for what its
name says (the script itself needs a GPU to mean anything; `--allow-cpu` rehearses it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from server.backends.batch_padding import SHRINK_AFTER
from server.backends.onnxruntime_backend import OrtOptions, ort_options_for
from server.models.config import parse_config, validate_config
from tests.support.repositories import demo_repository

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_diag.py"


def diag() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_diag_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_each_variant_is_a_valid_config_asking_for_its_padding(tmp_path: Path) -> None:
    script = diag()
    script.write_repo(demo_repository(), tmp_path)
    padding = {}
    for name in script.VARIANTS:
        where = tmp_path / name / "config.pbtxt"
        config = parse_config(where.read_text(), str(where))
        validate_config(config, str(where))
        assert config.max_batch_size == 64 and config.instance_group[0].gpus == [0]
        padding[name] = ort_options_for(config, OrtOptions()).padding
        delay = config.dynamic_batching.max_queue_delay_microseconds
        assert delay == (2000 if name == "u8wait" else 0)
    shrink = {name: p.shrink_after if p else None for name, p in padding.items()}
    assert shrink == {
        "u8pad": SHRINK_AFTER, "u8flip": 1, "u8sticky": 32, "u8flat": None, "u8heur": None,
        "u8wait": SHRINK_AFTER,
    }  # fmt: skip
