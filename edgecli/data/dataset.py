"""Datasets in .npz files: inputs under `x` (or the model's input names), labels under `y`."""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from edgecli.core.errors import DataError, UsageError, one_line
from edgecli.core.resources import check_fits
from edgecli.data.augment import ViewRows
from edgecli.data.rows import RowArray, Spill, sub_rows
from edgecli.recipes import DEFAULT_DYNAMIC_DIM, DEFAULT_INT_RANGE, DataSpec

LABEL_KEY = "y"
SINGLE_INPUT_KEY = "x"


@dataclass
class Dataset:
    """Named input arrays of equal length, and optional integer labels."""

    # RowArray: on disk, read by slicing or indexing; ViewRows: float32 (augmented) samples read when indexed
    inputs: dict[str, np.ndarray | RowArray | ViewRows]
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
        return Dataset({k: sub_rows(v, 0, count) for k, v in self.inputs.items()}, labels, self.source)

    def skip(self, count: int) -> Dataset:
        """The samples after the first `count`."""
        labels = None if self.labels is None else self.labels[count:]
        return Dataset(
            {k: sub_rows(v, count, len(v)) for k, v in self.inputs.items()}, labels, f"{self.source}[{count}:]"
        )

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples [start, stop) of every input, in memory."""
        return {k: v[start:stop] for k, v in self.inputs.items()}

    def without_labels(self) -> Dataset:
        """The same inputs, no labels (labels a model cannot be scored on)."""
        return Dataset(self.inputs, None, self.source)

    def check_labels(self, classes: int) -> None:
        """Refuse labels outside 0..classes-1 (DataError), naming the first bad value and its row."""
        if self.labels is None or not len(self.labels):
            return
        bad = (self.labels < 0) | (self.labels >= classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"labels '{LABEL_KEY}' of {self.source} hold values outside 0..{classes - 1} "
                f"(e.g. {int(self.labels[row])} at row {row}): the model has {classes} classes"
            )


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members; an empty archive
# A dataset is refused before loading when the arrays it reads plus their float32 copies, times this
# factor (headroom for batches, the model and its runtime), exceed the available memory.
MEMORY_FACTOR = 1.2
_CHUNK = 4 * 1024 * 1024  # bytes read from an archive member at a time


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
        raise DataError(
            f"{source} is not a readable .npz file: '{key}' holds pickled objects, and a dataset never runs code"
        )
    member = _Member(info, tuple(shape), dtype, fortran, offset)
    if member.read_bytes(None) > info.file_size - offset:
        raise DataError(f"{source}: '{key}' is truncated (its header promises more bytes than it holds)")
    return member


def _read(archive: zipfile.ZipFile, member: _Member, limit: int | None, source: str) -> np.ndarray:
    """The whole array (or its first `limit` samples) in memory, read from the member stream. Used for
    labels and Fortran-ordered arrays, whose first rows are not stored together."""
    shape = member.shape[::-1] if member.fortran else (member.rows(limit), *member.shape[1:])
    out = np.empty(shape, member.dtype)
    with archive.open(member.info) as stream:
        stream.read(member.offset)
        _fill(stream, out, member, source)
    return out.T[: member.rows(limit)] if member.fortran else out


def _fill(stream: IO[bytes], out: np.ndarray, member: _Member, source: str) -> None:
    """Fill `out` with the next bytes of a member stream, _CHUNK at a time."""
    view = out.reshape(-1).view(np.uint8)
    filled = 0
    while filled < view.size:
        chunk = stream.read(min(_CHUNK, view.size - filled))
        if not chunk:
            raise DataError(f"{source}: '{_key(member.info)}' is truncated")
        view[filled : filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
        filled += len(chunk)


def _row_blocks(archive: zipfile.ZipFile, member: _Member, limit: int | None, source: str) -> Iterator[np.ndarray]:
    """The first `limit` samples of a C-ordered member in blocks of rows (about _CHUNK bytes each),
    decompressed as they are read."""
    rows, per_block = member.rows(limit), _block_rows(member)
    with archive.open(member.info) as stream:
        stream.read(member.offset)
        for start in range(0, rows, per_block):
            count = min(per_block, rows - start)
            block = np.empty((count, *member.shape[1:]), member.dtype)
            _fill(stream, block, member, source)
            yield block


def _block_rows(member: _Member) -> int:
    """Rows per block when streaming a member: about _CHUNK bytes as read or as float32, the larger."""
    row_values = math.prod(member.shape[1:])
    return max(1, _CHUNK // max(1, row_values * max(member.dtype.itemsize, 4)))


def _is_scaled(spec: DataSpec) -> bool:
    return spec.scale != 1.0 or spec.mean is not None or spec.std is not None


def _kept_as_stored(member: _Member, spec: DataSpec) -> bool:
    """Whether normalisation leaves the values and dtype as stored (float32 or integers, unscaled)."""
    return not _is_scaled(spec) and (member.dtype == np.float32 or np.issubdtype(member.dtype, np.integer))


def _data_offset(handle: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the archive: after its local header (whose extra field
    may differ from the central directory's)."""
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"'{_key(info)}' has a damaged zip header")
    name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_length + extra_length


