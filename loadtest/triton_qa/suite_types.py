"""The shape of a Triton QA suite run: runs (one server each) made of steps (test specs)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# A repository builder gets (generated models root, the qa folder, the repository to fill).
Builder = Callable[[Path, Path, Path], None]


@dataclass(frozen=True)
class Step:
    specs: list[str]  # Class or Class.test_name
    before: Callable[[Path], None] | None = None  # edits the live repository before these tests
    settle_s: float = 0.0  # wait after `before` (test.sh's `sleep` for repository polling)


@dataclass(frozen=True)
class Run:
    label: str
    repository: str  # a key of Suite.repositories
    steps: list[Step]
    env: dict[str, str] = field(default_factory=dict)
    server_args: list[str] = field(default_factory=list)
    per_test_server: bool = False  # a fresh server per test (tests that read cumulative statistics)


@dataclass(frozen=True)
class Suite:
    name: str  # qa/<name>
    module: str  # the test file, without .py
    generated: list[str]  # harness.GENERATORS keys it needs
    repositories: dict[str, Builder]
    runs: list[Run]
    excluded: dict[str, str]
    extra_parts: list[str] = field(default_factory=list)  # other qa/ folders test.sh reads


def nop_version_dirs(repository: Path) -> None:
    """qa/common/util.sh create_nop_version_dir: an empty version 1 for every nop_ model."""
    for model in repository.glob("nop_*"):
        (model / "1").mkdir(exist_ok=True)


def sed(path: Path, pattern: str, replacement: str) -> None:
    path.write_text(re.sub(pattern, replacement, path.read_text(), flags=re.M))
