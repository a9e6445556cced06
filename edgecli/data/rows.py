"""Arrays of samples kept on disk and read a batch at a time, so that calibration, distillation and
evaluation hold one batch of data in memory whatever the size of the dataset.

A `RowArray` is a C-ordered array stored in a file at a byte offset (an uncompressed .npz member
read in place, or a temporary spill file that a compressed or normalised member is streamed into).
Indexing it with an integer, a slice or an array of indices reads only those rows, with
`os.preadv` into a fresh buffer: nothing is memory-mapped, so the process's resident memory grows
by the rows asked for and not by the file. A read too large for the available memory is refused
(DataError) before it is made.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from edgecli.core.errors import DataError
from edgecli.core.resources import check_fits

if TYPE_CHECKING:
    from edgecli.data.augment import ViewRows

CHUNK_BYTES = 8 * 1024 * 1024  # rows per chunk for whole-array passes (digest, copy, checks)
CHECKED_READ_BYTES = 1024 * 1024  # reads above this size are checked against the available memory
READ_FACTOR = 1.2  # headroom for the copies a consumer makes of what it reads


class RowArray:
    """Rows [start, stop) of an array of `shape` and `dtype` stored C-ordered in `handle` at `offset`.

    Supports len(), .shape, .dtype, .ndim, .nbytes, indexing by int, slice or integer array (each
    returns a numpy array read from disk), np.asarray() (reads everything) and `rows(start, stop)`
    (another RowArray, nothing read). `source` names the data in messages."""

    def __init__(
        self,
        handle: IO[bytes],
        offset: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        source: str,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        self._handle, self._offset, self._full_shape = handle, offset, tuple(shape)
        self.dtype = np.dtype(dtype)
        self.source = source
        self._start = start
        self._stop = shape[0] if stop is None else stop
        self._row_bytes = math.prod(shape[1:]) * self.dtype.itemsize

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._stop - self._start, *self._full_shape[1:])

    @property
    def ndim(self) -> int:
        return len(self._full_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self._row_bytes

    def __len__(self) -> int:
        return self._stop - self._start

    @property
    def file(self) -> str | None:
        """The file the rows are read from in place (None: an unnamed temporary spill file)."""
        name = getattr(self._handle, "name", None)
        return name if isinstance(name, str) else None

    def __repr__(self) -> str:
        return f"RowArray({self.source}, {self.dtype}{list(self.shape)})"

    def rows(self, start: int, stop: int) -> RowArray:
        """Rows [start, stop) of this array, read later (bounds clipped like a slice)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        return RowArray(
            self._handle,
            self._offset,
            self._full_shape,
            self.dtype,
            self.source,
            self._start + start,
            self._start + max(start, stop),
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            first, rest = (key[0], key[1:]) if key else (slice(None), ())
            return self[first][(slice(None), *rest)] if not isinstance(first, (int, np.integer)) else self[first][rest]
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"index {int(key)} is out of bounds for {len(self)} rows")
            return self._read(index, index + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._read(start, max(start, stop))
            return self.take(np.arange(start, stop, step))
        return self.take(np.asarray(key))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The rows at `indices` (any order, repeats allowed; booleans select), read in runs of
        consecutive rows."""
        indices = np.asarray(indices)
        if indices.dtype == np.bool_:
            if indices.shape != (len(self),):
                raise IndexError(f"boolean index of shape {list(indices.shape)} for {len(self)} rows")
            indices = np.flatnonzero(indices)
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise IndexError(f"rows are indexed by integers, not {indices.dtype}")
        flat = indices.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + len(self), flat)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"index out of bounds for {len(self)} rows")
        self._check(flat.size)
        out = np.empty((flat.size, *self._full_shape[1:]), self.dtype)
        if not flat.size:
            return out.reshape((*indices.shape, *self._full_shape[1:]))
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]
        buffer = out.reshape(flat.size, -1).view(np.uint8)
        # runs of consecutive (sorted) rows become one read each
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for run in np.split(np.arange(flat.size), breaks):
            first, count = int(ordered[run[0]]), len(run)
            block = self._read(first, first + count, checked=False)
            buffer[order[run]] = block.reshape(count, -1).view(np.uint8)
        return out.reshape((*indices.shape, *self._full_shape[1:]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.astype(dtype if dtype is not None else self.dtype)

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        """Every row, read and converted (as ndarray.astype; checked against the available memory)."""
        return self._read(0, len(self)).astype(dtype, copy=False)

    def chunks(self) -> Iterator[np.ndarray]:
        """The whole array in consecutive blocks of rows (about CHUNK_BYTES each)."""
        step = max(1, CHUNK_BYTES // max(1, self._row_bytes))
        for start in range(0, len(self), step):
            yield self._read(start, min(start + step, len(self)), checked=False)

    def _check(self, count: int) -> None:
        nbytes = count * self._row_bytes
        if nbytes > CHECKED_READ_BYTES:
            check_fits(
                nbytes,
                f"reading {count} samples of {self.source} at once",
                READ_FACTOR,
                DataError,
                hint="set data.limit to use fewer samples",
            )

    def _read(self, start: int, stop: int, checked: bool = True) -> np.ndarray:
        count = stop - start
        if checked:
            self._check(count)
        out = np.empty((count, *self._full_shape[1:]), self.dtype)
        view = out.reshape(-1).view(np.uint8).data if out.size else memoryview(b"")  # .data: the array's memoryview
        position, filled = self._offset + (self._start + start) * self._row_bytes, 0
        fd = self._handle.fileno()
        while filled < len(view):
            got = os.preadv(fd, [view[filled:]], position + filled)
            if got <= 0:
                raise DataError(f"{self.source} ended before its data (was the file changed while being read?)")
            filled += got
        return out


def sub_rows(array: np.ndarray | RowArray | ViewRows, start: int, stop: int) -> np.ndarray | RowArray:
    """Rows [start, stop) of an in-memory or on-disk array, without reading them (a ViewRows' are read)."""
    return array.rows(start, stop) if isinstance(array, RowArray) else array[start:stop]


def array_chunks(array: np.ndarray | RowArray) -> Iterator[np.ndarray]:
    """The array in blocks of rows (a RowArray read block by block)."""
    if isinstance(array, RowArray):
        yield from array.chunks()
    else:
        yield array


def array_digest(array: np.ndarray | RowArray, dtype: Any = None) -> str:
    """sha256 of the array's dtype, shape and C-ordered bytes (as `dtype` when given), read block by
    block: the same for an array in memory and the same array on disk."""
    dtype = np.dtype(dtype) if dtype is not None else array.dtype
    digest = hashlib.sha256(f"{dtype}{tuple(array.shape)}".encode())
    for block in array_chunks(array):
        digest.update(np.ascontiguousarray(block, dtype=dtype).data)
    return digest.hexdigest()


class Spill:
    """A temporary file (unnamed: nothing is left behind, whatever ends the process) that an array
    is written into block by block, then read back as a RowArray."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, source: str) -> None:
        self.shape, self.dtype, self.source = tuple(shape), np.dtype(dtype), source
        nbytes = math.prod(self.shape) * self.dtype.itemsize
        folder = tempfile.gettempdir()
        free = shutil.disk_usage(folder).free
        if nbytes > free:
            raise DataError(
                f"{source} needs {nbytes / 2**20:.0f} MiB of temporary disk space to stream, "
                f"{free / 2**20:.0f} MiB free in {folder}",
                hint="point TMPDIR at a larger disk or set data.limit",
            )
        # kept open for the RowArray that rows() returns (it reads from it); closed when garbage-collected
        self._handle = tempfile.TemporaryFile(prefix="edgecli-data-")  # noqa: SIM115
        self._written = 0

    def write(self, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        self._handle.write(data.data if data.size else b"")
        self._written += len(data)

    def rows(self) -> RowArray:
        self._handle.flush()
        if self._written != self.shape[0]:
            raise DataError(f"{self.source}: {self._written} of {self.shape[0]} samples were written")
        return RowArray(self._handle, 0, self.shape, self.dtype, self.source)
