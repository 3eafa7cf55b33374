"""loadtest.stream_ratio's variants: server flags, environment settings, or the bare transport."""

from __future__ import annotations

import sys
from pathlib import Path

from loadtest.server import SpawnedServer
from loadtest.stream_ratio import SpawnedFloor, parse_variant


def test_flags_environment_and_floor_variants_are_told_apart() -> None:
    flags = parse_variant("w2=--workers 2 --idle-dispatch")
    assert (flags.name, flags.args, flags.env, flags.floor) == (
        "w2",
        ["--workers", "2", "--idle-dispatch"],
        {},
        False,
    )
    env = parse_variant("ee=ENV:GRPC_EXPERIMENTS=-a,-b;SLUICEWAY_X=1")
    assert (env.args, env.env, env.floor) == ([], {"GRPC_EXPERIMENTS": "-a,-b", "SLUICEWAY_X": "1"}, False)
    floor = parse_variant("sync=FLOOR:--api sync --mode echo")
    assert (floor.name, floor.args, floor.env, floor.floor) == (
        "sync",
        ["--api", "sync", "--mode", "echo"],
        {},
        True,
    )
    assert parse_variant("main=").args == []


def test_a_floor_variant_starts_the_floor_and_reads_its_ready_line(tmp_path: Path) -> None:
    spawned = SpawnedFloor(tmp_path, ["--api", "sync", "--mode", "echo"])
    assert spawned.command[:3] == [sys.executable, "-m", "loadtest.peers.floor"]
    assert spawned.command[-4:] == ["--api", "sync", "--mode", "echo"]
    line = "floor (echo, model mlp, sync API) ready on 127.0.0.1:40123"
    match = spawned.ready_pattern.search(line)
    assert match is not None and match.group(2) == "40123"
    # sluiceway's own line is not the floor's, and the other way round
    assert spawned.ready_pattern.search("sluiceway ready on 127.0.0.1:8001 (models: mlp)") is None
    assert SpawnedServer.ready_pattern.search(line) is None
