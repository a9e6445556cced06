"""Run a TFLite / LiteRT flatbuffer with the ai-edge-litert interpreter."""

from __future__ import annotations

import os

import numpy as np

from edgecli.core import console
from edgecli.core.errors import BackendMissing, ModelReadError, damaged_hint, one_line
from edgecli.formats.files import utf8_path
from edgecli.formats.model_file import ModelFile
from edgecli.runtimes.base import Runner, TensorSpec

# A quantization step this large means a float sentinel was quantized: an attention mask's
# (1 - mask) * -3.4e38 gets scale 1.33e36 under full-integer TFLite, and LiteRT aborts the whole
# process (SIGABRT in QuantizeMultiplierSmallerThanOneExp, preparing SUB) instead of raising.
# Such models are refused before allocate_tensors; 1e20 is far above any real activation's step.
SENTINEL_SCALE = 1e20


def check_quantization_scales(interpreter, path: object) -> None:
    """Refuse a model with a quantization scale LiteRT cannot prepare (it would abort, not raise)."""
    for detail in interpreter.get_tensor_details():
        scales = np.asarray(detail.get("quantization_parameters", {}).get("scales", []), dtype=np.float64)
        if scales.size and not (np.all(np.isfinite(scales)) and scales.max() <= SENTINEL_SCALE):
            worst = float(np.nanmax(np.where(np.isfinite(scales), scales, np.inf)))
            raise ModelReadError(
                f"LiteRT cannot run {path}: tensor '{detail['name']}' is quantized with scale {worst:.3g} (a range of "
                f"about {worst * 255:.2g}), so a float sentinel such as an attention mask's -3.4e38 was quantized",
                hint="keep the mask's Add/Softmax in float, or use a dynamic or fp16 recipe",
            )


def _clean_name(name: str) -> str:
    """'serving_default_input:0' -> 'input' (the ONNX name onnx2tf copies in)."""
    name = name.split(":")[0]
    return name.removeprefix("serving_default_")


def _spec(detail: dict) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(None if d < 0 else int(d) for d in signature)
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(_clean_name(detail["name"]), shape, np.dtype(detail["dtype"]), float(scale), int(zero_point))


class TfliteRunner(Runner):
    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        super().__init__(model, threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise BackendMissing("running TFLite needs ai-edge-litert", hint="pip install 'edgecli[tflite]'") from None
        try:
            with console.muted():  # LiteRT prints an INFO line about its XNNPACK delegate
                source = (
                    {"model_path": str(model.path)}
                    if utf8_path(model.path)
                    else {"model_content": model.path.read_bytes()}
                )
                self.interpreter = Interpreter(**source, num_threads=threads or os.cpu_count() or 1)
                check_quantization_scales(self.interpreter, model.path)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = one_line(str(exc).strip().splitlines()[0][:240]) if str(exc).strip() else type(exc).__name__
            raise ModelReadError(f"LiteRT cannot load {model.path}: {first}", hint=damaged_hint(first)) from None
        self._input_details = self.interpreter.get_input_details()
        self._output_details = self.interpreter.get_output_details()
        self.inputs = [_spec(d) for d in self._input_details]
        self.outputs = [_spec(d) for d in self._output_details]

    def _resize(self, feeds: dict[str, np.ndarray]) -> None:
        """Resize the inputs to the feeds' shapes (batch size) when they differ."""
        changed = False
        for detail, spec in zip(self._input_details, self.inputs):
            shape = feeds[spec.name].shape
            if tuple(detail["shape"]) != shape:
                self.interpreter.resize_tensor_input(detail["index"], list(shape), strict=True)
                changed = True
        if changed:
            self.interpreter.allocate_tensors()
            self._input_details = self.interpreter.get_input_details()
            self._output_details = self.interpreter.get_output_details()

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._resize(feeds)
        for detail, spec in zip(self._input_details, self.inputs):
            self.interpreter.set_tensor(detail["index"], feeds[spec.name])
        self.interpreter.invoke()
        results = []
        for detail, spec in zip(self._output_details, self.outputs):
            results.append(spec.to_float(self.interpreter.get_tensor(detail["index"]).copy()))
        return results

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        if batch == 1 or self.dynamic_batch:
            return self._invoke(feeds)
        return self.one_by_one(feeds, self._invoke)
