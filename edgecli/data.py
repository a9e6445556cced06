"""Datasets in .npz files: inputs under `x` (or the model's input names), labels under `y`."""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecli.errors import DataError, UsageError, one_line
from edgecli.recipes import DEFAULT_DYNAMIC_DIM, DEFAULT_INT_RANGE, DataSpec
from edgecli.resources import check_fits

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


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members; an empty archive
# A dataset is refused before loading when the arrays it reads plus their float32 copies, times this
# factor (headroom for batches, the model and its runtime), exceed the available memory.
MEMORY_FACTOR = 1.2
_CHUNK = 16 * 1024 * 1024


@dataclass
class _Member:
    """One array of an .npz archive, as its .npy header describes it (nothing loaded yet)."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # bytes of the .npy header before the data

    def rows(self, limit: int | None) -> int:
        return self.shape[0] if limit is None else min(limit, self.shape[0])

    def read_bytes(self, limit: int | None) -> int:
        """Bytes read for the first `limit` samples (all of a Fortran-ordered array)."""
        shape = self.shape if self.fortran or not self.shape else (self.rows(limit), *self.shape[1:])
        return math.prod(shape) * self.dtype.itemsize


def _numeric(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)


def _key(info: zipfile.ZipInfo) -> str:
    """The array's name: the member's without .npy (control characters escaped, for messages)."""
    return one_line(info.filename.removesuffix(".npy"))


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> _Member:
    key = _key(info)
    with archive.open(info) as stream:
        if stream.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise DataError(f"{source}: member '{one_line(info.filename)}' is not a numpy array")
        version = tuple(stream.read(2))
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DataError(f"{source}: '{key}' has an unknown .npy format version {version}")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
        offset = stream.tell()
    if dtype.hasobject:
        raise DataError(f"{source} is not a readable .npz file: '{key}' holds pickled objects, and a dataset never runs code")
    member = _Member(info, tuple(shape), dtype, fortran, offset)
    if member.read_bytes(None) > info.file_size - offset:
        raise DataError(f"{source}: '{key}' is truncated (its header promises more bytes than it holds)")
    return member


def _read(archive: zipfile.ZipFile, member: _Member, limit: int | None, source: str) -> np.ndarray:
    """The array, or only its first `limit` samples: read straight from the member stream (compressed
    or not), so a limited dataset never holds the rest in memory."""
    shape = member.shape[::-1] if member.fortran else (member.rows(limit), *member.shape[1:])
    out = np.empty(shape, member.dtype)
    view = out.reshape(-1).view(np.uint8)
    with archive.open(member.info) as stream:
        stream.read(member.offset)
        filled = 0
        while filled < view.size:
            chunk = stream.read(min(_CHUNK, view.size - filled))
            if not chunk:
                raise DataError(f"{source}: '{_key(member.info)}' is truncated")
            view[filled : filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
            filled += len(chunk)
    return out.T[: member.rows(limit)] if member.fortran else out


def _normalise(x: np.ndarray, spec: DataSpec, name: str, source: str) -> np.ndarray:
    scaled = spec.scale != 1.0 or spec.mean is not None or spec.std is not None
    if np.issubdtype(x.dtype, np.integer) and not scaled:
        return x  # token ids and other integer inputs stay integers
    x = x.astype(np.float32, copy=x.dtype != np.float32 or not x.flags.c_contiguous)  # in place from here
    if spec.scale != 1.0:
        x *= np.float32(spec.scale)
    for stat, op in ((spec.mean, np.subtract), (spec.std, np.divide)):
        if stat is None:
            continue
        if x.ndim < 2 or len(stat) not in (1, x.shape[1]):
            raise DataError(f"{source}: {len(stat)} mean/std values for '{name}' of shape {list(x.shape)} (axis 1)")
        op(x, np.asarray(stat, dtype=np.float32).reshape((1, -1) + (1,) * (x.ndim - 2)), out=x)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{source}: '{name}' contains NaN or Inf values")
    return x


def _check(members: dict[str, _Member], labels: _Member | None, source: str) -> None:
    """From the headers: inputs numeric arrays of one length (at least 1), labels one integer each."""
    for key, member in members.items():
        if not _numeric(member.dtype):
            raise DataError(f"{source}: '{key}' has dtype {member.dtype}; numeric arrays expected")
        if not member.shape:
            raise DataError(f"{source}: '{key}' is a single value, not an array of samples")
    lengths = {key: member.shape[0] for key, member in members.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{source}: inputs have different lengths {lengths}")
    count = next(iter(lengths.values()))
    if count == 0:
        raise DataError(f"{source} holds zero samples")
    if labels is not None and (len(labels.shape) != 1 or labels.shape[0] != count or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{source}: labels '{LABEL_KEY}' must be {count} integers, got {labels.dtype}{list(labels.shape)}")


def _needed_bytes(members: dict[str, _Member], labels: _Member | None, spec: DataSpec) -> int:
    """Bytes of the arrays read, plus the float32 copies normalisation makes (float32 is scaled in place)."""
    scaled = spec.scale != 1.0 or spec.mean is not None or spec.std is not None
    total = labels.read_bytes(spec.limit) if labels is not None else 0
    for member in members.values():
        total += member.read_bytes(spec.limit)
        converted = scaled or not np.issubdtype(member.dtype, np.integer)
        if converted and (member.dtype != np.float32 or member.fortran):
            total += member.read_bytes(spec.limit) // member.dtype.itemsize * 4
    return total


def _kind(path: Path, source: str) -> None:
    """Refuse what is not a zip archive from its first bytes, with a message saying what it is."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(NPY_MAGIC):
        raise DataError(f"{source} is a single .npy array, not an .npz archive", hint="np.savez(path, x=inputs, y=labels)")
    if not head.startswith(ZIP_MAGICS):
        what = "empty" if not head else "not a zip archive"
        raise DataError(f"{source} is not a readable .npz file ({what})", hint="np.savez(path, x=inputs, y=labels)")


def load_dataset(spec: DataSpec, override: Path | None = None, what: str = "data") -> Dataset:
    """Load the dataset named on the command line (override) or by the recipe (relative to the
    current folder); with `spec.limit`, only the first samples are read. The .npy headers are read
    first: a file that cannot fit in memory (see MEMORY_FACTOR) is refused before anything is loaded.
    Raises DataError/UsageError."""
    path = override if override is not None else spec.path
    if path is None:
        raise UsageError(f"no {what} given", hint="pass --data PATH.npz or set data.path in the recipe")
    path = Path(path)
    source = one_line(str(path))
    if not path.is_file():
        raise DataError(f"{source} does not exist" if not path.exists() else f"{source} is not a file")
    try:
        _kind(path, source)
        with zipfile.ZipFile(path) as archive:
            members = {_key(info): _header(archive, info, source) for info in archive.infolist()}
            if not members:
                raise DataError(f"{source} holds no arrays")
            labels = members.pop(LABEL_KEY, None)
            if not members:
                raise DataError(f"{source} has labels '{LABEL_KEY}' but no inputs", hint="put inputs under 'x'")
            _check(members, labels, source)
            check_fits(_needed_bytes(members, labels, spec), f"{what} {source}", MEMORY_FACTOR, DataError,
                       hint="set data.limit to use fewer samples")
            inputs = {key: _normalise(_read(archive, m, spec.limit, source), spec, key, source) for key, m in members.items()}
            y = None if labels is None else _read(archive, labels, spec.limit, source).astype(np.int64)
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"{source} is not a readable .npz file ({one_line(str(exc)[:160])})") from None
    return Dataset(inputs, y, source)


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
