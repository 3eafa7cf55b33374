"""Ops that crash this install's onnxruntime as it opens a session: the whole process aborts, not
an error to report. The load screens for them (onnx_inspect.py) so that one model in a repository
cannot take the server and every other model down with it.

onnxruntime 1.23 (the last release with wheels for Python 3.10, what that Python installs) aborts
opening a session holding com.microsoft's ExpandDims; 1.31 opens it (session 56's fresh-clone CI
run lost two test workers to it)."""

from __future__ import annotations

import re

import onnx

from server.backends.onnx_mixing_graph import all_nodes

# (domain, op, the first onnxruntime release that opens it)
CRASHES: tuple[tuple[str, str, tuple[int, int]], ...] = (("com.microsoft", "ExpandDims", (1, 31)),)


def known_crash(model: onnx.ModelProto, runtime: str) -> str | None:
    """Why `model` cannot be opened by onnxruntime `runtime` (its version) without crashing the
    process, or None."""
    found = re.match(r"(\d+)\.(\d+)", runtime)
    if found is None:
        return None  # a build that names no version: not one of those known to crash
    release = (int(found.group(1)), int(found.group(2)))
    for node in all_nodes(model):
        for domain, op, fixed in CRASHES:
            if node.domain == domain and node.op_type == op and release < fixed:
                made = node.output[0] if node.output else ""
                return (
                    f"the {op} node making '{made}' ({domain}) crashes onnxruntime {runtime}, this "
                    f"server's, as it opens a session (the whole server with it); onnxruntime "
                    f"{fixed[0]}.{fixed[1]} opens it: write it as ONNX's Unsqueeze, or run the server "
                    f"with a newer onnxruntime (Python 3.11 or later)"
                )
    return None


def onnxruntime_version() -> str:
    """This install's onnxruntime (the CPU or the GPU wheel: both are the package `onnxruntime`)."""
    import onnxruntime

    return str(onnxruntime.__version__)
