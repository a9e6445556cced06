"""Datasets from .npz files: inputs and labels, normalisation, limits and every way a file can be bad."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgecli.core.errors import DataError, UsageError
from edgecli.data.dataset import Dataset, load_dataset, split_batches, synthetic_dataset
from edgecli.recipes import DataSpec
from edgecli.runtimes.base import TensorSpec


def npz(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def data_error(path: Path, spec: DataSpec | None = None) -> DataError:
    with pytest.raises(DataError) as caught:
        load_dataset(spec or DataSpec(), override=path)
    assert caught.value.exit_code == 3
    return caught.value


# --- reading ---------------------------------------------------------------------------------


def test_inputs_and_labels(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((10, 1, 4, 4)).astype(np.float32)
    y = np.arange(10, dtype=np.int32) % 3
    dataset = load_dataset(DataSpec(), override=npz(tmp_path, x=x, y=y))
    assert list(dataset.inputs) == ["x"]
    np.testing.assert_array_equal(dataset.inputs["x"], x)
    assert dataset.inputs["x"].dtype == np.float32
    assert dataset.labels is not None and dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.labels, y)
    assert len(dataset) == 10
    assert dataset.source == str(tmp_path / "data.npz")


def test_labels_are_optional(tmp_path: Path) -> None:
    dataset = load_dataset(DataSpec(), override=npz(tmp_path, x=np.zeros((4, 3), np.float32)))
    assert dataset.labels is None
    assert len(dataset) == 4


def test_path_from_the_spec_and_override_wins(tmp_path: Path) -> None:
    first = npz(tmp_path, "a.npz", x=np.zeros((2, 3), np.float32))
    second = npz(tmp_path, "b.npz", x=np.zeros((5, 3), np.float32))
    assert len(load_dataset(DataSpec(path=first))) == 2
    assert len(load_dataset(DataSpec(path=first), override=second)) == 5


def test_multi_input_by_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (6, 5)).astype(np.int64)
    mask = rng.random((6, 5)).astype(np.float32)
    dataset = load_dataset(DataSpec(), override=npz(tmp_path, input_ids=ids, attention=mask, y=np.zeros(6, np.int64)))
    assert set(dataset.inputs) == {"input_ids", "attention"}
    # Integer inputs (token ids) stay integers when no scaling is asked for.
    assert dataset.inputs["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(dataset.inputs["input_ids"], ids)
    np.testing.assert_array_equal(dataset.inputs["attention"], mask)
    batch = dataset.batch(2, 4)
    np.testing.assert_array_equal(batch["input_ids"], ids[2:4])
    np.testing.assert_array_equal(batch["attention"], mask[2:4])


def test_scale_mean_std_per_channel(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 3, 4, 4)).astype(np.uint8)
    spec = DataSpec(scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dataset = load_dataset(spec, override=npz(tmp_path, x=pixels))
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    expected = (pixels.astype(np.float64) / 255 - mean) / std
    assert dataset.inputs["x"].dtype == np.float32
    np.testing.assert_allclose(dataset.inputs["x"], expected, rtol=0, atol=1e-5)


def test_scalar_mean_std_and_scale_only(tmp_path: Path) -> None:
    pixels = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2) * 10
    path = npz(tmp_path, x=pixels)
    scaled = load_dataset(DataSpec(scale=0.5), override=path).inputs["x"]
    np.testing.assert_allclose(scaled, pixels * 0.5, atol=1e-6)
    normalised = load_dataset(DataSpec(mean=[10.0], std=[2.0]), override=path).inputs["x"]
    np.testing.assert_allclose(normalised, (pixels - 10.0) / 2.0, atol=1e-6)


def test_mean_length_must_match_channels(tmp_path: Path) -> None:
    exc = data_error(npz(tmp_path, x=np.zeros((2, 3, 4, 4), np.float32)), DataSpec(mean=[0.1, 0.2]))
    assert "2 mean/std values for 'x' of shape [2, 3, 4, 4]" in exc.message


def test_limit_takes_the_first_samples(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    dataset = load_dataset(DataSpec(limit=3), override=npz(tmp_path, x=x, y=y))
    assert len(dataset) == 3
    np.testing.assert_array_equal(dataset.inputs["x"], x[:3])
    np.testing.assert_array_equal(dataset.labels, y[:3])
    # A limit above the size keeps everything.
    assert len(load_dataset(DataSpec(limit=100), override=tmp_path / "data.npz")) == 10


def test_compressed_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((50, 7)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    np.testing.assert_array_equal(load_dataset(DataSpec(), override=tmp_path / "c.npz").inputs["x"], x)


def test_take_and_split_batches() -> None:
    dataset = Dataset({"x": np.arange(7)[:, None].astype(np.float32)}, np.arange(7), "mem")
    taken = dataset.take(4)
    assert len(taken) == 4 and taken.labels.tolist() == [0, 1, 2, 3]
    assert split_batches(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert split_batches(6, 3) == [(0, 3), (3, 6)]
    assert split_batches(2, 64) == [(0, 2)]


# --- errors ----------------------------------------------------------------------------------


def test_no_path_at_all_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no calibration data given") as caught:
        load_dataset(DataSpec(), what="calibration data")
    assert caught.value.exit_code == 2


def test_missing_file(tmp_path: Path) -> None:
    exc = data_error(tmp_path / "nope.npz")
    assert exc.message == f"{tmp_path / 'nope.npz'} does not exist"


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    assert data_error(tmp_path).message == f"{tmp_path} is not a file"


@pytest.mark.parametrize(
    "content",
    [b"", b"x,y\n1,2\n", b"PK\x03\x04 truncated zip", bytes(range(256)) * 4],
    ids=["empty", "csv", "broken-zip", "binary"],
)
def test_not_an_npz(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    assert "is not a readable .npz file" in data_error(path).message


def test_a_bare_npy_array_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.zeros((3, 2), np.float32))
    exc = data_error(path)
    assert "single .npy array, not an .npz" in exc.message
    assert "np.savez" in exc.hint


def test_corrupt_compressed_member(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(0).random((1000, 50)).astype(np.float32))
    data = bytearray((tmp_path / "c.npz").read_bytes())
    data[200:400] = bytes(b ^ 0xFF for b in data[200:400])  # inside the deflate stream of 'x'
    (tmp_path / "c.npz").write_bytes(bytes(data))
    assert "is not a readable .npz file" in data_error(tmp_path / "c.npz").message


class Boom:
    """Unpickling this would create a marker file: proof that pickle was (not) loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    objects = np.empty(2, dtype=object)
    objects[0] = Boom(str(marker))
    objects[1] = Boom(str(marker))
    path = npz(tmp_path, x=objects)
    exc = data_error(path)
    assert "is not a readable .npz file" in exc.message
    assert "pickle" in exc.message.lower()
    assert not marker.exists()
    # The same file unpickled (what must never happen) would have run the payload.
    with np.load(path, allow_pickle=True) as archive:
        archive["x"]
    assert marker.exists()


