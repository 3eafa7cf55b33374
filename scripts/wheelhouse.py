"""Wheels for a machine that has no package index, in folders that each fit one transfer.

    python scripts/wheelhouse.py fetch DEST [--python 3.12] [--part-mib 50] [--skip NAME ...]
        [--perf-analyzer VERSION]
    python3 scripts/wheelhouse.py join DEST OUT      # there: the parts back into checked wheels

`fetch` (where pip reaches an index) downloads the binary wheels that
`pip install -e .[gpu,gpucheck]` needs (the GPU runtime, the GPU tests, the load-test harness) on a
manylinux x86-64 CPython of the given version, and NVIDIA's perf_analyzer (PyPI perf-analyzer, 7 MB,
whose real wheels are tagged glibc 2.38: elsewhere pip takes an empty placeholder; `none` leaves it
out), leaves out the projects named by --skip (ones the
machine already has), cuts every wheel larger than a part into numbered parts, and packs parts and
wheels into folders DEST/1, DEST/2, ... of at most --part-mib each (50: each travels with the
working tree, 7 MB, under the device tool's 64 MiB a call; 58 went over it). Each folder holds a manifest
(every wheel's size, SHA-256 and where its parts are), so the folders can travel one at a time, in
any order. `join` needs only the standard library: it checks that every folder has arrived, joins
the parts, checks each wheel's size and digest, and writes the wheels to OUT for
`pip install --no-index --find-links OUT`.
scripts/gpu_check.sh joins a wheelhouse by itself when GPU_CHECK_WHEELHOUSE names one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
MIB = 1 << 20
# The extras installed there: the runtime, and what the GPU tests and the harness import.
EXTRAS = ("gpu", "gpucheck")
# NVIDIA's load generator for scripts/gpu_check.sh (as ../shared/tools/perf_analyzer's version).
PERF_ANALYZER = "2.60.0"
PERF_ANALYZER_PLATFORM = "manylinux_2_38_x86_64"
# The build backend of `pip install -e .` with --no-build-isolation.
BUILD = ("setuptools>=68",)
# pip matches a manylinux tag exactly, so every glibc level a wheel may name is listed.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


@dataclass(frozen=True)
class Piece:
    """One file that travels: a whole wheel, or part `index` of one."""

    wheel: str
    index: int
    size: int

    @property
    def name(self) -> str:
        return self.wheel if self.index < 0 else f"{self.wheel}.part{self.index:03d}"


def project_name(wheel: str) -> str:
    """The normalised project name of a wheel file name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", wheel.split("-", 1)[0]).lower()


