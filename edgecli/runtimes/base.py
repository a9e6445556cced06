"""One interface to run a batch through any model: torch (.pt2), onnxruntime, LiteRT, Keras."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from edgecli.core import console
from edgecli.core.errors import DataError
from edgecli.data.dataset import Dataset, split_batches
from edgecli.formats import lineage as lin
from edgecli.formats.model_file import ModelFile

NCHW_TO_NHWC = (0, 2, 3, 1)


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a model; None marks a dynamic dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    scale: float = 0.0  # quantization scale of an integer tensor (0 = not quantized)
    zero_point: int = 0
    dim_names: tuple[str | None, ...] = ()  # names of symbolic dimensions where the format keeps them (ONNX dim_param)

    def to_float(self, value: np.ndarray) -> np.ndarray:
        """An integer output of a quantized tensor as float32 (scale, zero point); anything else as is."""
        if self.scale and np.issubdtype(value.dtype, np.integer):
            return ((value.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)
        return value

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def _fits(shape: tuple[int, ...], spec: TensorSpec) -> bool:
    return len(shape) == len(spec.shape) and all(
        want is None or want == got for got, want in zip(shape[1:], spec.shape[1:])
    )


class Runner(ABC):
    """Runs batches through one model. Subclasses fill `inputs`/`outputs` and implement `run_feeds`."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        self.model = model
        self.threads = threads
        self.input_layout = lin.io_hints(model.lineage).get("input_layout")  # e.g. "NHWC" after onnx2tf

    @abstractmethod
    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run prepared feeds (see `feeds`); returns every output as a float or int numpy array."""

    @staticmethod
    def one_by_one(feeds: dict[str, np.ndarray], invoke) -> list[np.ndarray]:
        """`invoke` on each sample of a batch in turn (models with a batch of 1), outputs concatenated."""
        batch = next(iter(feeds.values())).shape[0]
        parts = [invoke({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(batch)]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    @property
    def dynamic_batch(self) -> bool:
        return all(spec.shape and spec.shape[0] is None for spec in self.inputs)

    def feeds(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map a dataset batch onto the model's inputs: names, layout (NCHW/NHWC) and dtype."""
        if len(self.inputs) == 1 and len(batch) == 1:
            pairs = [(self.inputs[0], next(iter(batch.values())), next(iter(batch)))]
        else:
            missing = [s.name for s in self.inputs if s.name not in batch]
            if missing:
                raise DataError(
                    f"the data has no array for input(s) {', '.join(missing)}; it holds {', '.join(batch)}",
                    hint="store one array per model input, under the input's name",
                )
            pairs = [(s, batch[s.name], s.name) for s in self.inputs]
        return {spec.name: self._cast(self._layout(array, spec, key), spec, key) for spec, array, key in pairs}

    def _layout(self, array: np.ndarray, spec: TensorSpec, key: str) -> np.ndarray:
        options = [array]
        if array.ndim == 4:
            transposed = array.transpose(NCHW_TO_NHWC)
            options = [transposed, array] if self.input_layout == "NHWC" else [array, transposed]
        for candidate in options:
            if _fits(candidate.shape, spec):
                return np.ascontiguousarray(candidate)
        raise DataError(
            f"data '{key}' has shape {list(array.shape)} but the model input is {spec.describe()}",
            hint="check the dataset matches this model",
        )

    def _cast(self, array: np.ndarray, spec: TensorSpec, key: str) -> np.ndarray:
        if array.dtype == spec.dtype:
            return array
        if np.issubdtype(spec.dtype, np.floating):
            return array.astype(spec.dtype)
        if spec.scale and np.issubdtype(array.dtype, np.floating):
            info = np.iinfo(spec.dtype)
            quantized = np.round(array / spec.scale + spec.zero_point)
            return np.clip(quantized, info.min, info.max).astype(spec.dtype)
        if np.issubdtype(spec.dtype, np.integer) and np.issubdtype(array.dtype, np.integer):
            return array.astype(spec.dtype)
        raise DataError(f"data '{key}' is {array.dtype} but the model input {spec.name} is {spec.dtype}")

    def predict(self, dataset: Dataset, batch_size: int = 64, description: str | None = None) -> list[np.ndarray]:
        """All outputs over the whole dataset, batch by batch (per sample if the batch is fixed)."""
        size = batch_size if self.dynamic_batch else 1
        chunks: list[list[np.ndarray]] = []
        spans = split_batches(len(dataset), size)
        if description:
            with console.progress(description, total=len(spans)) as bar:
                for start, stop in spans:
                    chunks.append(self.run_feeds(self.feeds(dataset.batch(start, stop))))
                    bar.advance()
        else:
            chunks = [self.run_feeds(self.feeds(dataset.batch(start, stop))) for start, stop in spans]
        return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]
