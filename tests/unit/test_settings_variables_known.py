"""Every SLUICEWAY_* variable the project's own scripts, tests, manifests and server code use is a
setting or listed in `NOT_SETTINGS`: a server started by the test command (which sets
SLUICEWAY_TEST_SHARE) had logged "not a setting and is ignored" for the command's own variable."""

from __future__ import annotations

import re
from pathlib import Path

from server.settings import NOT_SETTINGS, ServerSettings, unknown_variables

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where the project names its variables. Not server/settings.py (its comments spell a typo on
# purpose) nor the tests' own files (they make unknown names to see them reported).
PLACES = ("scripts", "loadtest", "server", "clients", "batcher", "deploy", ".ci", "tests/support",
          "tests/triton", "tests/conftest.py", "Dockerfile", "Dockerfile.gpu")  # fmt: skip
VARIABLE = re.compile(r"\bSLUICEWAY_[A-Z0-9_]*[A-Z0-9]\b")


def _files(place: Path) -> list[Path]:
    if place.is_file():
        return [place]
    return [p for p in place.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def _variables_used() -> dict[str, Path]:
    used: dict[str, Path] = {}
    for place in PLACES:
        for path in _files(REPO_ROOT / place):
            if path == REPO_ROOT / "server" / "settings.py":
                continue
            for name in VARIABLE.findall(path.read_text(errors="replace")):
                used.setdefault(name, path.relative_to(REPO_ROOT))
    return used


def test_every_variable_the_project_uses_is_a_setting_or_known_not_to_be_one() -> None:
    used = _variables_used()
    assert "SLUICEWAY_TEST_SHARE" in used and "SLUICEWAY_PORT" in used  # the scan reads those files
    reported = {name: where for name, where in used.items() if unknown_variables({name: "1"})}
    assert reported == {}


def test_the_not_settings_list_names_no_setting() -> None:
    settings = {f"SLUICEWAY_{name.upper()}" for name in ServerSettings.model_fields}
    assert NOT_SETTINGS.isdisjoint(settings)
