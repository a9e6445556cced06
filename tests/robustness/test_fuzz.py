"""Property-based fuzzing of what edgecli reads from users: model bytes (format detection), recipes
(YAML files and --set) and datasets (.npz). Whatever the input, the reader returns a result or raises
the documented EdgecliError (one line, its exit code), never another exception, and never hangs.

Budget: every test is derandomized (the same examples on every run, so CI is stable and needs no
example database) with a fixed max_examples: 3,400 examples, about 20 s on one core. Raise
FUZZ_EXAMPLES (a multiplier, default 1) locally to search longer, and set FUZZ_RANDOM=1 for new
examples on every run: `FUZZ_RANDOM=1 FUZZ_EXAMPLES=20 pytest -n 2 tests/robustness/test_fuzz.py`.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import string
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgecli.core.errors import DataError, EdgecliError, ModelReadError, RecipeError, UsageError
from edgecli.data.dataset import Dataset, load_dataset
from edgecli.formats.detect import Format, detect_format
from edgecli.recipes import RECIPES, DataSpec, Strict, load_recipe
from tests.conftest import SAMPLE

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "1"))
HANG_SECONDS = 10


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging, where a timer signal can be used (main thread, POSIX)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the files of every example (hypothesis reruns a test body, not its fixtures)."""
    return tmp_path_factory.mktemp("fuzz")


def mutated(seed: bytes, data: st.DataObject) -> bytes:
    """`seed` truncated, with bytes overwritten, inserted or appended, as a damaged download would be."""
    content = bytearray(seed)
    for _ in range(data.draw(st.integers(0, 6), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "append"]), label="kind")
        where = data.draw(st.integers(0, max(len(content) - 1, 0)), label="where")
        if kind == "flip" and content:
            content[where] = data.draw(st.integers(0, 255), label="byte")
        elif kind == "cut":
            del content[where:]
        elif kind == "insert":
            content[where:where] = data.draw(st.binary(max_size=16), label="inserted")
        else:
            content += data.draw(st.binary(max_size=64), label="appended")
    return bytes(content)


# --- (a) model bytes: detect_format --------------------------------------------------------------


def _zip(names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), b"{}")  # the same bytes every run
    return buffer.getvalue()


MODEL_SEEDS = {
    "onnx": (SAMPLE / "fashion_cnn.onnx").read_bytes()[:4096],
    "pt2": (SAMPLE / "fashion_cnn.pt2").read_bytes(),
    "torch-save": (SAMPLE / "fashion_cnn.pt").read_bytes(),
    "tflite": b"\x1c\x00\x00\x00TFL3" + bytes(120),
    "ort": b"\x1c\x00\x00\x00ORTM" + bytes(120),
    "keras": _zip(["config.json", "metadata.json", "model.weights.h5"]),
    "hdf5": b"\x89HDF\r\n\x1a\n" + bytes(64),
    "empty-zip": _zip([]),
}


def _detect(path: Path) -> None:
    with no_hang():
        try:
            assert isinstance(detect_format(path), Format)
        except ModelReadError as exc:
            assert exc.exit_code == 3 and "\n" not in exc.line()


@budget(500)
@given(content=st.binary(max_size=512))
def test_detect_format_on_arbitrary_bytes(folder: Path, content: bytes) -> None:
    path = folder / "model"
    path.write_bytes(content)
    _detect(path)


@budget(400)
@given(seed=st.sampled_from(sorted(MODEL_SEEDS)), data=st.data())
def test_detect_format_on_damaged_models(folder: Path, seed: str, data: st.DataObject) -> None:
    path = folder / "model"
    path.write_bytes(mutated(MODEL_SEEDS[seed], data))
    _detect(path)


def test_a_zip_needing_a_newer_zip_version(folder: Path) -> None:
    # Found by this file (FUZZ_RANDOM=1): zipfile raised NotImplementedError ("zip file version 6.4"), exit 4.
    content = bytearray(MODEL_SEEDS["keras"])
    directory = content.index(b"PK\x01\x02")  # the central directory's first entry: "version needed" at +6
    content[directory + 6] = 64
    path = folder / "model"
    path.write_bytes(bytes(content))
    with pytest.raises(ModelReadError, match="cannot be opened"):
        detect_format(path)
    path = folder / "data.npz"
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match="is not a readable .npz file"):
        load_dataset(DataSpec(), override=path)


# --- (b) recipes: load_recipe on YAML text, nested values and --set ------------------------------

VERBS = sorted(RECIPES)


