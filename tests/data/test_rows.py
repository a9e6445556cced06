"""Samples on disk, read a batch at a time: indexing matches numpy, an uncompressed archive is read
in place, other data is spilled to an unnamed temporary file, and memory stays flat."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgecli.core.errors import DataError
from edgecli.data.augment import ViewRows, augmented_view
from edgecli.data.dataset import load_dataset
from edgecli.data.rows import RowArray, array_digest
from edgecli.recipes import AugmentSpec, DataSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["stored", "compressed"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[RowArray, np.ndarray]:
    x = np.random.default_rng(1).random((37, 2, 3, 4)).astype(np.float32)
    path = tmp_path / "d.npz"
    (np.savez if request.param == "stored" else np.savez_compressed)(path, x=x)
    rows = load_dataset(DataSpec(), override=path).inputs["x"]
    assert isinstance(rows, RowArray)
    return rows, x


def test_indexing_matches_numpy(stored: tuple[RowArray, np.ndarray]) -> None:
    rows, x = stored
    assert rows.shape == x.shape and rows.dtype == x.dtype and len(rows) == 37 and rows.ndim == 4
    keys = [
        0,
        -1,
        36,
        slice(None),
        slice(5, 9),
        slice(30, 99),
        slice(9, 5),
        slice(1, 30, 7),
        slice(None, None, -3),
        np.array([4, 2, 2, 30, 0]),
        [36, 0],
        np.array([[1, 2], [3, 3]]),
        x[:, 0, 0, 0] > 0.5,
        np.array([], np.int64),
        (slice(2, 6), 1),
        (3, 0, 2),
    ]
    for key in keys:
        np.testing.assert_array_equal(rows[key], x[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(rows), x)
    for bad in (37, -38, np.array([0, 37])):
        with pytest.raises(IndexError):
            rows[bad]


def test_sub_rows_read_nothing_until_indexed(stored: tuple[RowArray, np.ndarray]) -> None:
    rows, x = stored
    middle = rows.rows(10, 20)
    assert isinstance(middle, RowArray) and middle.shape == (10, 2, 3, 4)
    np.testing.assert_array_equal(middle[np.array([9, 0])], x[[19, 10]])
    np.testing.assert_array_equal(middle.rows(5, 100)[:], x[15:20])
    assert len(rows.rows(40, 50)) == 0


def test_digest_is_the_same_on_disk_and_in_memory(stored: tuple[RowArray, np.ndarray]) -> None:
    rows, x = stored
    assert array_digest(rows) == array_digest(x)
    assert array_digest(rows, np.float64) == array_digest(x.astype(np.float64))
    assert array_digest(rows.rows(0, 36)) != array_digest(x)


def test_an_uncompressed_float32_archive_is_read_in_place_and_others_are_spilled(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.savez(tmp_path / "s.npz", x=x, u=x.astype(np.uint8))
    np.savez_compressed(tmp_path / "c.npz", x=x)
    in_place = load_dataset(DataSpec(), override=tmp_path / "s.npz").inputs
    assert in_place["x"].file == str(tmp_path / "s.npz")  # no copy at all
    assert in_place["u"].file == str(tmp_path / "s.npz") and in_place["u"].dtype == np.uint8  # integers stay
    scaled = load_dataset(DataSpec(scale=0.5), override=tmp_path / "s.npz").inputs
    assert scaled["x"].file is None and scaled["u"].dtype == np.float32  # normalised into a spill file
    np.testing.assert_array_equal(scaled["u"][:], x * 0.5)
    assert load_dataset(DataSpec(), override=tmp_path / "c.npz").inputs["x"].file is None


def test_spill_files_have_no_name_to_leave_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez_compressed(tmp_path / "c.npz", x=np.ones((100, 8), np.float32))
    spills = tmp_path / "tmp"
    spills.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spills))
    data = load_dataset(DataSpec(scale=2.0), override=tmp_path / "c.npz")
    assert float(data.inputs["x"][99].sum()) == 16.0
    assert list(spills.iterdir()) == []  # an O_TMPFILE file: gone with the process, whatever ends it


def test_a_spill_that_does_not_fit_on_disk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez_compressed(tmp_path / "c.npz", x=np.ones((1000, 256), np.float32))
    real = shutil.disk_usage
    # a nearly full disk: 100 kB free for 1 MB of samples
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: real(folder)._replace(free=100_000))
    with pytest.raises(DataError) as caught:
        load_dataset(DataSpec(), override=tmp_path / "c.npz")
    assert caught.value.message.endswith(
        f"c.npz:x needs 1 MiB of temporary disk space to stream, 0 MiB free in {tempfile.gettempdir()}"
    )
    assert caught.value.hint == "point TMPDIR at a larger disk or set data.limit"


def test_views_augment_each_batch_as_the_whole_set(tmp_path: Path) -> None:
    x = np.random.default_rng(2).random((50, 3, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "i.npz", x=(x * 255).astype(np.uint8))
    rows = load_dataset(DataSpec(), override=tmp_path / "i.npz").inputs["x"]  # uint8 on disk
    view = augmented_view(rows, AugmentSpec(hflip=True, crop_padding=2), seed=3, view=1)
    whole = np.asarray(view)
    assert whole.dtype == np.float32 and whole.shape == (50, 3, 8, 8)
    picked = np.array([49, 0, 7, 7, 21])
    np.testing.assert_array_equal(view[picked], whole[picked])
    np.testing.assert_array_equal(view[10:20], whole[10:20])
    subset = view.subset(np.array([5, 6, 40]))
    np.testing.assert_array_equal(subset[np.array([2, 0])], whole[[40, 5]])
    np.testing.assert_array_equal(ViewRows(rows)[3], (x[3] * 255).astype(np.uint8).astype(np.float32))


MEASURE = """
import json, resource, sys
import numpy as np
from edgecli.data.dataset import load_dataset
from edgecli.recipes import DataSpec
data = load_dataset(DataSpec(scale=1 / 255), override=sys.argv[1])
rows, total = data.inputs["x"], 0.0
for start in range(0, len(rows), 256):  # every sample in order, as calibration and evaluation read
    total += float(data.batch(start, start + 256)["x"].sum())
rng = np.random.default_rng(0)
for _ in range(50):  # shuffled mini-batches, as distillation reads
    total += float(rows[rng.integers(0, len(rows), 64)].sum())
print(json.dumps({"rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "samples": len(rows), "total": total}))
"""


def _peak(path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(result.stdout)


def test_reading_a_large_dataset_keeps_memory_flat(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "small.npz", x=rng.integers(0, 256, (1000, 784), dtype=np.uint8))
    np.savez_compressed(tmp_path / "large.npz", x=rng.integers(0, 256, (60_000, 784), dtype=np.uint8))
    small, large = _peak(tmp_path / "small.npz"), _peak(tmp_path / "large.npz")
    assert large["samples"] == 60_000 and large["total"] > 0
    # 60,000 samples are 45 MiB as stored and 179 MiB as float32; loading them whole would add both.
    grown_mib = (large["rss_kib"] - small["rss_kib"]) / 1024
    assert grown_mib < 40, f"peak memory grew by {grown_mib:.0f} MiB for 179 MiB of samples"
