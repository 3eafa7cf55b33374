"""What the mutation run of the GPU count (server/backends/gpu_devices.py) found untested:
CUDA_VISIBLE_DEVICES's MIG UUIDs, repeats written two ways, indices one past the last device, the
process environment as the default; and `nvidia-smi -L` (a fake executable on PATH): missing,
failing, unrunnable, hanging, and its `GPU ` lines counted. tests/MUTANTS.md lists the mutants."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from server.backends.gpu_devices import smi_count, smi_listing, visible_gpus, visible_ids

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
LISTING = (
    "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5e3a1c2d-0000-0000-0000-000000000000)\n"
    "  MIG 3g.40gb     Device  0: (UUID: MIG-1b2c3d4e-0000-0000-0000-000000000000)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-7f6e5d4c-0000-0000-0000-000000000000)\n"
)


# -- CUDA_VISIBLE_DEVICES -------------------------------------------------------------------------


def test_an_index_one_past_the_last_device_ends_the_list() -> None:
    """With 4 devices (0..3), "4" is out of range: the list is read up to it."""
    assert visible_ids("0,4,1", 4) == (0,)
    assert visible_ids("3,0", 4) == (0, 1)


def test_mig_uuids_count_as_devices() -> None:
    """A MIG instance's UUID lets a device through, as a GPU UUID does."""
    assert visible_ids("MIG-1b2c3d4e,0", 2) == (0, 1)


def test_a_repeat_is_the_same_index_however_written() -> None:
    """ "0" and "00" are both device 0: the second is a repeat and ends the list."""
    assert visible_ids("0,00,1", 4) == (0,)


def test_distinct_uuids_are_distinct_devices_and_a_repeated_one_ends_the_list() -> None:
    """UUIDs are told apart by their text, not taken as one "no index" entry."""
    assert visible_ids("GPU-aa,GPU-bb", 4) == (0, 1)
    assert visible_ids("GPU-aa,GPU-aa,1", 4) == (0,)


def test_the_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `environ`, CUDA_VISIBLE_DEVICES is read from os.environ."""
    gpus = tmp_path / "gpus"
    for i in range(3):
        (gpus / f"0000:0{i + 1}:00.0").mkdir(parents=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert visible_gpus(CUDA, None, gpus, lambda: None) == (0,)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(CUDA, proc_gpus=gpus) == (0, 1, 2)


# -- nvidia-smi -L --------------------------------------------------------------------------------


def _smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str | None) -> None:
    """PATH is one folder, holding an executable `nvidia-smi` with `script` (None: no nvidia-smi)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if script is not None:
        smi = folder / "nvidia-smi"
        smi.write_text(script)
        smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))


def test_the_listing_is_nvidia_smi_dash_l_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nvidia-smi -L` (exactly that argument) is run and its stdout returned as text."""
    _smi(
        tmp_path,
        monkeypatch,
        f"#!/bin/sh\n"
        f'[ "$#" -eq 1 ] && [ "$1" = "-L" ] || {{ echo "bad arguments: $*" >&2; exit 2; }}\n'
        f"printf '%s' '{LISTING}'\n",
    )
    assert smi_listing() == LISTING


def test_gpu_lines_are_counted_not_mig_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `GPU ` lines: two devices; the MIG line under the first is not a third."""
    _smi(tmp_path, monkeypatch, f"#!/bin/sh\nprintf '%s' '{LISTING}'\n")
    assert smi_count() == 2


def test_a_missing_nvidia_smi_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No nvidia-smi on PATH: no listing and no count (not an error)."""
    _smi(tmp_path, monkeypatch, None)
    assert smi_listing() is None
    assert smi_count() is None


def test_a_failing_nvidia_smi_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-zero exit (a driver it cannot talk to) is no listing, whatever it printed."""
    _smi(
        tmp_path,
        monkeypatch,
        "#!/bin/sh\necho 'GPU 0: NVIDIA-SMI has failed because it could not talk to the driver'\nexit 9\n",
    )
    assert smi_listing() is None
    assert smi_count() is None


def test_an_nvidia_smi_that_cannot_run_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An executable file that is no program (exec fails with OSError) is no listing."""
    _smi(tmp_path, monkeypatch, "GPU 0: not a script\n")
    assert smi_listing() is None


def test_a_hanging_nvidia_smi_is_given_up_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One that does not exit within the timeout is killed and gives no listing (a wedged driver
    must not hang a model load)."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    _smi(tmp_path, monkeypatch, f"#!/bin/sh\necho 'GPU 0: NVIDIA H100'\nexec {sleep} 20\n")
    assert smi_listing(timeout_s=0.5) is None
