"""Run a TFLite flatbuffer with TensorFlow Lite Micro's interpreter (the `tflite-micro` package): the
kernels a microcontroller runs, one sample at a time (TFLM models have a fixed batch of 1)."""

from __future__ import annotations

import numpy as np

from edgecli.backends.micro import io_tensors, measure_arena, open_interpreter
from edgecli.formats.model_file import ModelFile
from edgecli.runtimes.base import Runner, TensorSpec
from edgecli.runtimes.tflite_runner import _clean_name


def _spec(name: str, detail: dict) -> TensorSpec:
    quantization = detail.get("quantization_parameters") or {}
    scales = np.asarray(quantization.get("scales", []), dtype=np.float64).reshape(-1)
    zero_points = np.asarray(quantization.get("zero_points", []), dtype=np.int64).reshape(-1)
    scale = float(scales[0]) if scales.size == 1 else 0.0  # per-tensor only: inputs and outputs are
    zero_point = int(zero_points[0]) if scale and zero_points.size else 0
    shape = tuple(int(d) for d in detail["shape"])
    return TensorSpec(_clean_name(name), shape, np.dtype(detail["dtype"]), scale, zero_point)


class MicroRunner(Runner):
    """A Runner over TFLM. Integer inputs are quantized from float data with the input's scale and zero
    point, integer outputs dequantized, as TfliteRunner does; inputs are fed one sample at a time.

    arena_size: the tensor arena; None measures the smallest one the model runs with (backends/micro.py)."""

    def __init__(self, model: ModelFile, threads: int | None = None, arena_size: int | None = None) -> None:
        super().__init__(model, threads)
        data = model.path.read_bytes()
        self.arena_size = arena_size or measure_arena(data)
        self.interpreter = open_interpreter(data, self.arena_size, invoke=False)
        inputs, outputs = io_tensors(data)
        self.inputs = [_spec(name, self.interpreter.get_input_details(i)) for i, (name, _) in enumerate(inputs)]
        self.outputs = [_spec(name, self.interpreter.get_output_details(i)) for i, (name, _) in enumerate(outputs)]

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for index, spec in enumerate(self.inputs):
            self.interpreter.set_input(np.ascontiguousarray(feeds[spec.name]), index)
        self.interpreter.invoke()
        results = []
        for index, spec in enumerate(self.outputs):
            results.append(spec.to_float(np.array(self.interpreter.get_output(index), copy=True)))
        return results

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.one_by_one(feeds, self._invoke)
