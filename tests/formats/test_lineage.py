"""Lineage stored inside ONNX, .pt2 and TFLite artifacts: round trips, reproducible bytes, models still run."""

from __future__ import annotations

import copy
import io
import json
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgecli
from edgecli.formats import lineage as lin
from edgecli.formats import onnx_file, pt2_file, tflite_file
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from tests.unit_helpers import images, keras_models, sample_lineage, tflite_cnn, torch_models


@pytest.fixture(scope="module")
def lineage() -> dict[str, Any]:
    return sample_lineage()


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    """Run a TFLite model directly in the LiteRT interpreter (no edgecli code involved)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def tflite_metadata_names(data: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    return [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]


# --- lineage.extend and JSON -----------------------------------------------------------------


def test_extend_appends_a_complete_step() -> None:
    first = lin.extend(
        None,
        verb="prune",
        recipe={"sparsity": 0.5},
        parent_sha256="c" * 64,
        parent_format="pt2",
        metrics={"sparsity": 0.5},
    )
    assert first["edgecli"] == 1
    assert len(first["steps"]) == 1
    step = first["steps"][0]
    assert step["verb"] == "prune"
    assert step["recipe"] == {"sparsity": 0.5}
    assert step["parent"] == {"sha256": "c" * 64, "format": "pt2"}
    assert step["metrics"] == {"sparsity": 0.5}
    assert "io" not in step  # no hints given, none inherited
    assert step["tools"]["edgecli"] == edgecli.__version__
    assert step["tools"]["torch"] == metadata.version("torch")
    assert step["tools"]["onnx"] == metadata.version("onnx")


def test_extend_keeps_parent_steps_and_inherits_io_hints(lineage: dict[str, Any]) -> None:
    assert [s["verb"] for s in lineage["steps"]] == ["convert", "quantize"]
    assert lineage["steps"][0]["io"] == {"input_layout": "NHWC"}
    assert lineage["steps"][1]["io"] == {"input_layout": "NHWC"}  # inherited by the later step
    assert lineage["steps"][1]["parent"] == {"sha256": "b" * 64, "format": "tflite"}
    assert lin.io_hints(lineage) == {"input_layout": "NHWC"}


def test_extend_new_io_hints_override_inherited_ones(lineage: dict[str, Any]) -> None:
    before = copy.deepcopy(lineage)
    third = lin.extend(
        lineage,
        verb="convert",
        recipe={},
        parent_sha256="d" * 64,
        parent_format="tflite",
        metrics={},
        io={"input_layout": "NCHW", "extra": 1},
    )
    assert len(third["steps"]) == 3
    assert third["steps"][2]["io"] == {"input_layout": "NCHW", "extra": 1}
    assert lineage == before  # the parent's lineage is not modified


def test_io_hints_of_nothing() -> None:
    assert lin.io_hints(None) == {}
    assert lin.io_hints({"edgecli": 1, "steps": []}) == {}
    assert lin.io_hints({"edgecli": 1, "steps": [{"verb": "prune"}]}) == {}


def test_dumps_is_canonical_and_loads_is_forgiving(lineage: dict[str, Any]) -> None:
    text = lin.dumps(lineage)
    assert lin.loads(text) == lineage
    assert lin.loads(text.encode()) == lineage
    reordered = json.loads(text, object_pairs_hook=lambda pairs: dict(reversed(pairs)))
    assert lin.dumps(reordered) == text  # key order does not change the bytes
    assert " " not in lin.dumps({"a": [1, 2], "b": {"c": 1}})
    assert lin.dumps({"p": Path("x.npz")}) == '{"p":"x.npz"}'  # paths in recipes are written as text
    assert lin.loads("not json") is None
    assert lin.loads(b"\xff\xfe") is None
    assert lin.loads("[1, 2]") is None


# --- ONNX ------------------------------------------------------------------------------------


def test_onnx_round_trip(tmp_path: Path, lineage: dict[str, Any]) -> None:
    proto = onnx_file.load(torch_models().onnx)
    assert onnx_file.read_lineage(proto) is None
    original_props = [(p.key, p.value) for p in proto.metadata_props]
    data = onnx_file.to_bytes(proto, lineage)
    assert [(p.key, p.value) for p in proto.metadata_props] == original_props  # caller's model untouched
    path = tmp_path / "with_lineage.onnx"
    path.write_bytes(data)
    assert onnx_file.read_lineage(onnx_file.load(path)) == lineage
    opened = ModelFile.open(path)
    assert opened.format is Format.ONNX and opened.lineage == lineage


def test_onnx_lineage_is_replaced_not_duplicated(lineage: dict[str, Any]) -> None:
    import onnx

    proto = onnx.ModelProto.FromString(onnx_file.to_bytes(onnx_file.load(torch_models().onnx), lineage))
    newer = lin.extend(lineage, verb="quantize", recipe={}, parent_sha256="e" * 64, parent_format="onnx", metrics={})
    again = onnx.ModelProto.FromString(onnx_file.to_bytes(proto, newer))
    assert [p.key for p in again.metadata_props].count(lin.LINEAGE_KEY) == 1
    assert onnx_file.read_lineage(again) == newer
    stripped = onnx.ModelProto.FromString(onnx_file.to_bytes(again, None))
    assert onnx_file.read_lineage(stripped) is None


def test_onnx_bytes_are_deterministic_and_self_contained(lineage: dict[str, Any]) -> None:
    first = onnx_file.to_bytes(onnx_file.load(torch_models().onnx), lineage)
    second = onnx_file.to_bytes(onnx_file.load(torch_models().onnx), sample_lineage())
    assert first == second
    import onnx

    proto = onnx.ModelProto.FromString(first)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_onnx_with_lineage_computes_the_same(tmp_path: Path, lineage: dict[str, Any]) -> None:
    import onnxruntime as ort

    path = tmp_path / "with_lineage.onnx"
    path.write_bytes(onnx_file.to_bytes(onnx_file.load(torch_models().onnx), lineage))
    x = images(4)
    plain = ort.InferenceSession(str(torch_models().onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    tagged = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_array_equal(plain[0], tagged[0])


# --- .pt2 ------------------------------------------------------------------------------------


def test_pt2_round_trip(tmp_path: Path, lineage: dict[str, Any]) -> None:
    assert pt2_file.read_lineage(torch_models().pt2) is None
    data = pt2_file.to_bytes(pt2_file.load(torch_models().pt2), lineage)
    path = tmp_path / "with_lineage.pt2"
    path.write_bytes(data)
    assert pt2_file.read_lineage(path) == lineage
    opened = ModelFile.open(path)
    assert opened.format is Format.PT2 and opened.lineage == lineage
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert f"archive/extra/{pt2_file.LINEAGE_FILE}" in names


def test_pt2_without_lineage_has_no_lineage_file() -> None:
    data = pt2_file.to_bytes(pt2_file.load(torch_models().pt2), None)
    assert not any(n.endswith(pt2_file.LINEAGE_FILE) for n in zipfile.ZipFile(io.BytesIO(data)).namelist())


def test_pt2_bytes_are_deterministic(lineage: dict[str, Any]) -> None:
    program = pt2_file.load(torch_models().pt2)
    first = pt2_file.to_bytes(program, lineage)
    assert pt2_file.to_bytes(program, lineage) == first
    assert pt2_file.to_bytes(pt2_file.load(torch_models().pt2), sample_lineage()) == first  # reloaded program


def test_pt2_with_lineage_computes_the_same(tmp_path: Path, lineage: dict[str, Any]) -> None:
    import torch

    path = tmp_path / "with_lineage.pt2"
    path.write_bytes(pt2_file.to_bytes(pt2_file.load(torch_models().pt2), lineage))
    x = images(5, seed=3)
    with torch.no_grad():
        out = pt2_file.load(path).module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, torch_models().reference(x), rtol=0, atol=1e-6)


def test_pt2_read_lineage_of_a_broken_file_is_none(tmp_path: Path) -> None:
    (tmp_path / "broken.pt2").write_bytes(b"PK\x03\x04 not really")
    assert pt2_file.read_lineage(tmp_path / "broken.pt2") is None


# --- TFLite ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["float", "int8"])
def test_tflite_round_trip_and_identical_outputs(tmp_path: Path, lineage: dict[str, Any], which: str) -> None:
    source = tflite_cnn() if which == "float" else keras_models().int8_tflite
    data = source.read_bytes()
    assert tflite_file.read_lineage(source) is None
    tagged = tflite_file.to_bytes(data, lineage)
    path = tmp_path / "with_lineage.tflite"
    path.write_bytes(tagged)
    assert tflite_file.read_lineage(path) == lineage
    opened = ModelFile.open(path)
    assert opened.format is Format.TFLITE and opened.lineage == lineage
    # The converter's own metadata entries survive; ours is added once.
    assert tflite_metadata_names(tagged) == [*tflite_metadata_names(data), lin.LINEAGE_KEY]
    if which == "float":
        x = images(6, seed=5, layout="NHWC")
    else:
        x = np.random.default_rng(5).integers(-128, 128, (6, 8, 8, 1), dtype=np.int8)
    np.testing.assert_array_equal(run_tflite(path, x), run_tflite(source, x))


def test_tflite_bytes_are_deterministic(lineage: dict[str, Any]) -> None:
    data = tflite_cnn().read_bytes()
    assert tflite_file.to_bytes(data, lineage) == tflite_file.to_bytes(data, sample_lineage())


def test_tflite_lineage_is_replaced_not_duplicated(tmp_path: Path, lineage: dict[str, Any]) -> None:
    once = tflite_file.to_bytes(tflite_cnn().read_bytes(), lineage)
    newer = lin.extend(lineage, verb="bench", recipe={}, parent_sha256="f" * 64, parent_format="tflite", metrics={})
    twice = tflite_file.to_bytes(once, newer)
    assert tflite_metadata_names(twice).count(lin.LINEAGE_KEY) == 1
    path = tmp_path / "twice.tflite"
    path.write_bytes(twice)
    assert tflite_file.read_lineage(path) == newer
    x = images(2, layout="NHWC")
    np.testing.assert_array_equal(run_tflite(path, x), run_tflite(tflite_cnn(), x))


def test_tflite_without_lineage_is_unchanged() -> None:
    data = tflite_cnn().read_bytes()
    assert tflite_file.to_bytes(data, None) == data


def test_tflite_read_lineage_of_garbage_is_none(tmp_path: Path) -> None:
    for name, content in {"short": b"12", "tagged": b"\x00\x00\x00\x00TFL3", "noise": bytes(range(256))}.items():
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(content)
        assert tflite_file.read_lineage(path) is None


# --- portable recipes and carried state ---------------------------------------------------------


def test_portable_recipe_keeps_file_names_and_hashes_not_folders(tmp_path: Path) -> None:
    from edgecli.formats.files import sha256_of
    from edgecli.recipes import DistillRecipe

    data = tmp_path / "deep" / "train.npz"
    data.parent.mkdir()
    data.write_bytes(b"npz bytes")
    recipe = DistillRecipe.model_validate({"data": {"path": str(data)}, "student": {"path": "nowhere/init.pt2"}})
    portable, files = lin.portable_recipe(recipe)
    assert portable["data"]["path"] == "train.npz" and portable["student"]["path"] == "init.pt2"
    assert files == {
        "data.path": {"name": "train.npz", "sha256": sha256_of(data)},
        "student.path": {"name": "init.pt2", "sha256": "missing"},
    }
    moved = tmp_path / "elsewhere" / "train.npz"
    moved.parent.mkdir()
    moved.write_bytes(b"npz bytes")
    again = DistillRecipe.model_validate({"data": {"path": str(moved)}, "student": {"path": "nowhere/init.pt2"}})
    assert lin.portable_recipe(again) == (portable, files)  # same content from another folder: same record


@pytest.mark.parametrize(
    ("before", "after", "lost"),
    [
        ({"weight_sparsity": 0.5, "weight_dtype": "float32"}, {"weight_sparsity": 0.49, "weight_dtype": "int8"}, []),
        (
            {"weight_sparsity": 0.5, "weight_dtype": "float32"},
            {"weight_sparsity": 0.2, "weight_dtype": "float32"},
            ["weight sparsity 50% -> 20%"],
        ),
        ({"weight_sparsity": 0.05, "weight_dtype": "float32"}, {"weight_sparsity": 0.0, "weight_dtype": "float32"}, []),
        (
            {"weight_sparsity": 0.0, "weight_dtype": "int8"},
            {"weight_sparsity": 0.0, "weight_dtype": "float32"},
            ["weights int8 -> float32"],
        ),
        ({"weight_sparsity": 0.0, "weight_dtype": "float16"}, {"weight_sparsity": 0.0, "weight_dtype": "int8"}, []),
        (None, {"weight_sparsity": 0.0, "weight_dtype": "float32"}, []),
    ],
)
def test_lost_state(before, after, lost) -> None:
    assert lin.lost_state(before, after) == lost


def test_last_state_drops_the_lost_list() -> None:
    lineage = {"steps": [{"state": {"weight_sparsity": 0.1, "weight_dtype": "int8", "lost": ["x"]}}]}
    assert lin.last_state(lineage) == {"weight_sparsity": 0.1, "weight_dtype": "int8"}
    assert lin.last_state(None) is None and lin.last_state({"steps": [{}]}) is None