def test_a_raw_pickle_file_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "data.npz"
    path.write_bytes(pickle.dumps(Boom(str(marker))))
    assert "is not a readable .npz file" in data_error(path).message
    assert not marker.exists()


def test_non_numeric_inputs(tmp_path: Path) -> None:
    exc = data_error(npz(tmp_path, x=np.array([["a", "b"], ["c", "d"]])))
    assert "'x' has dtype <U1; numeric arrays expected" in exc.message


def test_no_arrays(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path)
    assert data_error(path).message.endswith("holds no arrays")


def test_labels_without_inputs(tmp_path: Path) -> None:
    exc = data_error(npz(tmp_path, y=np.arange(4)))
    assert "has labels 'y' but no inputs" in exc.message
    assert exc.hint == "put inputs under 'x'"


def test_inputs_of_different_lengths(tmp_path: Path) -> None:
    exc = data_error(npz(tmp_path, a=np.zeros((4, 2), np.float32), b=np.zeros((5, 2), np.float32)))
    assert "inputs have different lengths" in exc.message
    assert "'a': 4" in exc.message and "'b': 5" in exc.message


def test_arrays_of_another_length_than_the_inputs_are_ignored(tmp_path: Path, capsys) -> None:
    """Metadata saved beside the data ('meta', a single value) is not an input: 'x' sets the number of
    samples (else the length most arrays share); the rest is ignored with a warning, never read."""
    x = np.zeros((6, 2), np.float32)
    data = load_dataset(DataSpec(), override=npz(tmp_path, x=x, y=np.arange(6), meta=np.arange(3), note=np.float32(1)))
    assert list(data.inputs) == ["x"] and len(data) == 6 and len(data.labels) == 6
    assert "ignoring 'meta' [3], 'note' []: not 6 samples like the inputs ('x')" in capsys.readouterr().err
    named = load_dataset(
        DataSpec(),
        override=npz(
            tmp_path, "n.npz", ids=np.zeros((6, 4), np.int64), mask=np.ones((6, 4), np.int64), meta=np.arange(3)
        ),
    )
    assert sorted(named.inputs) == ["ids", "mask"]
    with pytest.raises(DataError, match="labels 'y' must be 6 integers"):  # labels are not extra: they must fit
        load_dataset(DataSpec(), override=npz(tmp_path, "l.npz", x=x, y=np.arange(5)))


