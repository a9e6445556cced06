"""Run an ONNX model with onnxruntime on the CPU."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from edgecli.core.errors import DataError, ModelReadError, damaged_hint, one_line
from edgecli.formats.detect import Format
from edgecli.formats.files import utf8_path
from edgecli.formats.model_file import ModelFile
from edgecli.runtimes.base import Runner, TensorSpec

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def session_options(threads: int | None):  # -> onnxruntime.SessionOptions
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime picks one per core
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def unoptimized_session(source: str | os.PathLike[str] | bytes) -> Any:
    """A CPU onnxruntime session of a model (a path or its bytes) with graph optimisations off: every
    tensor of the graph still exists (none fused away) and onnxruntime places the nodes as written.
    onnxruntime's own exceptions (Fail, InvalidGraph, NotImplemented) reach the caller."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    model = source if isinstance(source, bytes) else os.fspath(source)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    if arg.type not in ORT_TYPES:
        raise ModelReadError(f"ONNX input/output {arg.name} has unsupported type {arg.type}")
    names = tuple(d if isinstance(d, str) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(ORT_TYPES[arg.type]), dim_names=names)


# onnxruntime's messages: "[ONNXRuntimeError] : 1 : FAIL : Load model from PATH failed:" then, often,
# the C++ source line and function signature before the actual reason
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:)?\s*")
_ORT_SOURCE = re.compile(r"^\S+\.(cc|h|cpp):\d+\s+")


def ort_reason(text: str) -> str:
    """The reason in an onnxruntime error message, without its code, path and C++ location."""
    text = " ".join(text.split())
    text = _ORT_PREFIX.sub("", text)
    found = _ORT_SOURCE.match(text)
    signature = re.match(r"^[^()]*::[^()]*\(", text[found.end() :]) if found else None
    if found and signature:  # "model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, ...) reason"
        text = text[found.end() :]
        depth, index = 0, signature.end() - 1
        for index in range(signature.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[index], 0)
            if depth == 0:
                break
        text = text[index + 1 :].strip() or text
    text = re.sub(r"\S+\.(cc|h|cpp):\d+\s+[A-Za-z_]\w*\s+", "", text)  # "tensorprotoutils.cc:592 ValidateX reason"
    return one_line(text)[:300]


def load_error(model: ModelFile, text: str) -> ModelReadError:
    """The one-line refusal for a model onnxruntime cannot load."""
    if "external data" in text.lower():
        if not utf8_path(model.path):
            return ModelReadError(
                f"{model.path} keeps weights in external data files, which onnxruntime cannot find for a file "
                "name that is not UTF-8",
                hint="rename the model with a UTF-8 name",
            )
        if model.format is Format.ONNX:
            import onnx

            from edgecli.formats import onnx_file

            proto = onnx.load(str(model.path), load_external_data=False)  # parsed by onnxruntime already
            onnx_file.check_external_data(model.path, proto)  # refuses in edgecli's own words
    reason = ort_reason(text)
    return ModelReadError(f"onnxruntime cannot load {model.path}: {reason}", hint=damaged_hint(reason))


class OnnxRunner(Runner):
    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        super().__init__(model, threads)
        import onnxruntime as ort

        options = session_options(threads)
        if model.format is Format.ORT:
            from edgecli.formats.ort_file import load_options

            load_options(options)
        # onnxruntime takes a path only as UTF-8 (TypeError on other bytes in a name): such a model is
        # handed over as bytes (its external data, if any, cannot be found then: said below)
        source = str(model.path) if utf8_path(model.path) else model.path.read_bytes()
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            raise load_error(model, str(exc)) from None
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            return self.session.run(None, feeds)
        except InvalidArgument as exc:  # shapes or values the signature let through but the graph refuses
            shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in feeds.items())
            raise DataError(
                f"onnxruntime refused the data ({shapes}): {one_line(str(exc))[:200]}",
                hint="check the dataset matches this model's inputs (edgecli inspect shows them)",
            ) from None