def _on_disk(
    archive: zipfile.ZipFile, handle: IO[bytes], member: _Member, spec: DataSpec, name: str, source: str
) -> RowArray:
    """The member's first `spec.limit` samples, normalised, as rows on disk: read in place from an
    uncompressed archive when normalisation changes nothing, else streamed block by block into a
    temporary spill file. Every value is checked finite on the way."""
    rows = member.rows(spec.limit)
    label = f"{source}:{name}"
    if member.info.compress_type == zipfile.ZIP_STORED and not member.fortran and _kept_as_stored(member, spec):
        start = _data_offset(handle, member.info) + member.offset
        stored = RowArray(handle, start, (rows, *member.shape[1:]), member.dtype, label)
        if member.dtype == np.float32:  # integers need no finiteness check: no pass over them
            for block in stored.chunks():
                _normalise(block, spec, name, source)  # unchanged, only checked
        return stored
    if member.fortran:
        whole = _read(archive, member, spec.limit, source)
        blocks: Iterator[np.ndarray] = iter([whole])
    else:
        blocks = _row_blocks(archive, member, spec.limit, source)
    dtype = member.dtype if _kept_as_stored(member, spec) else np.dtype(np.float32)
    spill = Spill((rows, *member.shape[1:]), dtype, label)
    for block in blocks:
        spill.write(_normalise(block, spec, name, source))
    return spill.rows()