def test_scalar_input_has_no_length(tmp_path: Path) -> None:
    assert "'x' is a single value, not an array of samples" in data_error(npz(tmp_path, x=np.float32(1.0))).message


def test_zero_samples(tmp_path: Path) -> None:
    assert data_error(npz(tmp_path, x=np.zeros((0, 3), np.float32))).message.endswith("holds zero samples")


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        (np.array([0.0, 1.0, 2.0, 1.0]), "float64[4]"),
        (np.array([True, False, True, False]), "bool[4]"),
        (np.array([0, 1, 2]), "int64[3]"),
        (np.zeros((4, 2), np.int64), "int64[4, 2]"),
    ],
    ids=["float", "bool", "short", "2-d"],
)
def test_labels_must_be_one_integer_per_sample(tmp_path: Path, labels: np.ndarray, shown: str) -> None:
    exc = data_error(npz(tmp_path, x=np.zeros((4, 2), np.float32), y=labels))
    assert f"labels 'y' must be 4 integers, got {shown}" in exc.message


def test_nan_in_float_inputs(tmp_path: Path) -> None:
    x = np.ones((3, 2), np.float32)
    x[1, 1] = np.nan
    assert "'x' contains NaN or Inf values" in data_error(npz(tmp_path, x=x)).message


def test_nan_after_normalisation(tmp_path: Path) -> None:
    # Finite uint8 data, but a zero std turns (0 - 0) / 0 into NaN and 5 / 0 into Inf.
    pixels = np.array([[[[0, 5]]], [[[0, 7]]]], dtype=np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        exc = data_error(npz(tmp_path, x=pixels), DataSpec(mean=[0.0], std=[0.0]))
    assert "contains NaN or Inf" in exc.message


def test_overflow_to_inf_after_scaling(tmp_path: Path) -> None:
    x = np.full((2, 2), 3e38, np.float32)
    with np.errstate(over="ignore"):
        exc = data_error(npz(tmp_path, x=x), DataSpec(scale=10.0))
    assert "contains NaN or Inf" in exc.message


# --- synthetic data --------------------------------------------------------------------------


def test_synthetic_dataset_follows_the_signature() -> None:
    specs = [
        TensorSpec("image", (None, 1, 8, 8), np.dtype(np.float32)),
        TensorSpec("ids", (None, None), np.dtype(np.int64)),
        TensorSpec("half", (2, 3), np.dtype(np.float16)),
    ]
    dataset = synthetic_dataset(specs, count=5, seed=3)
    assert dataset.labels is None
    assert dataset.source == "random inputs"
    assert len(dataset) == 5
    assert dataset.inputs["image"].shape == (5, 1, 8, 8) and dataset.inputs["image"].dtype == np.float32
    assert dataset.inputs["ids"].shape == (5, 128) and dataset.inputs["ids"].dtype == np.int64  # dynamic dim: 128
    assert dataset.inputs["half"].shape == (5, 3) and dataset.inputs["half"].dtype == np.float16
    image = dataset.inputs["image"]
    assert image.min() >= 0.0 and image.max() < 1.0 and image.std() > 0.1
    assert (
        dataset.inputs["ids"].min() >= 0
        and dataset.inputs["ids"].max() < 100
        and len(np.unique(dataset.inputs["ids"])) > 50
    )


def test_synthetic_dataset_is_seeded() -> None:
    specs = [TensorSpec("x", (None, 4), np.dtype(np.float32))]
    first = synthetic_dataset(specs, count=3, seed=0).inputs["x"]
    np.testing.assert_array_equal(first, synthetic_dataset(specs, count=3, seed=0).inputs["x"])
    assert not np.array_equal(first, synthetic_dataset(specs, count=3, seed=1).inputs["x"])


# --- reading only what is needed, and refusing what cannot fit ---------------------------------


def test_limit_reads_the_first_samples_of_compressed_and_fortran_arrays(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((100, 3, 4)).astype(np.float32)
    y = np.arange(100)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y)
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(x), y=y)
    for name in ("c.npz", "f.npz"):
        dataset = load_dataset(DataSpec(limit=7), override=tmp_path / name)
        np.testing.assert_array_equal(dataset.inputs["x"], x[:7])
        np.testing.assert_array_equal(dataset.labels, y[:7])
        assert dataset.inputs["x"][:7].flags.writeable  # reads are fresh arrays, safe to scale in place


