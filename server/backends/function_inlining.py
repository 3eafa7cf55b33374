"""Model-local functions inlined with the defaults their calls leave out.

A FunctionProto may give an attribute a default (`attribute_proto`: a Softmax's `axis` of 0 where a
call names none). onnxruntime applies it; onnx's inliner (1.23) drops the attribute instead, and
the op falls back to its own default: a Softmax over the batch's axis read as one over the last,
batched, wrong, OK (a tester, session 58). Each call is given the defaults it leaves out before
the inliner runs, so the inlined graph computes what onnxruntime does.
"""

from __future__ import annotations

import onnx
import onnx.inliner

from server.backends.graph_names import graphs

_Key = tuple[str, str, str]  # a function's domain, name and overload


def _key(domain: str, name: str, overload: str) -> _Key:
    return (domain, name, overload)


def _defaults(model: onnx.ModelProto) -> dict[_Key, list[onnx.AttributeProto]]:
    return {
        _key(f.domain, f.name, getattr(f, "overload", "")): list(f.attribute_proto)
        for f in model.functions
        if f.attribute_proto
    }


def _bodies(model: onnx.ModelProto) -> list[onnx.GraphProto | onnx.FunctionProto]:
    """The main graph and every subgraph in it, and every function with the subgraphs in it."""
    found: list[onnx.GraphProto | onnx.FunctionProto] = [*graphs(model.graph)]
    for function in model.functions:
        found.append(function)
        for node in function.node:
            for attr in node.attribute:
                subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for sub in subs:
                    found.extend(graphs(sub))
    return found


def _calls_missing(model: onnx.ModelProto, defaults: dict[_Key, list[onnx.AttributeProto]]) -> bool:
    for body in _bodies(model):
        for node in body.node:
            given = defaults.get(_key(node.domain, node.op_type, getattr(node, "overload", "")))
            if given and not {a.name for a in given} <= {a.name for a in node.attribute}:
                return True
    return False


def with_call_defaults(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy of it whose calls of local functions carry every default they leave out."""
    defaults = _defaults(model)
    if not defaults or not _calls_missing(model, defaults):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for body in _bodies(copy):
        for node in body.node:
            for default in defaults.get(_key(node.domain, node.op_type, getattr(node, "overload", "")), []):
                if default.name not in {a.name for a in node.attribute}:
                    node.attribute.append(default)
    return copy


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its local functions inlined, each call's left-out attributes at their defaults."""
    return onnx.inliner.inline_local_functions(with_call_defaults(model))
