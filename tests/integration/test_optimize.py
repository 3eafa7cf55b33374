"""`sluiceway optimize` on tiny locally built models: every mode, the refusal, the version_policy
note, no temporary files left behind, and the published version served by a real server."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.cli import main
from server.optimize.data import InputSpec, OptimizeError, generate_batches, input_specs, load_batches
from server.optimize.quantize import preprocess
from tests.support.server_process import REPO_ROOT, ServerProcess

pytest.importorskip("onnxconverter_common", reason="the optimize extra is not installed")

# Tiny random classifiers have near-tied classes that INT8 noise can flip: a loose limit unless the
# limit is what a test is about.
LOOSE = "--max-accuracy-drop 0.25"
FAST = ["--batch-sizes", "1,4", "--repetitions", "3", "--validation-rows", "16", "--calibration-rows", "16"]
CLASSIFIER_CONFIG = """
name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy { latest { num_versions: 2 } }
"""


def _save(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    inp: onnx.ValueInfoProto,
    out: str,
    out_dims: list[int | str],
    path: Path,
) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [inp],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_dims)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tiny_mlp(path: Path) -> Path:
    """x FP32 [N,32] -> Gemm 64 -> Relu -> Gemm 64 -> Relu -> Gemm 10 -> logits [N,10]."""
    rng = np.random.default_rng(7)
    inits, nodes, x = {}, [], "x"
    for i, (fan_in, fan_out) in enumerate([(32, 64), (64, 64), (64, 10)]):
        inits[f"w{i}"] = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)
        inits[f"b{i}"] = np.full(fan_out, 0.01)
        y = "logits" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [y], [f"r{i}"]))
            y = f"r{i}"
        x = y
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])
    return _save(nodes, inits, inp, "logits", ["N", 10], path)


def tiny_cnn(path: Path) -> Path:
    """image FP32 [N,3,16,16] -> Conv 8 -> Relu -> Conv 8 -> Relu -> pool -> Gemm 5 -> logits [N,5]."""
    rng = np.random.default_rng(8)
    inits = {
        "c0.w": rng.standard_normal((8, 3, 3, 3)) * 0.3,
        "c0.b": np.zeros(8),
        "c1.w": rng.standard_normal((8, 8, 3, 3)) * 0.15,
        "c1.b": np.zeros(8),
        "fc.w": rng.standard_normal((8, 5)) * 0.5,
        "fc.b": np.zeros(5),
    }
    nodes = [
        helper.make_node("Conv", ["image", "c0.w", "c0.b"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "c1.w", "c1.b"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"]),
    ]
    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])
    return _save(nodes, inits, inp, "logits", ["N", 5], path)


def optimize(source: Path, repo: Path, model: str, flags: str = "", report: Path | None = None) -> int:
    """`sluiceway optimize SOURCE --repository REPO --model MODEL FLAGS` with fast settings."""
    args = ["optimize", str(source), "--repository", str(repo), "--model", model, *flags.split(), *FAST]
    return main(args + ([] if report is None else ["--report-dir", str(report)]))


def _run(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out: np.ndarray = session.run(None, {name: x})[0]
    return out


def _element_types(model: Path) -> set[int]:
    return {init.data_type for init in onnx.load(str(model)).graph.initializer}


def test_dynamic_int8_publishes_the_next_version_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tiny_mlp(tmp_path / "tiny.onnx")
    repo, report = tmp_path / "repo", tmp_path / "report"
    repo.mkdir()
    assert optimize(source, repo, "tiny", f"--int8 dynamic {LOOSE}", report) == 0
    out = capsys.readouterr().out
    assert "published as version 2" in out and "the original went in as version 1" in out
    assert (repo / "tiny" / "1" / "model.onnx").read_bytes() == source.read_bytes()
    published = repo / "tiny" / "2" / "model.onnx"
    assert TensorProto.INT8 in _element_types(published)
    x = np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32)
    assert np.allclose(_run(published, x), _run(source, x), atol=0.2)
    text = (report / "report.md").read_text()
    for heading in ("top-1 agreement", "min cosine", "speed-up", "size", "latency.png"):
        assert heading in text
    assert (report / "report.html").is_file() and (report / "latency.png").is_file()
    # Measured as a batching server runs it (per row), published as written (the server rewrites it).
    assert "activations quantized per row, as a batching server runs them" in text
    assert not any(n.name.startswith("sluiceway_rowq") for n in onnx.load(str(published)).graph.initializer)
    # From the model directory: its newest version is the INT8 one, which is not quantized again.
    assert optimize(repo / "tiny", repo, "tiny", "--int8 dynamic --per-channel", report) == 2
    assert "is already optimized (" in capsys.readouterr().err
    flags = f"--source-version 1 --int8 dynamic --per-channel {LOOSE}"
    assert optimize(repo / "tiny", repo, "tiny", flags, report) == 0
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["1", "2", "3"]


def test_static_per_channel_calibrates_on_npy_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tiny_cnn(tmp_path / "cnn.onnx")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):  # 4 rows, 4 rows and one row without its batch axis
        shape = (3, 16, 16) if i == 2 else (4, 3, 16, 16)
        np.save(calibration / f"part{i}.npy", rng.standard_normal(shape).astype(np.float32))
    flags = f"--int8 static --per-channel --calibration-data {calibration} {LOOSE}"
    assert optimize(source, tmp_path, "cnn", flags, tmp_path / "r") == 0
    assert "INT8 static per-channel" in capsys.readouterr().out
    published = tmp_path / "cnn" / "2" / "model.onnx"
    ops = {node.op_type for node in onnx.load(str(published)).graph.node}
    assert ops & {"QLinearConv", "QuantizeLinear", "DequantizeLinear"}, ops
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert _run(published, x).shape == (2, 5)


def test_static_without_calibration_data_generates_inputs_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tiny_cnn(tmp_path / "cnn.onnx")
    with caplog.at_level(logging.WARNING):
        code = optimize(
            source, tmp_path, "cnn", "--int8 static --no-publish --max-accuracy-drop -1", tmp_path
        )
    assert code == 0
    assert "no calibration data given" in caplog.text and "real inputs" in caplog.text
    assert not (tmp_path / "cnn").exists()


def test_fp16_keeps_fp32_inputs_and_outputs(tmp_path: Path) -> None:
    source = tiny_mlp(tmp_path / "tiny.onnx")
    assert optimize(source, tmp_path, "tiny", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    published = tmp_path / "tiny" / "2" / "model.onnx"
    assert TensorProto.FLOAT16 in _element_types(published)
    assert input_specs(published) == [InputSpec("x", (None, 32), np.dtype(np.float32))]
    x = np.random.default_rng(2).standard_normal((5, 32)).astype(np.float32)
    result = _run(published, x)
    assert result.dtype == np.float32 and np.allclose(result, _run(source, x), atol=0.05)


def test_refuses_to_publish_past_the_accuracy_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tiny_mlp(tmp_path / "tiny.onnx")
    flags = "--int8 dynamic --accuracy-measure cosine --max-accuracy-drop 1e-9"
    assert optimize(source, tmp_path, "tiny", flags, tmp_path / "r") == 1
    out = capsys.readouterr().out
    assert "REFUSED: accuracy drop" in out and "exceeds --max-accuracy-drop 1e-09 by" in out
    assert "1 - min cosine, or the largest row error over the output's RMS row norm" in out
    assert not (tmp_path / "tiny").exists()
    assert "REFUSED" in (tmp_path / "r" / "report.md").read_text()


def test_says_when_the_version_policy_would_not_serve_the_new_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "tiny"
    (model_dir / "1").mkdir(parents=True)
    tiny_mlp(model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text('name: "tiny"\nversion_policy { specific { versions: [1] } }\n')
    assert optimize(model_dir, tmp_path, "tiny", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    out = capsys.readouterr().out
    assert "published as version 2" in out and "serves versions [1], not 2" in out


def test_bad_usage_is_refused_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tiny_mlp(tmp_path / "tiny.onnx")
    assert optimize(source, tmp_path, "tiny", "--fp16 --per-channel") == 2
    assert "--per-channel applies to --int8" in capsys.readouterr().err
    assert optimize(tmp_path / "missing.onnx", tmp_path, "tiny") == 2
    assert "no such model file" in capsys.readouterr().err
    assert optimize(source, tmp_path, "../escape", "", tmp_path / "r") == 2
    assert "a model name is one directory name" in capsys.readouterr().err


def test_int8_activations_without_static_int8_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --int8 dynamic the flag had been accepted and silently ignored (activations are quantized
    at run time, never as the flag says); refused as --calibration-data is."""
    source = tiny_mlp(tmp_path / "tiny.onnx")
    for flags in (
        "--int8 dynamic --int8-activations int8",
        "--fp16 --int8-activations uint8",
        "--int8-activations int8",
    ):
        assert optimize(source, tmp_path, "tiny", f"{flags} --no-publish {LOOSE}", tmp_path / "r") == 2
        err = capsys.readouterr().err
        assert err == "sluiceway optimize: --int8-activations applies to --int8 static\n", flags
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_a_non_finite_accuracy_limit_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """NaN is neither negative nor above any drop: the gate had been off ("0 (no limit)", exit 0, and
    published without --no-publish). Infinity is no documented "no limit" either."""
    source = tiny_mlp(tmp_path / "tiny.onnx")
    code = optimize(source, tmp_path, "tiny", f"--int8 dynamic --max-accuracy-drop={value}", tmp_path / "r")
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-accuracy-drop" in err and "a finite number" in err
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "r").exists()


def test_an_already_optimized_model_is_bad_input_exit_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Already INT8 or FP16 is a property of the source, found before anything is measured: exit 2
    (bad input), as the README's exit codes define it; 1 is the accuracy gate's refusal."""
    source = tiny_mlp(tmp_path / "tiny.onnx")
    assert optimize(source, tmp_path, "tiny", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    capsys.readouterr()
    for flags in ("--fp16", "--int8 dynamic"):
        assert optimize(tmp_path / "tiny", tmp_path, "tiny", f"{flags} {LOOSE}", tmp_path / "r2") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is already optimized (FP16 weights): start from the original" in err
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1", "2"]


def test_int8_that_quantizes_nothing_is_refused_naming_the_operators(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An Add+Relu model came out of INT8 unchanged and was reported and publishable as INT8."""
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Add", ["x", "b"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    source = _save(nodes, {"b": np.arange(4.0)}, inp, "y", ["N", 4], tmp_path / "addrelu.onnx")
    assert optimize(source, tmp_path, "addrelu", "--int8 dynamic", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "INT8 dynamic quantized no operator of the model (its operators: Add, Relu)" in err
    assert "nothing to publish" in err and not (tmp_path / "addrelu").exists()


def test_int8_of_its_own_graph_optimized_output_is_refused_before_the_quantizer_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The graph-only mode saves onnxruntime's fused ops; quantizing them failed inside the library
    ("Unable to find data type for weight_name ..."). FP16 of it still works."""
    source = tiny_cnn(tmp_path / "cnn.onnx")
    assert optimize(source, tmp_path, "cnn", f"{LOOSE}", tmp_path / "r") == 0
    graph_only = tmp_path / "cnn" / "2"
    assert "FusedConv" in {node.op_type for node in onnx.load(str(graph_only / "model.onnx")).graph.node}
    capsys.readouterr()
    assert optimize(tmp_path / "cnn", tmp_path, "cnn", "--int8 dynamic --no-publish", tmp_path / "r2") == 2
    err = capsys.readouterr().err
    assert "was saved by onnxruntime's graph optimization (FusedConv nodes)" in err
    assert "start from the original model (for a model directory: --source-version N)" in err
    assert optimize(tmp_path / "cnn", tmp_path, "cnn", f"--fp16 --no-publish {LOOSE}", tmp_path / "r3") == 0


def test_data_files_are_checked_and_cut_into_batches(tmp_path: Path) -> None:
    int64 = np.dtype(np.int64)
    specs = [InputSpec("ids", (None, None), int64), InputSpec("mask", (None, None), int64)]
    np.savez(tmp_path / "a.npz", ids=np.ones((5, 7), np.int32), mask=np.ones((5, 7), np.int64))
    np.savez(tmp_path / "b.npz", ids=np.ones((2, 3), np.int64), mask=np.ones((2, 3), np.int64))
    batches = load_batches(tmp_path, specs, batch_size=4, max_rows=100)
    assert [b["ids"].shape for b in batches] == [(4, 7), (1, 7), (2, 3)]
    assert batches[0]["ids"].dtype == np.int64
    np.savez(tmp_path / "c.npz", ids=np.ones((2, 3), np.float32), mask=np.ones((2, 3), np.int64))
    with pytest.raises(OptimizeError, match=r"c\.npz\[ids\].*float32.*int64"):
        load_batches(tmp_path, specs, batch_size=4, max_rows=100)
    generated = generate_batches(specs, rows=10, batch_size=4, seed=0)
    assert [len(b["ids"]) for b in generated] == [4, 4, 2]
    assert np.all(generated[0]["mask"] == 1)


def test_no_temporary_files_are_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp_root, cwd = tmp_path / "tmp", tmp_path / "cwd"
    temp_root.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    monkeypatch.chdir(cwd)
    source = tiny_cnn(tmp_path / "cnn.onnx")
    assert (
        optimize(source, tmp_path, "cnn", "--int8 static --no-publish --max-accuracy-drop -1", tmp_path) == 0
    )
    assert list(cwd.iterdir()) == [] and list(temp_root.iterdir()) == []
    # Pre-processing that fails (here: no such model) falls back to the model as it is.
    work = temp_root / "work"
    work.mkdir()
    missing = tmp_path / "missing.onnx"
    assert preprocess(missing, work) == missing
    assert list(cwd.iterdir()) == []


def test_serving_path_does_not_import_the_optimizer() -> None:
    code = (
        "import sys, server.cli, server.app; server.cli._parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnxconverter_common', 'matplotlib', 'rich', 'tqdm') or m.startswith('onnxruntime.quantization')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def _infer(stub: pb_grpc.GRPCInferenceServiceStub, version: str, x: np.ndarray) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="tiny", model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    response = stub.ModelInfer(request, timeout=30)
    assert response.model_version == version
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(len(x), -1)


def test_published_version_is_served_after_repository_model_load(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    source = tiny_mlp(repo / "tiny" / "1" / "model.onnx")
    (repo / "tiny" / "config.pbtxt").write_text(CLASSIFIER_CONFIG)
    x = np.random.default_rng(3).standard_normal((3, 32)).astype(np.float32)
    with (
        ServerProcess(
            "--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "*"
        ) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        assert np.allclose(_infer(stub, "1", x), _run(source, x), atol=1e-5)
        assert optimize(repo / "tiny", repo, "tiny", f"--int8 dynamic {LOOSE}", tmp_path / "r") == 0
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"), timeout=60)
        served = _infer(stub, "2", x)
        assert np.allclose(served, _run(repo / "tiny" / "2" / "model.onnx", x), atol=1e-5)
        assert np.allclose(served, _run(source, x), atol=0.2)
        assert np.allclose(_infer(stub, "1", x), _run(source, x), atol=1e-5)  # num_versions: 2 keeps it


def test_a_model_that_does_not_match_the_repositorys_config_is_not_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unrelated model was published beside a config it did not match: the whole model went
    UNAVAILABLE at the next load, while the command said it was served."""
    model_dir = tmp_path / "repo" / "tiny"
    (model_dir / "1").mkdir(parents=True)
    tiny_mlp(model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(
        CLASSIFIER_CONFIG + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 32 ] } ]\n'
    )
    other = tiny_cnn(tmp_path / "cnn.onnx")
    assert optimize(other, tmp_path / "repo", "tiny", f"--fp16 {LOOSE}", tmp_path / "r") == 2
    assert "nothing was published" in capsys.readouterr().err
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]


def test_a_new_model_gets_its_label_files_and_no_traffic_policy(tmp_path: Path) -> None:
    """The config's label file was not copied, and its traffic policy named the source's versions:
    both left the new model UNAVAILABLE."""
    source = tmp_path / "src" / "tiny"
    (source / "3").mkdir(parents=True)
    tiny_mlp(source / "3" / "model.onnx")
    (source / "labels.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    (source / "config.pbtxt").write_text(
        CLASSIFIER_CONFIG.replace(
            "version_policy { latest { num_versions: 2 } }", "version_policy { all { } }"
        )
        + 'output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]\n'
        + 'parameters { key: "traffic_weights" value { string_value: "3:100" } }\n'
    )
    (tmp_path / "repo").mkdir()
    assert optimize(source, tmp_path / "repo", "tiny", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    published = tmp_path / "repo" / "tiny"
    assert (published / "labels.txt").read_text() == (source / "labels.txt").read_text()
    assert "traffic_weights" not in (published / "config.pbtxt").read_text()
    server = ServerProcess("--model-repository", str(tmp_path / "repo"))
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for version in ("1", "2"):
            ready = stub.ModelReady(pb.ModelReadyRequest(name="tiny", version=version), timeout=30)
            assert ready.ready, version


def test_a_model_with_external_weights_is_optimized_and_published_with_them(tmp_path: Path) -> None:
    """Only model.onnx was copied (version 1 failed: "External data path does not exist"), and the
    graph-only mode could not load the model at all."""
    model = onnx.load(str(tiny_mlp(tmp_path / "inline.onnx")))
    (tmp_path / "src").mkdir()
    onnx.save(model, str(tmp_path / "src" / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)  # fmt: skip
    assert optimize(tmp_path / "src", tmp_path, "ext", f"{LOOSE}", tmp_path / "r") == 0  # graph only
    for version in ("1", "2"):
        folder = tmp_path / "ext" / version
        assert ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert (tmp_path / "ext" / "1" / "model.onnx.data").is_file()


def test_the_default_report_folder_is_never_inside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from inside the repository, the reports made a folder the server took for a model with
    no versions (UNAVAILABLE, ServerReady false)."""
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert optimize(tiny_mlp(tmp_path / "tiny.onnx"), Path("."), "tiny", f"--fp16 {LOOSE}") == 0
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["tiny"]
    assert (tmp_path / "optimize-reports").is_dir()


def test_unreadable_data_and_folders_are_refused_by_name_not_with_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tiny_mlp(tmp_path / "tiny.onnx")
    (tmp_path / "pickled").mkdir()
    np.save(tmp_path / "pickled" / "v.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "empty" / "v.npy", np.zeros((0, 32), np.float32))
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "file").write_text("a file where the report folder should be")
    for flags, said in (
        (f"--fp16 --validation-data {tmp_path / 'pickled'}", "not a numpy .npy/.npz file it can read"),
        (f"--fp16 --validation-data {tmp_path / 'empty'}", "its files hold no rows"),
    ):
        assert optimize(source, tmp_path, "t", flags, tmp_path / "r") == 2
        assert said in capsys.readouterr().err
    assert optimize(source, tmp_path, "t", "--fp16", tmp_path / "ro" / "file" / "r") == 2
    assert "cannot write there" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # nothing published before the report folder was known good
