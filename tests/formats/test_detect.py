"""Format detection from the bytes (never the file name), and clear errors for what is not a model."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgecli.core.errors import ModelReadError
from edgecli.formats import onnx_file, pt2_file
from edgecli.formats.detect import Format, detect_format
from edgecli.formats.model_file import ModelFile
from tests.unit_helpers import copy_as, keras_models, tflite_cnn, torch_models


@pytest.fixture(scope="module")
def real_models() -> dict[Format, Path]:
    torch_set = torch_models()
    keras_set = keras_models()
    return {
        Format.ONNX: torch_set.onnx,
        Format.PT2: torch_set.pt2,
        Format.TFLITE: tflite_cnn(),
        Format.KERAS: keras_set.keras,
        Format.SAVED_MODEL: keras_set.saved_model,
        Format.ORT: _ort_file(torch_set.onnx),
        Format.STATE_DICT: _state_dict_file(torch_set.module, torch_set.onnx),
    }


def _state_dict_file(module, onnx_path: Path) -> Path:
    import torch

    path = onnx_path.with_name("cnn_state_dict.pt")
    if not path.exists():
        torch.save(module.state_dict(), path)
    return path


def _ort_file(onnx_path: Path) -> Path:
    from edgecli.formats import ort_file

    path = onnx_path.with_name("model_ort_format.bin")
    if not path.exists():
        path.write_bytes(ort_file.from_onnx_bytes(onnx_path.read_bytes()))
    return path


def model_read_error(path: Path) -> ModelReadError:
    with pytest.raises(ModelReadError) as caught:
        detect_format(path)
    assert caught.value.exit_code == 3
    return caught.value


# --- real models ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(Format), ids=[f.value for f in Format])
def test_detects_each_real_format(real_models: dict[Format, Path], fmt: Format) -> None:
    assert detect_format(real_models[fmt]) is fmt


WRONG_NAMES = {
    Format.ONNX: "model.tflite",
    Format.PT2: "model.onnx",
    Format.TFLITE: "model.pt2",
    Format.KERAS: "model.zip",
    Format.SAVED_MODEL: "model.keras",
    Format.ORT: "model.onnx",
    Format.STATE_DICT: "model.pt2",
}


@pytest.mark.parametrize("fmt", list(Format), ids=[f.value for f in Format])
def test_extension_is_ignored(real_models: dict[Format, Path], tmp_path: Path, fmt: Format) -> None:
    misnamed = copy_as(real_models[fmt], tmp_path, WRONG_NAMES[fmt])
    assert detect_format(misnamed) is fmt
    no_suffix = copy_as(real_models[fmt], tmp_path, "model")
    assert detect_format(no_suffix) is fmt


def test_model_file_open_reports_format_size_and_hash(real_models: dict[Format, Path], tmp_path: Path) -> None:
    misnamed = copy_as(real_models[Format.ONNX], tmp_path, "weights.bin")
    model = ModelFile.open(misnamed)
    assert model.format is Format.ONNX
    assert model.size_bytes == misnamed.stat().st_size
    assert model.sha256 == ModelFile.open(real_models[Format.ONNX]).sha256
    assert model.lineage is None  # exported by torch, not written by edgecli
    folder = ModelFile.open(real_models[Format.SAVED_MODEL])
    assert folder.format is Format.SAVED_MODEL
    assert folder.size_bytes == sum(p.stat().st_size for p in folder.path.rglob("*") if p.is_file())


def test_suffixes() -> None:
    assert [f.suffix for f in Format] == [".onnx", ".pt2", ".tflite", ".keras", "", ".ort", ".pt"]


# --- things that are not models ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert model_read_error(tmp_path / "nope.onnx").message.endswith("nope.onnx does not exist")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    assert model_read_error(tmp_path / "model.onnx").message.endswith("model.onnx is empty")


def test_random_bytes(tmp_path: Path) -> None:
    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert data[0] not in (0x08, 0x12, 0x3A, 0x42)  # a protobuf-looking first byte is the case below
    (tmp_path / "model.onnx").write_bytes(data)
    assert "is not a model edgecli knows" in model_read_error(tmp_path / "model.onnx").message


def test_random_bytes_that_look_like_protobuf_fail_on_load(tmp_path: Path) -> None:
    # A first byte of 0x08 (ONNX's ir_version tag) passes the cheap sniff; the full parse must reject it.
    data = b"\x08" + np.random.default_rng(7).integers(0, 256, 4095, dtype=np.uint8).tobytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    assert detect_format(path) is Format.ONNX
    with pytest.raises(ModelReadError, match="not a valid ONNX model"):
        onnx_file.load(path)


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_text("this is not a model\n")
    assert "is not a model edgecli knows" in model_read_error(tmp_path / "model.onnx").message


def test_folder_without_saved_model(tmp_path: Path) -> None:
    (tmp_path / "variables").mkdir()
    assert "folder without saved_model.pb" in model_read_error(tmp_path).message


def test_torch_save_zip_is_a_state_dict_detected_without_loading(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module: detection does not unpickle it
    assert detect_format(path) is Format.STATE_DICT  # loading refuses it (tests/formats/test_state_dict.py)


def test_legacy_torch_save_is_a_state_dict(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    assert detect_format(path) is Format.STATE_DICT  # read with weights_only=True, as the zip format


def test_a_pickle_that_is_not_torch_save_is_unknown(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"w": [0.0, 1.0]}, protocol=2))
    assert "is not a model edgecli knows" in model_read_error(path).message


def test_a_legacy_keras_h5_model_is_read_as_keras_whatever_its_name(tmp_path: Path) -> None:
    """Keras 2's model.save(...h5) (the zoo's published fer emotion model): detected from its bytes,
    loaded by Keras 3 (safe_mode), its variables counted from the file without building the model."""
    from edgecli.analysis.model_stats import param_count
    from edgecli.data.dataset import Dataset
    from edgecli.runtimes import open_runner

    models = keras_models()
    for name in ("model.h5", "model.keras", "model.bin"):  # a misleading extension changes nothing
        h5 = copy_as(models.h5, tmp_path, name)
        assert detect_format(h5) is Format.KERAS
        model = ModelFile.open(h5)
        assert param_count(model) == models.model.count_params()
        runner = open_runner(model)
        x = models.calibration[:16]
        got = runner.predict(Dataset({runner.inputs[0].name: x}, None, "x"))[0]
        np.testing.assert_allclose(got, np.asarray(models.model(x)), rtol=1e-5, atol=1e-6)


def test_an_hdf5_file_without_a_model_config_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "only.weights.h5"
    keras_models().model.save_weights(weights)
    exc = model_read_error(copy_as(weights, tmp_path, "model.h5"))
    assert "HDF5 file without a Keras model config (weights only?)" in exc.message


def test_unknown_zip(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "zip archive of no known model format" in model_read_error(tmp_path / "model.zip").message


# --- truncated files --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [Format.PT2, Format.KERAS], ids=["pt2", "keras"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_zip_models(real_models: dict[Format, Path], tmp_path: Path, fmt: Format, fraction: float) -> None:
    data = real_models[fmt].read_bytes()
    path = tmp_path / "model"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert "looks like a zip archive but" in model_read_error(path).message
    assert "truncated?" in model_read_error(path).message


def test_truncated_pt2_load_is_model_read_error(real_models: dict[Format, Path], tmp_path: Path) -> None:
    data = real_models[Format.PT2].read_bytes()
    path = tmp_path / "model.pt2"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelReadError, match=r"is not a \.pt2 archive \(a zip file\)") as caught:
        pt2_file.load(path)
    assert caught.value.exit_code == 3


def test_pt2_with_a_missing_member_fails_on_load(real_models: dict[Format, Path], tmp_path: Path) -> None:
    # A well-formed zip that still has the .pt2 markers but lost its weights.
    source = zipfile.ZipFile(real_models[Format.PT2])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for item in source.infolist():
            if "/data/weights/weight_" not in item.filename:
                target.writestr(item, source.read(item.filename))
    path = tmp_path / "model.pt2"
    path.write_bytes(buffer.getvalue())
    assert detect_format(path) is Format.PT2
    with pytest.raises(ModelReadError, match=r"is a damaged \.pt2 archive \('data/weights/weight_0' .* is missing\)"):
        pt2_file.load(path)


def test_truncated_onnx_load_is_model_read_error(real_models: dict[Format, Path], tmp_path: Path) -> None:
    data = real_models[Format.ONNX].read_bytes()
    path = tmp_path / "model.onnx"
    cuts = sorted({*np.linspace(2, len(data) - 1, 40).astype(int).tolist(), len(data) - 1})
    for cut in cuts:
        path.write_bytes(data[:cut])
        assert detect_format(path) is Format.ONNX  # the header survives truncation
        with pytest.raises(ModelReadError) as caught:
            onnx_file.load(path)
        assert "corrupt or truncated" in caught.value.message or "not a valid ONNX model" in caught.value.message


def test_truncated_tflite_is_detected_then_refused(real_models: dict[Format, Path], tmp_path: Path) -> None:
    from edgecli.formats import tflite_file
    from edgecli.runtimes import open_runner

    data = real_models[Format.TFLITE].read_bytes()
    path = tmp_path / "model.tflite"
    for cut in (8, 24, 100, len(data) // 2, len(data) - 16):
        path.write_bytes(data[:cut])
        assert detect_format(path) is Format.TFLITE
        assert tflite_file.read_lineage(path) is None  # never a crash, whatever the cut
        with pytest.raises(ModelReadError, match="LiteRT cannot load"):
            open_runner(ModelFile.open(path))
