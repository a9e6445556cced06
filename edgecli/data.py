"""Datasets in .npz files: inputs under `x` (or the model's input names), labels under `y`."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecli.errors import DataError, UsageError
from edgecli.recipes import DEFAULT_DYNAMIC_DIM, DEFAULT_INT_RANGE, DataSpec

LABEL_KEY = "y"
SINGLE_INPUT_KEY = "x"


@dataclass
class Dataset:
    """Named input arrays of equal length, and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def name(self) -> str:
        """The source without its folder (e.g. 'eval.npz[512:]'): what artifact metrics record, so that
        the same data gives the same bytes from any folder."""
        return self.source.replace("\\", "/").rsplit("/", 1)[-1]

    def take(self, count: int) -> Dataset:
        """The first `count` samples."""
        labels = None if self.labels is None else self.labels[:count]
        return Dataset({k: v[:count] for k, v in self.inputs.items()}, labels, self.source)

    def skip(self, count: int) -> Dataset:
        """The samples after the first `count`."""
        labels = None if self.labels is None else self.labels[count:]
        return Dataset({k: v[count:] for k, v in self.inputs.items()}, labels, f"{self.source}[{count}:]")

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}


def _normalise(x: np.ndarray, spec: DataSpec, name: str, source: str) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{source}: '{name}' has dtype {x.dtype}; numeric arrays expected")
    scaled = spec.scale != 1.0 or spec.mean is not None or spec.std is not None
    if np.issubdtype(x.dtype, np.integer) and not scaled:
        return x  # token ids and other integer inputs stay integers
    x = x.astype(np.float32) * np.float32(spec.scale)
    for stat, op in ((spec.mean, np.subtract), (spec.std, np.divide)):
        if stat is None:
            continue
        if x.ndim < 2 or len(stat) not in (1, x.shape[1]):
            raise DataError(f"{source}: {len(stat)} mean/std values for '{name}' of shape {list(x.shape)} (axis 1)")
        values = np.asarray(stat, dtype=np.float32).reshape((1, -1) + (1,) * (x.ndim - 2))
        x = op(x, values)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{source}: '{name}' contains NaN or Inf values")
    return x


def load_dataset(spec: DataSpec, override: Path | None = None, what: str = "data") -> Dataset:
    """Load the dataset named on the command line (override) or by the recipe (relative to the
    current folder). Raises DataError/UsageError."""
    path = override if override is not None else spec.path
    if path is None:
        raise UsageError(f"no {what} given", hint="pass --data PATH.npz or set data.path in the recipe")
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DataError(f"{source} does not exist" if not path.exists() else f"{source} is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array: np.load returns an ndarray
            raise DataError(f"{source} is a single .npy array, not an .npz archive", hint="np.savez(path, x=inputs, y=labels)")
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{source} is not a readable .npz file ({str(exc)[:160]})") from None
    if not isinstance(arrays, dict) or not arrays:
        raise DataError(f"{source} holds no arrays")
    labels = arrays.pop(LABEL_KEY, None)
    if not arrays:
        raise DataError(f"{source} has labels '{LABEL_KEY}' but no inputs", hint="put inputs under 'x'")
    lengths = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise DataError(f"{source}: inputs have different lengths {lengths}")
    count = next(iter(lengths.values()))
    if count == 0:
        raise DataError(f"{source} holds zero samples")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != count or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source}: labels '{LABEL_KEY}' must be {count} integers, got {labels.dtype}{list(labels.shape)}")
        labels = labels.astype(np.int64)
    inputs = {k: _normalise(v, spec, k, source) for k, v in arrays.items()}
    dataset = Dataset(inputs, labels, source)
    return dataset.take(spec.limit) if spec.limit else dataset


def split_batches(total: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) pairs covering `total` samples."""
    return [(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]


def _dynamic_dim(axis: int, name: str | None, dims: dict[str, int]) -> int:
    """The value of a dynamic dimension: by its name, else by its axis index, else the default."""
    if name is not None and name in dims:
        return dims[name]
    return dims.get(str(axis), DEFAULT_DYNAMIC_DIM)


def synthetic_sample_shape(spec, shapes: dict[str, list[int]] | None = None, dims: dict[str, int] | None = None) -> tuple[int, ...]:
    """The shape of one sample (no batch axis) of a synthesised input: `shapes[name]` if given (checked
    against the model's static dimensions), else the model's dimensions with dynamic ones from `dims`."""
    model_dims = tuple(spec.shape[1:])
    if shapes and spec.name in shapes:
        shape = tuple(shapes[spec.name])
        fits = len(shape) == len(model_dims) and all(want is None or want == got for got, want in zip(shape, model_dims))
        if not fits:
            wanted = [("?" if d is None else d) for d in model_dims]
            raise UsageError(
                f"input_shapes.{spec.name} = {list(shape)} does not fit the model input {spec.describe()}",
                hint=f"give the shape of one sample without the batch axis: {wanted}",
            )
        return shape
    names = tuple(spec.dim_names[1:]) if len(spec.dim_names) == len(spec.shape) else (None,) * len(model_dims)
    return tuple(
        dim if dim is not None else _dynamic_dim(axis, name, dims or {})
        for axis, (dim, name) in enumerate(zip(model_dims, names), start=1)
    )


def synthetic_fill(name: str) -> str:
    """How an input is filled, from its name: 'ones' (attention masks), 'zeros' (token type / segment
    ids, whose embeddings often have 2 rows) or 'random'."""
    lowered = name.lower()
    if "mask" in lowered:
        return "ones"
    if "type_ids" in lowered or "segment" in lowered:
        return "zeros"
    return "random"


def _synthetic_array(spec, shape: tuple[int, ...], rng: np.random.Generator, int_range: tuple[int, int]) -> np.ndarray:
    fill = synthetic_fill(spec.name)
    if fill == "ones":
        return np.ones(shape, dtype=spec.dtype)
    if fill == "zeros":
        return np.zeros(shape, dtype=spec.dtype)
    if np.issubdtype(spec.dtype, np.floating):
        return rng.random(shape, dtype=np.float32).astype(spec.dtype)
    if spec.dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    info = np.iinfo(spec.dtype)
    low, high = max(int_range[0], int(info.min)), min(int_range[1], int(info.max) + 1)
    return rng.integers(low, max(high, low + 1), size=shape).astype(spec.dtype)


def synthetic_dataset(
    specs: list,
    count: int,
    seed: int = 0,
    *,
    shapes: dict[str, list[int]] | None = None,
    dims: dict[str, int] | None = None,
    int_range: tuple[int, int] = DEFAULT_INT_RANGE,
) -> Dataset:
    """Random inputs shaped by the model's signature (names, shapes, dtypes), for models without data.

    `count` samples per input; the shape of one sample from `synthetic_sample_shape` (dynamic
    dimensions from `dims`, else DEFAULT_DYNAMIC_DIM). Floats are uniform in [0, 1); integers uniform
    in [int_range[0], int_range[1]) in the input's own dtype; inputs named like '*mask*' are ones and
    '*type_ids*' / '*segment*' zeros (see synthetic_fill)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = (count, *synthetic_sample_shape(spec, shapes, dims))
        inputs[spec.name] = _synthetic_array(spec, shape, rng, int_range)
    return Dataset(inputs, None, "random inputs")
