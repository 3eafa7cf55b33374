"""tests/support/repositories.py: helpers other tests build on, which must not reach past the
repository a test made."""

from __future__ import annotations

from pathlib import Path

from tests.support.repositories import newer, write_model


def test_newer_changes_the_linked_copy_only_never_the_shared_file(tmp_path: Path) -> None:
    shared = tmp_path / "demo.onnx"
    shared.write_bytes(b"model")
    before = shared.stat().st_mtime_ns
    write_model(tmp_path / "repo", "m", shared, None)
    linked = tmp_path / "repo" / "m" / "1" / "model.onnx"
    newer(linked)
    assert shared.stat().st_mtime_ns == before  # other tests' repositories link it too
    assert not linked.is_symlink() and linked.read_bytes() == b"model"
    assert linked.stat().st_mtime_ns > before