def _normalise(x: np.ndarray, spec: DataSpec, name: str, source: str) -> np.ndarray:
    """Scale, centre and divide a block of samples as the spec says (integer inputs without scaling
    stay integers); refuse NaN and Inf."""
    if np.issubdtype(x.dtype, np.integer) and not _is_scaled(spec):
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
    if labels is not None and (
        len(labels.shape) != 1 or labels.shape[0] != count or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise DataError(
            f"{source}: labels '{LABEL_KEY}' must be {count} integers, got {labels.dtype}{list(labels.shape)}"
        )


def _sample_arrays(members: dict[str, _Member], source: str) -> dict[str, _Member]:
    """The arrays that hold samples: 'x' (if present) sets the number of samples, else the length most
    arrays share; arrays of another length, or single values beside them, are not inputs: ignored,
    with a warning (e.g. metadata saved next to the data). A tie between lengths is an error."""
    if SINGLE_INPUT_KEY in members:
        lead = members[SINGLE_INPUT_KEY]
        if not lead.shape:
            return members  # _check refuses it
        count = lead.shape[0]
    else:
        lengths = [m.shape[0] for m in members.values() if m.shape]
        tally = {n: lengths.count(n) for n in lengths}
        if not tally:
            return members
        most = max(tally.values())
        common = [n for n, seen in tally.items() if seen == most]
        if len(common) > 1:
            return members  # no way to tell which are the inputs: _check names the lengths
        count = common[0]
    kept = {k: m for k, m in members.items() if m.shape and m.shape[0] == count}
    ignored = [k for k in members if k not in kept]
    if ignored:
        from edgecli.core import console

        described = ", ".join(f"'{k}' {list(members[k].shape)}" for k in ignored)
        console.warn(
            f"{source}: ignoring {described}: not {count} samples like the inputs ({', '.join(repr(k) for k in kept)})"
        )
    return kept


def _needed_bytes(members: dict[str, _Member], labels: _Member | None, spec: DataSpec) -> int:
    """Bytes held in memory while loading: the labels, Fortran-ordered inputs (read whole, plus their
    float32 copies) and one block per input. The inputs themselves stay on disk."""
    total = labels.read_bytes(spec.limit) if labels is not None else 0
    for member in members.values():
        if member.fortran:
            total += member.read_bytes(spec.limit)
            if not _kept_as_stored(member, spec):
                total += member.read_bytes(spec.limit) // member.dtype.itemsize * 4
        else:  # one block as read, and its float32 copy
            block = min(member.rows(spec.limit), _block_rows(member)) * math.prod(member.shape[1:])
            total += block * (member.dtype.itemsize + (0 if _kept_as_stored(member, spec) else 4))
    return total


def _kind(path: Path, source: str) -> None:
    """Refuse what is not a zip archive from its first bytes, with a message saying what it is."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(NPY_MAGIC):
        raise DataError(
            f"{source} is a single .npy array, not an .npz archive", hint="np.savez(path, x=inputs, y=labels)"
        )
    if not head.startswith(ZIP_MAGICS):
        what = "empty" if not head else "not a zip archive"
        raise DataError(f"{source} is not a readable .npz file ({what})", hint="np.savez(path, x=inputs, y=labels)")


def load_dataset(spec: DataSpec, override: Path | None = None, what: str = "data") -> Dataset:
    """Open the dataset named on the command line (override) or by the recipe (relative to the
    current folder); with `spec.limit`, only the first samples are used. The .npy headers are read
    first. Inputs stay on disk (RowArray: read in place from an uncompressed archive, else streamed
    once into a temporary spill file, normalised and checked finite) and are read a batch at a time;
    labels are loaded. Arrays of another length than the inputs (metadata beside them) are ignored with
    a warning (see _sample_arrays). What loading holds in memory must fit (see MEMORY_FACTOR); a consumer that
    reads every sample at once is checked when it does. Raises DataError/UsageError."""
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
            members = _sample_arrays(members, source)
            _check(members, labels, source)
            check_fits(
                _needed_bytes(members, labels, spec),
                f"{what} {source}",
                MEMORY_FACTOR,
                DataError,
                hint="set data.limit to use fewer samples",
            )
            y = None if labels is None else _read(archive, labels, spec.limit, source).astype(np.int64)
            handle = path.open("rb")
            inputs: dict[str, np.ndarray | RowArray | ViewRows] = {
                key: _on_disk(archive, handle, m, spec, key, source) for key, m in members.items()
            }
    except (
        zipfile.BadZipFile,
        zlib.error,
        ValueError,
        OSError,
        EOFError,
        KeyError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
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


def synthetic_sample_shape(
    spec, shapes: dict[str, list[int]] | None = None, dims: dict[str, int] | None = None
) -> tuple[int, ...]:
    """The shape of one sample (no batch axis) of a synthesised input: `shapes[name]` if given (checked
    against the model's static dimensions), else the model's dimensions with dynamic ones from `dims`."""
    model_dims = tuple(spec.shape[1:])
    if shapes and spec.name in shapes:
        shape = tuple(shapes[spec.name])
        fits = len(shape) == len(model_dims) and all(
            want is None or want == got for got, want in zip(shape, model_dims)
        )
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
    inputs: dict[str, np.ndarray | RowArray | ViewRows] = {}
    for spec in specs:
        shape = (count, *synthetic_sample_shape(spec, shapes, dims))
        inputs[spec.name] = _synthetic_array(spec, shape, rng, int_range)
    return Dataset(inputs, None, "random inputs")
