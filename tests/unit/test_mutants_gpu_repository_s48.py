"""A survivor of the 2026-12-05 mutation run in loadtest/gpu_repository.py: `load_config` reads a
config.pbtxt as UTF-8 whatever the locale (the mutant read it with the locale's codec: under an ASCII
locale a non-ASCII name failed with UnicodeDecodeError)."""

from __future__ import annotations

from pathlib import Path

from loadtest.gpu_repository import load_config
from protos import model_config_pb2 as mc
from tests.unit.test_mutants_gpu_report_s48 import ascii_locale


def test_load_config_reads_utf8_under_an_ascii_locale(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_bytes('name: "r\u00e9snet" max_batch_size: 4\n'.encode())
    with ascii_locale():
        config = load_config(path)
    assert config == mc.ModelConfig(name="r\u00e9snet", max_batch_size=4)
