"""Read a Dockerfile's instructions per stage (no container engine here): enough to check what the
runtime stage sets (user, ports, variables, health check, entrypoint)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for key, args in self.instructions if key == keyword]
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """Every ENV of the stage, `K=V` pairs (values unquoted as the shell would)."""
        values: dict[str, str] = {}
        for key, args in self.instructions:
            if key == "ENV":
                for pair in shlex.split(args):
                    name, _, value = pair.partition("=")
                    values[name] = value
        return values

    def exposed(self) -> set[int]:
        return {
            int(port.split("/")[0])
            for key, args in self.instructions
            if key == "EXPOSE"
            for port in args.split()
        }

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT/CMD in exec (JSON) form; fails on the shell form, which keeps PID 1 a shell."""
        args = self.last(keyword)
        assert args is not None, f"no {keyword}"
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(item) for item in value]


def parse(path: Path) -> list[Stage]:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            stages.append(Stage(words[2] if len(words) > 2 else str(len(stages)), words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages
