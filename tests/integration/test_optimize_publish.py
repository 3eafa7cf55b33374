"""`sluiceway optimize` publishing a model that loads, measured as its config serves it: a new
model's version_policy and drift reference, dynamic INT8 measured per batch where the config does
not batch requests, and a recipe that changes nothing refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from server.models.repository import load_model_source
from server.observability.sampling import sample_policy
from server.optimize.quantize import as_served_batched
from server.settings import ServerSettings
from tests.integration.test_optimize import LOOSE, _save, optimize, tiny_mlp

pytest.importorskip("onnxconverter_common", reason="the optimize extra is not installed")

SOURCE_CONFIG = """
name: "src"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
"""


def _source(tmp_path: Path, extra: str, version: int = 3) -> Path:
    source = tmp_path / "src"
    (source / str(version)).mkdir(parents=True)
    tiny_mlp(source / str(version) / "model.onnx")
    (source / "config.pbtxt").write_text(SOURCE_CONFIG + extra)
    return source


def test_a_new_model_gets_a_version_policy_that_serves_the_published_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`specific { versions: [3] }` was copied to a model with versions 1 and 2: it did not load, and
    the command said so and exited 0."""
    source = _source(tmp_path, "version_policy { specific { versions: [ 3 ] } }\n")
    (tmp_path / "repo").mkdir()
    assert optimize(source, tmp_path / "repo", "newm", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    out = capsys.readouterr().out
    assert "published as version 2" in out and "its version_policy serves versions [2]" in out
    assert sorted(load_model_source(tmp_path / "repo", "newm").versions) == [2]


def test_a_version_policy_that_serves_nothing_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never exit 0 for a model that cannot load: here the repository's own policy names a
    version that is not there."""
    model_dir = tmp_path / "repo" / "tiny"
    (model_dir / "1").mkdir(parents=True)
    tiny_mlp(model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text('name: "tiny"\nversion_policy { specific { versions: [7] } }\n')
    assert optimize(model_dir / "1" / "model.onnx", tmp_path / "repo", "tiny", "--fp16", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "version_policy.specific.versions [7] names none of the versions the model would have once" in err
    assert "published ([1, 2])" in err and "nothing was published" in err  # not "present on disk"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]


def test_a_new_model_gets_its_drift_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The config named `drift_reference` "ref.npz", which was not copied: the new model failed to
    load ("cannot be read: No such file or directory") after an exit 0."""
    extra = 'parameters { key: "drift_reference" value { string_value: "refs/ref.npz" } }\n'
    source = _source(tmp_path, extra)
    (source / "refs").mkdir()
    np.savez(source / "refs" / "ref.npz", **{"out:logits": np.zeros((4, 10), np.float32)})
    (tmp_path / "repo").mkdir()
    assert optimize(source, tmp_path / "repo", "newm", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    model_dir = tmp_path / "repo" / "newm"
    assert (model_dir / "refs" / "ref.npz").read_bytes() == (source / "refs" / "ref.npz").read_bytes()
    found = load_model_source(tmp_path / "repo", "newm")
    assert sample_policy(found.config, model_dir, ServerSettings()).reference is not None
    # A reference that cannot be read stops the command before anything is written.
    (source / "refs" / "ref.npz").unlink()
    assert optimize(source, tmp_path / "repo", "other", f"--fp16 {LOOSE}", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "parameters 'drift_reference' 'refs/ref.npz' cannot be read" in err
    assert "nothing was published" in err and not (tmp_path / "repo" / "other").exists()


def test_an_absolute_or_unfit_drift_reference_never_writes_into_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reference named by an absolute path inside the source's folder had been written over the
    source's own file (the new folder joined with an absolute name is that name), the new model
    failing to load; one that did not fit the model had been copied with an exit 0."""
    source = _source(tmp_path, "")
    ref = source / "ref.npz"
    np.savez(ref, **{"out:logits": np.zeros((4, 10), np.float32)})
    config = source / "config.pbtxt"
    plain = config.read_text()
    config.write_text(plain + f'parameters {{ key: "drift_reference" value {{ string_value: "{ref}" }} }}\n')
    before = (ref.read_bytes(), ref.stat().st_mtime_ns)
    (tmp_path / "repo").mkdir()
    assert optimize(source, tmp_path / "repo", "newm", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    assert (ref.read_bytes(), ref.stat().st_mtime_ns) == before  # the source's file untouched
    model_dir = tmp_path / "repo" / "newm"
    assert (model_dir / "ref.npz").read_bytes() == before[0]
    found = load_model_source(tmp_path / "repo", "newm")
    assert found.config.parameters["drift_reference"].string_value == "ref.npz"
    assert sample_policy(found.config, model_dir, ServerSettings()).reference is not None
    for name, arrays in (("wide", {"out:logits": np.zeros((4, 3), np.float32)}), ("junk", None)):
        if arrays is None:
            ref.write_bytes(b"not an archive")
        else:
            np.savez(ref, **arrays)
        assert optimize(source, tmp_path / "repo", name, f"--fp16 {LOOSE}", tmp_path / "r") == 2
        err = capsys.readouterr().err
        assert "nothing was published" in err and not (tmp_path / "repo" / name).exists()
        assert ("is shaped [4, 3]" if arrays else "cannot read") in err


def _mean_abs_in_report(report: Path) -> float:
    line = next(row for row in (report / "report.md").read_text().splitlines() if row.startswith("| y |"))
    return float(line.split("|")[3])


def _mean_abs(original: Path, measured: Path, x: np.ndarray, rows: int) -> float:
    """The mean absolute difference of the two models run on `x` in batches of `rows`."""
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (original, measured)
    ]
    diffs = []
    for start in range(0, len(x), rows):
        batch = {"x": x[start : start + rows]}
        diffs.append(np.abs(sessions[0].run(None, batch)[0] - sessions[1].run(None, batch)[0]))
    return float(np.concatenate(diffs).mean())


def _ignores_its_first_feature(path: Path) -> Path:
    """y = x @ w, x [N, 16] -> y [N, 4], the first feature's weights zero: a large first feature
    changes no output, only the quantization step of what it is quantized with."""
    weights = np.random.default_rng(11).standard_normal((16, 4))
    weights[0] = 0.0
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    return _save([helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": weights}, inp, "y", ["N", 4], path)


@pytest.mark.parametrize("batching", ["", "dynamic_batching { }\n"])
def test_dynamic_int8_is_measured_as_the_config_serves_it(tmp_path: Path, batching: str) -> None:
    """Measured per row, as a batching server runs it, also for a config without dynamic_batching,
    which the server runs per batch: a top-1 disagreement of 0 there was 0.03 served. The batches
    are no larger than max_batch_size."""
    model_dir, rows = tmp_path / "mlp", 4
    (model_dir / "1").mkdir(parents=True)
    source = _ignores_its_first_feature(model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(
        f'name: "mlp"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {rows}\n{batching}'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    x = np.random.default_rng(5).standard_normal((16, 16)).astype(np.float32)
    x[::rows, 0] = 1000.0  # one row in each batch widens the others' quantization step per batch
    (tmp_path / "val").mkdir()
    np.save(tmp_path / "val" / "x.npy", x)
    flags = f"--int8 dynamic --max-accuracy-drop -1 --validation-data {tmp_path / 'val'}"
    assert optimize(model_dir, tmp_path, "mlp", flags, tmp_path / "r") == 0
    published = model_dir / "2" / "model.onnx"
    per_batch = _mean_abs(source, published, x, rows)
    per_row = _mean_abs(source, as_served_batched(published, tmp_path), x, rows)
    assert per_batch > 2 * per_row  # the two forms differ on these inputs
    text = (tmp_path / "r" / "report.md").read_text()
    if batching:
        assert "activations quantized per row, as a batching server runs them" in text
        assert _mean_abs_in_report(tmp_path / "r") == pytest.approx(per_row, rel=1e-3)
    else:
        assert "activations quantized per batch, as this config serves them" in text
        assert f"measured on batches of {rows} rows" in text
        assert _mean_abs_in_report(tmp_path / "r") == pytest.approx(per_batch, rel=1e-3)


def test_a_recipe_that_changes_nothing_is_not_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--no-offline-optimize` alone published a byte-identical copy as a new version ("copy",
    "1.00x smaller") and exited 0."""
    source = tiny_mlp(tmp_path / "tiny.onnx")
    assert optimize(source, tmp_path, "tiny", "--no-offline-optimize", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "--no-offline-optimize without --int8 or --fp16 changes nothing: nothing to publish" in err
    assert not (tmp_path / "tiny").exists()
    # The same for a graph the offline optimization has nothing to change in.
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Gemm", ["x", "w"], ["y"])
    gemm = _save([node], {"w": np.eye(4)}, inp, "y", ["N", 4], tmp_path / "gemm.onnx")
    assert optimize(gemm, tmp_path, "gemm", "", tmp_path / "r") == 2
    assert "left the model as it was (the same nodes and weights" in capsys.readouterr().err


WARMUP = """model_warmup [ { name: "w" batch_size: 2
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 32 ] input_data_file: "feat" } } } ]
"""


def test_a_new_model_gets_its_warm_up_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The config's warm-up file was not copied: the new model failed to load ("input_data_file
    'feat' cannot be read") after an exit 0 (a tester, session 49)."""
    source = _source(tmp_path, WARMUP)
    (source / "warmup").mkdir()
    (source / "warmup" / "feat").write_bytes(np.ones(32, np.float32).tobytes())  # one row, for both
    (tmp_path / "repo").mkdir()
    assert optimize(source, tmp_path / "repo", "newm", f"--fp16 {LOOSE}", tmp_path / "r") == 0
    model_dir = tmp_path / "repo" / "newm"
    assert (model_dir / "warmup" / "feat").read_bytes() == (source / "warmup" / "feat").read_bytes()
    # One that cannot be read stops the command before anything is written.
    (source / "warmup" / "feat").unlink()
    assert optimize(source, tmp_path / "repo", "other", f"--fp16 {LOOSE}", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "model_warmup 'w' input 'x' input_data_file 'warmup/feat' cannot be read" in err
    assert "nothing was published" in err and not (tmp_path / "repo" / "other").exists()


def test_a_states_initial_data_file_is_among_the_files_copied(tmp_path: Path) -> None:
    from google.protobuf import text_format

    from protos import model_config_pb2 as mc
    from server.optimize.publish import _data_files

    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "init.bin").write_bytes(b"\1" * 16)
    config = text_format.Parse(
        'sequence_batching { state [ { input_name: "acc" output_name: "acc_out" data_type: TYPE_FP32 '
        'dims: [ 4 ] initial_state { data_type: TYPE_FP32 dims: [ 4 ] data_file: "init.bin" name: "i" } } '
        "] }",
        mc.ModelConfig(),
    )
    [copied] = _data_files(tmp_path / "config.pbtxt", config)
    assert (copied.name, copied.data) == ("initial_state/init.bin", b"\1" * 16)
