"""Ops that crash this install's onnxruntime as it opens a session: the whole process aborts, not
an error to report. The load screens for them (onnx_inspect.py) so that one model in a repository
cannot take the server and every other model down with it.

onnxruntime 1.23 (the last release with wheels for Python 3.10, what that Python installs) aborts
opening a session holding com.microsoft's ExpandDims; 1.31 opens it (session 56's fresh-clone CI
run lost two test workers to it). onnxruntime 1.31 opens a graph whose Split or Loop leaves an
output ONNX requires unnamed, then crashes at its first run (a tester, session 57): such a graph
breaks ONNX's rules (only an optional output may be left unnamed), and onnx's checker passes it."""

from __future__ import annotations

import re

import onnx

from server.backends.onnx_mixing_graph import all_nodes, standard_opset

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


def unnamed_required_output(model: onnx.ModelProto) -> str | None:
    """Why `model` breaks ONNX's rules in a way onnxruntime crashes on: an ONNX op's output that
    its schema does not make optional, left unnamed."""
    opset = standard_opset(model)
    for node in all_nodes(model):
        if node.domain not in ("", "ai.onnx") or all(node.output):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            continue  # not an op onnx knows at this opset: onnxruntime's load says so
        formal = schema.outputs
        for at, name in enumerate(node.output):
            param = formal[min(at, len(formal) - 1)] if formal else None
            if (
                not name
                and param is not None
                and param.option != onnx.defs.OpSchema.FormalParameterOption.Optional
            ):
                return (
                    f"the {node.op_type} node's output {at} ('{param.name}') is left unnamed, which ONNX "
                    "allows only for an optional output (onnxruntime crashes running such a graph): name it"
                )
    return None


def onnxruntime_version() -> str:
    """This install's onnxruntime (the CPU or the GPU wheel: both are the package `onnxruntime`)."""
    import onnxruntime

    return str(onnxruntime.__version__)
