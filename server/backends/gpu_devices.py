"""Which GPUs this process can use, found cheaply: no CUDA library is loaded to count them.

Triton places a KIND_GPU group without `gpus` on every visible GPU, resolves KIND_AUTO to
KIND_GPU when there is one, and refuses a `gpus` entry that is not visible
(server/backends/instance_groups.py). "Visible" is CUDA's: the driver's devices, narrowed and
renumbered by CUDA_VISIBLE_DEVICES. The driver's devices are counted from
/proc/driver/nvidia/gpus (one folder per GPU; a container sees only its own), else from
`nvidia-smi -L` where there is no such folder; an onnxruntime build without the CUDA provider
can use none of them. Where neither can count (no folder, no nvidia-smi: some containers), a CUDA
build is taken to have one device, GPU 0, as before this count existed: its instances then find
out at session start, and fall back to the CPU there, with the instance's own line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from server.whole_numbers import whole_number

PROC_GPUS = Path("/proc/driver/nvidia/gpus")
CUDA_PROVIDER = "CUDAExecutionProvider"
_SMI_TIMEOUT_S = 10.0  # nvidia-smi can hang on a wedged driver: a load must not


def visible_ids(value: str | None, physical: int) -> tuple[int, ...]:
    """The device ids CUDA gives this process: 0..n-1 where n is the number of `physical` devices
    that CUDA_VISIBLE_DEVICES (`value`; None: unset) lets through. As CUDA reads it: a comma list
    of indices or UUIDs (`GPU-...`, `MIG-...`), read up to its first invalid entry (an index out of
    range, a repeat, anything else); set but empty hides every device."""
    if physical <= 0:
        return ()
    if value is None:
        return tuple(range(physical))
    seen: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        index = whole_number(entry, physical - 1)  # ASCII digits: "²" had raised, "٣" read as 3
        if not (index is not None or entry.startswith(("GPU-", "MIG-"))):
            break
        key = str(index) if index is not None else entry
        if key in seen or len(seen) == physical:
            break
        seen.append(key)
    return tuple(range(len(seen)))


def smi_listing(timeout_s: float = _SMI_TIMEOUT_S) -> str | None:
    """`nvidia-smi -L`'s output; None where it is missing, fails or hangs."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def smi_count() -> int | None:
    """GPUs `nvidia-smi -L` lists (`GPU 0: ...` lines); None where it is missing or fails."""
    listing = smi_listing()
    return None if listing is None else sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def physical_count(proc_gpus: Path = PROC_GPUS, fallback: Callable[[], int | None] = smi_count) -> int | None:
    """The driver's GPUs: /proc/driver/nvidia/gpus's folders, else `fallback` (nvidia-smi); None
    where neither can say."""
    try:
        return sum(1 for entry in proc_gpus.iterdir() if entry.is_dir())
    except OSError:  # no NVIDIA driver folder here, or a system without /proc
        return fallback()


def visible_gpus(
    providers: list[str] | tuple[str, ...],
    environ: Mapping[str, str] | None = None,
    proc_gpus: Path = PROC_GPUS,
    fallback: Callable[[], int | None] = smi_count,
) -> tuple[int, ...]:
    """The GPU ids instances may use: none when `providers` (onnxruntime's available providers)
    lack CUDA; else the visible ones (CUDA_VISIBLE_DEVICES of `environ`, default os.environ)."""
    if CUDA_PROVIDER not in providers:
        return ()
    env = os.environ if environ is None else environ
    counted = physical_count(proc_gpus, fallback)
    # Uncounted: GPU 0 alone, whose session says at its start whether it is there (module doc).
    return visible_ids(env.get("CUDA_VISIBLE_DEVICES"), 1 if counted is None else counted)