def pieces_of(wheel: str, size: int, part_bytes: int) -> list[Piece]:
    if size <= part_bytes:
        return [Piece(wheel, -1, size)]
    count = -(-size // part_bytes)
    return [Piece(wheel, i, min(part_bytes, size - i * part_bytes)) for i in range(count)]


def pack(sizes: dict[str, int], part_bytes: int) -> list[list[Piece]]:
    """Wheels and parts into as few folders of at most part_bytes as first-fit-decreasing finds."""
    pieces = [p for wheel, size in sizes.items() for p in pieces_of(wheel, size, part_bytes)]
    folders: list[list[Piece]] = []
    room: list[int] = []
    for piece in sorted(pieces, key=lambda p: (-p.size, p.name)):
        slot = next((i for i, free in enumerate(room) if free >= piece.size), None)
        if slot is None:
            folders.append([])
            room.append(part_bytes)
            slot = len(folders) - 1
        folders[slot].append(piece)
        room[slot] -= piece.size
    return folders


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def split(wheels: Path, dest: Path, part_bytes: int) -> list[Path]:
    """Lay the wheels in `wheels` out as DEST/1..N; returns the folders."""
    files = sorted(wheels.glob("*.whl"))
    folders = pack({f.name: f.stat().st_size for f in files}, part_bytes)
    manifest: dict[str, dict[str, object]] = {}
    for number, folder in enumerate(folders, 1):
        for piece in folder:
            entry = manifest.setdefault(piece.wheel, {"parts": {}})
            entry["parts"][str(max(piece.index, 0))] = f"{number}/{piece.name}"  # type: ignore[index]
    for f in files:
        manifest[f.name].update(size=f.stat().st_size, sha256=sha256(f))
    text = json.dumps({"folders": len(folders), "wheels": manifest}, indent=1, sort_keys=True)
    made = []
    for number, folder in enumerate(folders, 1):
        out = dest / str(number)
        out.mkdir(parents=True)
        for piece in folder:
            with (wheels / piece.wheel).open("rb") as src, (out / piece.name).open("wb") as dst:
                src.seek(max(piece.index, 0) * part_bytes)
                dst.write(src.read(piece.size))
        (out / MANIFEST).write_text(text)
        made.append(out)
    return made


def join(dest: Path, out: Path) -> list[Path]:
    """The wheels back from DEST/1..N into OUT, each checked; SystemExit naming what is wrong."""
    manifests = sorted(dest.glob(f"*/{MANIFEST}"))
    if not manifests:
        raise SystemExit(f"wheelhouse: no {MANIFEST} under {dest}/*/ (not a split wheelhouse)")
    layout = json.loads(manifests[0].read_text())
    missing = [str(n) for n in range(1, layout["folders"] + 1) if not (dest / str(n) / MANIFEST).is_file()]
    if missing:
        raise SystemExit(
            f"wheelhouse: folders {', '.join(missing)} of {layout['folders']} have not arrived in {dest}"
        )
    # Every part present before any wheel is written: a copy cut short leaves a folder with its
    # manifest and without some of its parts.
    parts = (part for entry in layout["wheels"].values() for part in entry["parts"].values())
    absent = sorted(part for part in parts if not (dest / part).is_file())
    if absent:
        raise SystemExit(f"wheelhouse: parts missing in {dest}: {', '.join(absent)} (copy again)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for wheel, entry in sorted(layout["wheels"].items()):
        target = out / wheel
        with target.open("wb") as dst:
            for index in sorted(entry["parts"], key=int):
                with (dest / entry["parts"][index]).open("rb") as src:
                    shutil.copyfileobj(src, dst, MIB)
        size = target.stat().st_size
        if size != entry["size"] or sha256(target) != entry["sha256"]:
            target.unlink()
            raise SystemExit(f"wheelhouse: {wheel} joined to {size} bytes that do not match its manifest")
        written.append(target)
    return written


def requirements(pyproject: Path, python: str) -> list[str]:
    """The project's dependencies and EXTRAS, with markers decided for `python`."""
    # The standard library's TOML reader (3.11+) and `packaging`, else the copies pip vendors: fetch
    # runs pip, so pip is there.
    try:
        import tomllib
    except ModuleNotFoundError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    try:
        from packaging.requirements import Requirement
    except ModuleNotFoundError:
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]

    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *(line for name in EXTRAS for line in extras[name]), *BUILD]
    env = {"python_version": python, "python_full_version": f"{python}.0"}
    kept = []
    for line in wanted:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            kept.append(str(req))
    return kept


def fetch(
    dest: Path, python: str, part_bytes: int, skip: set[str], perf_analyzer: str = "none"
) -> list[Path]:
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"wheelhouse: {dest} is not empty; remove it first")
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp)
        base = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", tmp]
        base += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        subprocess.run([*base, *platforms, *requirements(root / "pyproject.toml", python)], check=True)
        if perf_analyzer != "none":  # not a dependency: its own platform tag, no dependencies
            tool = [*base, "--no-deps", "--platform", PERF_ANALYZER_PLATFORM]
            subprocess.run([*tool, f"perf-analyzer=={perf_analyzer}"], check=True)
        for wheel in wheels.glob("*.whl"):
            if project_name(wheel.name) in skip:
                wheel.unlink()
        return split(wheels, dest, part_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    get = verbs.add_parser("fetch", help="download and lay out the wheels (needs an index)")
    get.add_argument("dest", type=Path)
    get.add_argument("--python", default="3.12", help="target CPython version (default 3.12)")
    get.add_argument("--part-mib", type=int, default=50, help="largest folder, MiB (default 50)")
    get.add_argument("--skip", nargs="*", default=[], help="projects the target already has")
    get.add_argument(
        "--perf-analyzer", default=PERF_ANALYZER, help=f"its version, or none (default {PERF_ANALYZER})"
    )
    put = verbs.add_parser("join", help="the wheels back into OUT, checked (standard library only)")
    put.add_argument("dest", type=Path)
    put.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.verb == "fetch":
        skip = {project_name(name) for name in args.skip}
        for folder in fetch(args.dest, args.python, args.part_mib * MIB, skip, args.perf_analyzer):
            size = sum(f.stat().st_size for f in folder.iterdir())
            print(f"{folder}: {len(list(folder.iterdir())) - 1} files, {size / MIB:.1f} MiB")
    else:
        wheels = join(args.dest, args.out)
        print(f"wheelhouse: {len(wheels)} wheels in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
