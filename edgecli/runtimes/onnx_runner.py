"""Run an ONNX model with onnxruntime on the CPU."""

from __future__ import annotations

import numpy as np

from edgecli.errors import ModelReadError, damaged_hint
from edgecli.formats.detect import Format
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


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    if arg.type not in ORT_TYPES:
        raise ModelReadError(f"ONNX input/output {arg.name} has unsupported type {arg.type}")
    names = tuple(d if isinstance(d, str) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(ORT_TYPES[arg.type]), dim_names=names)


class OnnxRunner(Runner):
    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        super().__init__(model, threads)
        import onnxruntime as ort

        options = session_options(threads)
        if model.format is Format.ORT:
            from edgecli.formats.ort_file import load_options

            load_options(options)
        try:
            self.session = ort.InferenceSession(str(model.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            first = str(exc).strip().splitlines()[0][:240]
            raise ModelReadError(f"onnxruntime cannot load {model.path}: {first}", hint=damaged_hint(first)) from None
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)
