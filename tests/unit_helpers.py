"""Shared builders for the unit tests: real tiny models in every format edgecli reads.

conftest.py belongs to another part of the suite, so the shared models live here as plain,
cached functions. Each builder runs once per test session (functools.cache) and writes into
one private temporary folder that is removed when the interpreter exits. Tests that modify a
file copy it into their own tmp_path first.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SHAPE = (1, 8, 8)  # C, H, W: one channel, so onnx2tf never asks the internet for calibration data
NUM_CLASSES = 3


@functools.cache
def session_folder() -> Path:
    """A temporary folder for the whole test session, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="edgecli-unit-models-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def images(count: int, seed: int = 0, layout: str = "NCHW") -> np.ndarray:
    """Standard-normal float32 images shaped like the tiny CNN's input."""
    x = np.random.default_rng(seed).standard_normal((count, *IMAGE_SHAPE)).astype(np.float32)
    return x.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else x


def tiny_cnn() -> Any:
    """conv -> batchnorm -> relu -> maxpool -> flatten -> linear, seeded, in eval mode."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, NUM_CLASSES),
    )
    with torch.no_grad():  # non-trivial batchnorm statistics, so folding them is actually tested
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@dataclass(frozen=True)
class TorchModels:
    module: Any  # the eager torch module (reference outputs)
    pt2: Path
    onnx: Path

    def reference(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()


def _batch_dim() -> dict[int, Any]:
    import torch

    return {0: torch.export.Dim("batch")}


def export_pt2(module: Any, path: Path) -> Path:
    """torch.export with a dynamic batch (example batch of 2, as the exporter needs)."""
    import torch

    example = (torch.from_numpy(images(2)),)
    program = torch.export.export(module, example, dynamic_shapes=(_batch_dim(),))
    torch.export.save(program, str(path))
    return path


def export_onnx(module: Any, path: Path) -> Path:
    """torch.onnx dynamo export to one self-contained file with a dynamic batch."""
    import torch

    example = (torch.from_numpy(images(2)),)
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=True,
        external_data=False,
        dynamic_shapes=(_batch_dim(),),
        input_names=["input"],
        output_names=["logits"],
    )
    return path


@functools.cache
def torch_models() -> TorchModels:
    """The tiny CNN as eager module, .pt2 and .onnx (built once per session)."""
    folder = session_folder()
    module = tiny_cnn()
    return TorchModels(module, export_pt2(module, folder / "cnn.pt2"), export_onnx(module, folder / "cnn.onnx"))


@functools.cache
def tflite_cnn() -> Path:
    """The tiny CNN converted ONNX -> TFLite by edgecli's own onnx2tf path (inputs become NHWC)."""
    from edgecli.backends.tflite_convert import onnx_to_tflite

    path = session_folder() / "cnn.tflite"
    path.write_bytes(onnx_to_tflite(torch_models().onnx, "float32"))
    return path


def two_input_onnx(path: Path, batch: int | str = "N") -> Path:
    """out = relu(a @ W + b): two named inputs 'a' [N,4] and 'b' [N,3], built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0 - 0.5
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "W"], ["aw"]),
            helper.make_node("Add", ["aw", "b"], ["sum"]),
            helper.make_node("Relu", ["sum"], ["out"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [batch, 3]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def two_input_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0 - 0.5
    return np.maximum(a @ weight + b, 0.0)


@dataclass(frozen=True)
class KerasModels:
    model: Any  # the float keras model
    keras: Path  # .keras zip
    saved_model: Path  # SavedModel folder (model.export)
    h5: Path  # legacy HDF5
    int8_tflite: Path  # full-integer INT8 TFLite, int8 input and output
    calibration: np.ndarray  # the representative data, NHWC, uniform in [0, 1] like scaled pixels


def _quiet_tensorflow() -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


@functools.cache
def keras_models() -> KerasModels:
    """A tiny Keras CNN (NHWC) saved as .keras, SavedModel, .h5 and a full-integer INT8 .tflite."""
    tf = _quiet_tensorflow()
    import keras

    from edgecli.core import console

    folder = session_folder()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    calibration = np.random.default_rng(1).uniform(0, 1, (128, 8, 8, 1)).astype(np.float32)
    with console.muted():
        model.save(folder / "small.keras")
        model.export(str(folder / "small_saved_model"))
        model.save(folder / "small.h5")
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        (folder / "small_int8.tflite").write_bytes(converter.convert())
    return KerasModels(
        model,
        folder / "small.keras",
        folder / "small_saved_model",
        folder / "small.h5",
        folder / "small_int8.tflite",
        calibration,
    )


def copy_as(source: Path, folder: Path, name: str) -> Path:
    """Copy a model file or folder to folder/name (e.g. to give it a misleading extension)."""
    target = folder / name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return target


def sample_lineage() -> dict[str, Any]:
    """A two-step lineage as edgecli writes it."""
    from edgecli.formats import lineage

    first = lineage.extend(
        None,
        verb="convert",
        recipe={"target": "tflite", "parity": {"atol": 1e-4}},
        parent_sha256="a" * 64,
        parent_format="onnx",
        metrics={"parity_max_abs_diff": 2.4e-7},
        io={"input_layout": "NHWC"},
    )
    return lineage.extend(
        first,
        verb="quantize",
        recipe={"mode": "static"},
        parent_sha256="b" * 64,
        parent_format="tflite",
        metrics={"accuracy": 0.91},
    )