def test_a_dataset_larger_than_memory_streams_and_only_a_whole_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(0).integers(0, 256, (20_000, 256), dtype=np.uint8)
    path = npz(tmp_path, x=x, y=np.zeros(20_000, np.int64))
    # 20 MB once scaled to float32, against 8 MB available: it opens (one 4096-row block as read and
    # as float32, 5.2 MB, plus 160 kB of labels, x 1.2) and reads batch by batch ...
    monkeypatch.setenv("EDGECLI_MEMORY_LIMIT_BYTES", "8000000")
    dataset = load_dataset(DataSpec(scale=1 / 255), override=path)
    rows = dataset.inputs["x"]
    assert type(rows).__name__ == "RowArray" and rows.shape == (20_000, 256) and rows.dtype == np.float32
    np.testing.assert_array_equal(dataset.batch(1000, 1064)["x"], x[1000:1064].astype(np.float32) * np.float32(1 / 255))
    # ... but what would read every sample at once is refused before it reads.
    with pytest.raises(DataError) as caught:
        np.asarray(rows)
    assert (
        caught.value.message
        == f"reading 20000 samples of {path}:x at once needs ~0.02 GiB of memory, 7.63 MiB available"
    )
    assert caught.value.hint == "set data.limit to use fewer samples"


def test_labels_that_cannot_fit_in_memory_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = npz(tmp_path, x=np.zeros((200_000, 1), np.uint8), y=np.zeros(200_000, np.int64))
    # labels are loaded: 1.6 MB of int64 plus one block of inputs (200 kB as read, 800 kB as float32), x 1.2.
    monkeypatch.setenv("EDGECLI_MEMORY_LIMIT_BYTES", "1000000")
    exc = data_error(path, DataSpec(scale=1 / 255))
    assert exc.message == f"data {path} needs ~2.98 MiB of memory, 0.95 MiB available"
    assert exc.hint == "set data.limit to use fewer samples"
    assert len(load_dataset(DataSpec(scale=1 / 255, limit=50_000), override=path)) == 50_000


def test_a_bad_memory_limit_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLI_MEMORY_LIMIT_BYTES", "lots")
    with pytest.raises(UsageError, match="EDGECLI_MEMORY_LIMIT_BYTES='lots' is not a number of bytes"):
        load_dataset(DataSpec(), override=npz(tmp_path, x=np.zeros((2, 2), np.float32)))


def test_a_member_that_is_not_an_array(tmp_path: Path) -> None:
    path = npz(tmp_path, x=np.zeros((2, 2), np.float32))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "hello")
    assert data_error(path).message == f"{path}: member 'notes.txt' is not a numpy array"


def test_a_member_shorter_than_its_header_says(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1000, 4)})
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + np.zeros(40, np.float32).tobytes())
    assert "'x' is truncated" in data_error(path).message