def _field_names(model: type[Strict], seen: set[str] | None = None) -> set[str]:
    """Every key of a recipe model and its sections, so random recipes reach deep into them."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        for kind in getattr(info.annotation, "__args__", (info.annotation,)):
            if isinstance(kind, type) and issubclass(kind, Strict) and kind.__name__ not in (seen or set()):
                names |= _field_names(kind, (seen or set()) | {kind.__name__})
    return names


KEYS = sorted(set().union(*(_field_names(model) for model in RECIPES.values())))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["onnx", "tflite", "static", "channel", "1e-3", "p90_ms <= 5", "x:y", "a.b:c", "[", "*", "~"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
RECIPE_DICTS = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), VALUES, max_size=6)


def _load(verb: str, recipe: str | None, overrides: list[str] | None = None) -> None:
    with no_hang():
        try:
            loaded, _ = load_recipe(verb, recipe, overrides)
            assert isinstance(loaded, RECIPES[verb])
        except (RecipeError, UsageError) as exc:
            assert exc.exit_code == 2 and "\n" not in exc.line()


@budget(400)
@given(verb=st.sampled_from(VERBS), text=st.text(max_size=200) | st.binary(max_size=64))
def test_load_recipe_on_arbitrary_text(folder: Path, verb: str, text: str | bytes) -> None:
    path = folder / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    _load(verb, str(path))


@budget(400)
@given(verb=st.sampled_from(VERBS), raw=RECIPE_DICTS)
def test_load_recipe_on_random_nested_values(folder: Path, verb: str, raw: dict) -> None:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    _load(verb, str(path))


SET_ITEMS = st.text(max_size=30) | st.builds(
    lambda path, value: f"{'.'.join(path)}={value}",
    st.lists(st.sampled_from(KEYS) | st.text(string.ascii_lowercase + "._ ", max_size=5), min_size=1, max_size=3),
    st.text(max_size=20)
    | SCALARS.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
)


@budget(400)
@given(verb=st.sampled_from(VERBS), items=st.lists(SET_ITEMS, max_size=4), shipped=st.booleans())
def test_load_recipe_with_random_set_items(verb: str, items: list[str], shipped: bool) -> None:
    recipe = {
        "prune": "magnitude-50",
        "distill": "kd",
        "quantize": "int8-static",
        "convert": "onnx",
        "bench": "default",
    }[verb]
    _load(verb, recipe if shipped else None, items)


@pytest.mark.parametrize("depth", [100, 5000])
def test_deeply_nested_yaml_is_a_recipe_error(folder: Path, depth: int) -> None:
    # Found by hand while writing these tests: PyYAML recursed until RecursionError (exit 4).
    path = folder / "deep.yaml"
    path.write_text("seed: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(RecipeError):
        load_recipe("prune", str(path))
    with pytest.raises(UsageError):  # a RecipeError (not an int) at depth 100, a UsageError (--set syntax) at 5000
        load_recipe("prune", None, ["seed=" + "[" * depth + "]" * depth])


# --- (c) data: load_dataset on arbitrary bytes and random archives ---------------------------------

DTYPES = [
    "float32",
    "float64",
    "float16",
    ">f4",
    "int8",
    "uint8",
    "int32",
    "int64",
    "bool",
    "complex64",
    "<U3",
    "S2",
    "object",
]
NAMES = st.sampled_from(["x", "y", "input", "mask", "x.npy", "a/b"]) | st.text(max_size=6)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    if dtype.kind == "O":
        values = np.empty(shape, dtype=object)
        values.fill(draw(st.integers() | st.text(max_size=3)))
        return values
    return draw(hnp.arrays(dtype, shape))  # NaN, Inf, subnormals and extremes included


def _check_dataset(dataset: Dataset, spec: DataSpec) -> None:
    """What a loaded dataset promises to the stages."""
    assert len(dataset) >= 1 and (spec.limit is None or len(dataset) <= spec.limit)
    for array in dataset.inputs.values():
        assert array.ndim >= 1 and len(array) == len(dataset)
        assert np.issubdtype(array.dtype, np.integer) or (array.dtype == np.float32 and np.all(np.isfinite(array)))
    assert dataset.labels is None or (dataset.labels.dtype == np.int64 and dataset.labels.shape == (len(dataset),))


def _load_data(path: Path, spec: DataSpec) -> None:
    with no_hang():
        try:
            _check_dataset(load_dataset(spec, override=path), spec)
        except (DataError, UsageError) as exc:
            assert exc.exit_code in (2, 3) and "\n" not in exc.line()


SPECS = st.builds(
    DataSpec,
    scale=st.sampled_from([1.0, 1 / 255, 1e30]),
    mean=st.none() | st.lists(st.floats(-2, 2), min_size=1, max_size=3),
    std=st.none() | st.lists(st.floats(0, 2), min_size=1, max_size=3),
    limit=st.none() | st.integers(1, 8),
)


@budget(400)
@given(content=st.binary(max_size=512))
def test_load_dataset_on_arbitrary_bytes(folder: Path, content: bytes) -> None:
    path = folder / "data.npz"
    path.write_bytes(content)
    _load_data(path, DataSpec())


@budget(500)
@given(contents=st.dictionaries(NAMES, arrays(), max_size=4), compressed=st.booleans(), spec=SPECS)
def test_load_dataset_on_random_archives(folder: Path, contents: dict, compressed: bool, spec: DataSpec) -> None:
    path = folder / "data.npz"
    with np.errstate(all="ignore"):
        (np.savez_compressed if compressed else np.savez)(path, **contents)
        _load_data(path, spec)


def _sample_npz(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    (np.savez_compressed if compressed else np.savez)(
        buffer, x=rng.random((6, 1, 4, 4)).astype(np.float32), y=np.arange(6)
    )
    return buffer.getvalue()


DATA_SEEDS = {"stored": _sample_npz(False), "deflated": _sample_npz(True)}


@budget(400)
@given(seed=st.sampled_from(sorted(DATA_SEEDS)), data=st.data(), limit=st.none() | st.integers(1, 8))
def test_load_dataset_on_damaged_archives(folder: Path, seed: str, data: st.DataObject, limit: int | None) -> None:
    path = folder / "data.npz"
    path.write_bytes(mutated(DATA_SEEDS[seed], data))
    _load_data(path, DataSpec(limit=limit))


def test_every_error_is_an_edgecli_error() -> None:
    # What the tests above accept: the documented classes, with the documented exit codes.
    assert issubclass(RecipeError, UsageError) and issubclass(DataError, EdgecliError)
    assert (
        UsageError("u").exit_code,
        RecipeError("r").exit_code,
        DataError("d").exit_code,
        ModelReadError("m").exit_code,
    ) == (2, 2, 3, 3)
