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
    """Whether an array of `shape` (batch first) can feed `spec`. The first axis is the batch (a fixed
    batch of 1 is fed one sample at a time), unless the model fixes it to another size: silero's
    `state` is [2, batch, 128]."""
    if len(shape) != len(spec.shape):
        return False
    first = spec.shape[0] if spec.shape else None
    return (first in (None, 1) or first == shape[0]) and all(
        want is None or want == got for got, want in zip(shape[1:], spec.shape[1:])
    )


def _batch_moved(array: np.ndarray, spec: TensorSpec) -> np.ndarray | None:
    """A batch of one sample fed to an input whose batch axis is not the first ([2, None, 128]): the
    sample with its batch axis put where the input's only free axis is; None when there is none."""
    if array.ndim != len(spec.shape) or array.shape[0] != 1:
        return None
    free = [axis for axis, size in enumerate(spec.shape) if size is None and axis > 0]
    if len(free) != 1:
        return None
    moved = np.moveaxis(array, 0, free[0])
    fixed = all(want is None or want == got for got, want in zip(moved.shape, spec.shape))
    return moved if fixed else None


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
        if not spec.shape and array.shape == (1,):  # a scalar input (silero's `sr`): one row of data is the value
            return np.ascontiguousarray(array.reshape(()))
        options = [array]
        if array.ndim == 4:
            transposed = array.transpose(NCHW_TO_NHWC)
            options = [transposed, array] if self.input_layout == "NHWC" else [array, transposed]
        for candidate in options:
            if _fits(candidate.shape, spec):
                return np.ascontiguousarray(candidate)
        moved = _batch_moved(array, spec)
        if moved is not None:
            return np.ascontiguousarray(moved)
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
        axes = [self._batch_axis(i) for i in range(len(chunks[0]))]
        # batch first, as the data rows are: an output whose batch axis is another ([2, batch, 128]) too
        return [np.concatenate([np.moveaxis(chunk[i], axes[i], 0) for chunk in chunks]) for i in range(len(axes))]

    def _batch_axis(self, index: int) -> int:
        """The batch axis of output `index`: the first, unless the model fixes it to a size other than
        1 and leaves exactly one other axis free (silero's state [2, batch, 128])."""
        spec = self.outputs[index] if index < len(self.outputs) else None
        if spec is None or not spec.shape or spec.shape[0] in (None, 1):
            return 0
        free = [axis for axis, size in enumerate(spec.shape) if size is None and axis > 0]
        return free[0] if len(free) == 1 else 0
