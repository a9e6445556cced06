"""Bad model files through the real CLI, for every verb that reads a model and every format it reads.

From the real sample models: an empty file, files cut after 1 byte, 10%, 50% and 99% of their bytes,
random bytes, a folder, a valid model under another format's extension, valid models whose weights
hold NaN/Inf, and a model larger than the memory available. Each failure asserts the documented exit
code, exactly one stderr line with the key phrase, no traceback, nothing on stdout and nothing left
in the output folder. Bad files fail before any real work; the TFLite fixture (onnx2tf) and the
Keras model (TensorFlow, in a subprocess) are built once per worker. The cases run edgecli's entry
point in the test process (tests/conftest.py, run_cli), except one real process per verb (the
random-bytes case) and random bytes behind a format's header (a native parser that crashed would
take the process with it).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLE, data_args, leftovers, run_cli, run_cli_process
from tests.robustness.conftest import assert_refused

SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "pt": ".pt", "tflite": ".tflite", "keras": ".keras", "ort": ".ort"}
# The formats each verb reads (docs/formats.md; prune also reads ONNX, without fine-tuning).
READS = {
    "prune": ("pt2", "onnx", "pt"),
    "distill": ("pt2", "onnx", "pt", "tflite"),
    "quantize": ("pt2", "onnx", "pt", "keras"),
    "convert": ("pt2", "onnx", "pt", "keras"),
    "bench": ("pt2", "onnx", "tflite", "keras", "ort"),
    "inspect": ("pt2", "onnx", "pt", "tflite", "keras", "ort"),
}
FACTORY = [
    "--set",
    "model.factory=sample_models.fashion_cnn:build",
]  # what a state_dict (.pt) needs (with --trust-code)
CUTS = {"1-byte": None, "cut-10%": 0.10, "cut-50%": 0.50, "cut-99%": 0.99}
NOT_A_MODEL = "is not a model edgecli knows"


def command(verb: str, model: Path, fmt: str, out: Path) -> list[object]:
    """The verb's usual command line on `model` (read as `fmt`), its output in `out`."""
    if verb == "inspect":
        return ["inspect", model, "--json", out / "info.json"]
    if verb == "bench":
        return ["bench", model, "-r", "default", *data_args("bench"), "--json", out / "report.json"]
    tflite = fmt == "keras"  # Keras models are quantized and converted to TFLite
    recipe, output = {
        "prune": (["magnitude-50", "--set", "finetune.epochs=0"], "out.onnx" if fmt == "onnx" else "out.pt2"),
        "distill": (["kd"], "out.pt2"),
        "quantize": (["tflite-dynamic"], "out.tflite") if tflite else (["int8-static"], "out.onnx"),
        "convert": (["tflite"], "out.tflite") if tflite else (["onnx"], "out.onnx"),
    }[verb]
    trust = ["--trust-code"] if fmt == "pt" else []  # the sample factory is code the tests trust
    return [*trust, verb, model, "-r", *recipe, *data_args(verb), *(FACTORY if fmt == "pt" else []), "-o", out / output]


# --- the real models ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ort_model(sample: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgecli.formats.ort_file import from_onnx_bytes

    path = tmp_path_factory.mktemp("ort") / "fashion.ort"
    path.write_bytes(from_onnx_bytes(sample["onnx"].read_bytes()))
    return path


KERAS_SCRIPT = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(10)])
model.save(sys.argv[1])
"""


@pytest.fixture(scope="session")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras 3 CNN for the sample's 28x28 images (saved in a subprocess: TensorFlow stays out
    of the test process)."""
    path = tmp_path_factory.mktemp("keras") / "small.keras"
    subprocess.run([sys.executable, "-c", KERAS_SCRIPT, path], check=True, capture_output=True, timeout=300)
    return path


def source(fmt: str, request: pytest.FixtureRequest) -> Path:
    """The valid model of `fmt` the bad files are made from (fixtures built only when needed)."""
    if fmt in ("pt2", "onnx"):
        return request.getfixturevalue("sample")[fmt]
    if fmt == "pt":
        return SAMPLE / "fashion_cnn.pt"
    return request.getfixturevalue({"tflite": "sample_tflite", "keras": "keras_model", "ort": "ort_model"}[fmt])


# --- damaged files -----------------------------------------------------------------------------


def cut(data: bytes, fraction: float | None) -> bytes:
    return data[:1] if fraction is None else data[: int(len(data) * fraction)]


# inspect (the cheapest reader) sees every format cut at every point; each other verb and format pair
# one cut, taken in turn, so that every reader meets every kind of cut without 4x the processes
_PAIRS = [(verb, fmt) for verb, formats in READS.items() if verb != "inspect" for fmt in formats]
TRUNCATED = [(verb, fmt, list(CUTS)[index % len(CUTS)]) for index, (verb, fmt) in enumerate(_PAIRS)]
TRUNCATED += [("inspect", fmt, name) for fmt in READS.get("inspect", []) for name in CUTS]


@pytest.mark.parametrize(("verb", "fmt", "damage"), TRUNCATED, ids=[f"{v}-{f}-{d}" for v, f, d in TRUNCATED])
def test_truncated_model(
    verb: str, fmt: str, damage: str, request: pytest.FixtureRequest, tmp_path: Path, out: Path
) -> None:
    model = tmp_path / f"model{SUFFIX[fmt]}"
    model.write_bytes(cut(source(fmt, request).read_bytes(), CUTS[damage]))
    # one byte tells no format; longer cuts lose the zip directory (.pt2, .pt, .keras) or end a protobuf
    # or flatbuffer short, and every reader says "truncated"
    phrase = NOT_A_MODEL if CUTS[damage] is None else "truncated"
    assert_refused(run_cli(*command(verb, model, fmt, out)), 3, phrase, out)


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


def make_random(path: Path) -> None:
    path.write_bytes(b"\x00" + np.random.default_rng(0).bytes(64 * 1024))  # a zero byte is no ONNX field tag


def make_folder(path: Path) -> None:
    path.mkdir()
    (path / "weights.bin").write_bytes(b"\x00" * 16)


WHOLE_FILE = {
    "empty": (make_empty, "is empty"),
    "random-bytes": (make_random, NOT_A_MODEL),
    "folder": (make_folder, "is a folder without saved_model.pb"),
}
WHOLE_CASES = [(verb, kind) for verb in READS for kind in WHOLE_FILE]


@pytest.mark.parametrize(("verb", "kind"), WHOLE_CASES, ids=[f"{v}-{k}" for v, k in WHOLE_CASES])
def test_not_a_model(verb: str, kind: str, tmp_path: Path, out: Path) -> None:
    fmt = READS[verb][0]
    make, phrase = WHOLE_FILE[kind]
    model = tmp_path / f"model{SUFFIX[fmt]}"
    make(model)
    run = run_cli_process if kind == "random-bytes" else run_cli  # one real process per verb
    assert_refused(run(*command(verb, model, fmt, out)), 3, phrase, out)


# Random bytes behind a format's own header reach that format's parser (LiteRT and onnxruntime read
# flatbuffers natively: a crash there would kill the process instead of raising).
HEADERS = {"onnx": b"\x08\x07", "tflite": b"\x1c\x00\x00\x00TFL3", "ort": b"\x1c\x00\x00\x00ORTM"}
HEADER_CASES = [(verb, fmt) for verb in ("bench", "inspect", "distill") for fmt in HEADERS if fmt in READS[verb]]


@pytest.mark.parametrize(("verb", "fmt"), HEADER_CASES, ids=[f"{v}-{f}-header-then-random" for v, f in HEADER_CASES])
def test_random_bytes_behind_a_valid_header(verb: str, fmt: str, tmp_path: Path, out: Path) -> None:
    model = tmp_path / f"model{SUFFIX[fmt]}"
    model.write_bytes(HEADERS[fmt] + np.random.default_rng(1).bytes(64 * 1024))
    assert_refused(run_cli_process(*command(verb, model, fmt, out)), 3, "corrupt", out)


def test_damaged_keras_archive_is_3(keras_model: Path, tmp_path: Path, out: Path) -> None:
    """A zip that detection takes for Keras (config.json, metadata.json) but whose config is garbage."""
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_model) as source_zip, zipfile.ZipFile(model, "w") as damaged:
        for info in source_zip.infolist():
            damaged.writestr(info, b"{not json" if info.filename == "config.json" else source_zip.read(info))
    assert_refused(run_cli(*command("inspect", model, "keras", out)), 3, "is not a loadable Keras model", out)


def test_bench_stops_at_the_first_bad_model(sample: dict[str, Path], tmp_path: Path, out: Path) -> None:
    """Every model is read before anything else is said (here the no --data warning)."""
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(sample["onnx"].read_bytes()[:1000])
    result = run_cli("bench", sample["onnx"], bad, sample["pt2"], "-r", "default", "--json", out / "report.json")
    assert str(bad) in assert_refused(result, 3, "truncated", out)


# --- a valid model under another format's extension ----------------------------------------------
# The format comes from the bytes: a verb that reads the real format works, one that does not says
# so with exit 2 (bad usage), naming the real format.

WRONG_NAME = [  # (verb, real format, file suffix, exit code, key phrase)
    ("convert", "onnx", ".tflite", 0, ""),
    ("prune", "tflite", ".onnx", 2, "prune reads .pt2, a state_dict + model.factory, or ONNX"),
    ("quantize", "tflite", ".onnx", 2, "quantize to ONNX reads ONNX and .pt2 models"),
    ("convert", "tflite", ".onnx", 0, ""),  # TFLite -> ONNX (tf2onnx)
    ("convert", "ort", ".onnx", 2, "convert reads .pt2, ONNX, Keras, SavedModel or a state_dict"),
    ("quantize", "ort", ".onnx", 2, "quantize to ONNX reads ONNX and .pt2 models"),
    ("prune", "keras", ".pt2", 2, "prune reads .pt2, a state_dict + model.factory, or ONNX"),
    ("bench", "pt", ".onnx", 2, "is a PyTorch state_dict: bench runs models"),
]


@pytest.mark.parametrize(
    ("verb", "fmt", "suffix", "code", "phrase"), WRONG_NAME, ids=[f"{v}-{f}-named{s}" for v, f, s, _, _ in WRONG_NAME]
)
def test_model_under_another_extension(
    verb: str, fmt: str, suffix: str, code: int, phrase: str, request: pytest.FixtureRequest, tmp_path: Path, out: Path
) -> None:
    model = tmp_path / f"model{suffix}"
    model.write_bytes(source(fmt, request).read_bytes())
    result = run_cli(*command(verb, model, fmt, out))
    if code:
        assert_refused(result, code, phrase, out)
    else:
        assert result.code == 0, result.stderr
        assert leftovers(out) == ["out.onnx"]


def test_inspect_reads_the_format_from_the_bytes(sample_tflite: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(sample_tflite.read_bytes())
    result = run_cli("inspect", model, "--json", "-")
    assert result.code == 0, result.stderr
    assert b'"format": "tflite"' in result.stdout


# --- NaN / Inf weights -------------------------------------------------------------------------
# A verb that transforms a model refuses NaN/Inf weights up front (exit 3, naming the tensor):
# calibration, pruning thresholds, fine-tuning and parity on NaN outputs mean nothing. bench and
# inspect only read the model: they work, bench with a warning.


def _with_non_finite(data: bytes, values: np.ndarray) -> bytes:
    """float32 `data` with its first values replaced."""
    array = np.frombuffer(data, np.float32).copy()
    array[: len(values)] = values
    return array.tobytes()


def rewrite_zip(source_path: Path, path: Path, member_suffix: str, values: np.ndarray) -> None:
    """A copy of the zip (.pt2, torch.save) with one float32 tensor's first values replaced."""
    with zipfile.ZipFile(source_path) as original, zipfile.ZipFile(path, "w") as edited:
        for info in original.infolist():
            data = original.read(info)
            edited.writestr(info, _with_non_finite(data, values) if info.filename.endswith(member_suffix) else data)


def non_finite_model(fmt: str, request: pytest.FixtureRequest, folder: Path) -> tuple[Path, str]:
    """The sample model of `fmt` with NaN/Inf in one weight tensor, and that tensor's name."""
    path = folder / f"nan{SUFFIX[fmt]}"
    values = np.array([np.nan, np.inf, np.nan], np.float32)
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(request.getfixturevalue("sample")["onnx"]))
        tensor = next(t for t in proto.graph.initializer if t.name == "3.weight")
        tensor.CopyFrom(
            numpy_helper.from_array(
                np.frombuffer(_with_non_finite(numpy_helper.to_array(tensor).tobytes(), values), np.float32).reshape(
                    tensor.dims
                ),
                tensor.name,
            )
        )
        onnx.save(proto, str(path))
        return path, "3.weight"
    if fmt == "pt2":  # the .pt2 archive stores '3.weight' as data/weights/weight_3
        rewrite_zip(request.getfixturevalue("sample")["pt2"], path, "/data/weights/weight_3", values)
        return path, "3.weight"
    if fmt == "pt":  # torch.save stores the first tensor ('0.weight') as data/0
        rewrite_zip(SAMPLE / "fashion_cnn.pt", path, "/data/0", values)
        return path, "0.weight"
    from ai_edge_litert import schema_py_generated as schema

    raw = bytearray(request.getfixturevalue("sample_tflite").read_bytes())
    flat = schema.Model.GetRootAsModel(bytes(raw), 0)
    graph = flat.Subgraphs(0)
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        buffer = flat.Buffers(tensor.Buffer())
        if tensor.Type() == schema.TensorType.FLOAT32 and buffer.DataLength() >= 64:
            start = buffer._tab.Vector(4)  # the buffer's bytes, edited in place
            raw[start : start + values.nbytes] = values.tobytes()
            path.write_bytes(bytes(raw))
            return path, tensor.Name().decode()
    raise AssertionError("no float32 weight in the TFLite model")


NON_FINITE = [
    ("prune", "onnx"),
    ("prune", "pt2"),
    ("quantize", "onnx"),
    ("quantize", "pt2"),
    ("convert", "onnx"),
    ("convert", "pt2"),
    ("convert", "pt"),
    ("distill", "onnx"),
    ("distill", "pt2"),
    ("distill", "tflite"),
]


@pytest.mark.parametrize(("verb", "fmt"), NON_FINITE, ids=[f"{v}-{f}" for v, f in NON_FINITE])
def test_non_finite_weights_are_refused(
    verb: str, fmt: str, request: pytest.FixtureRequest, tmp_path: Path, out: Path
) -> None:
    model, tensor = non_finite_model(fmt, request, tmp_path)
    line = assert_refused(
        run_cli(*command(verb, model, fmt, out)),
        3,
        f"has non-finite weights: tensor '{tensor}' holds 2 NaN and 1 Inf values",
        out,
    )
    assert line.startswith(f"cannot read model: {model}")


def test_bench_measures_non_finite_weights_with_a_warning(
    request: pytest.FixtureRequest, tmp_path: Path, out: Path
) -> None:
    model, _ = non_finite_model("onnx", request, tmp_path)
    result = run_cli(
        "bench",
        model,
        "-r",
        "default",
        *data_args("bench"),
        "--set",
        "runs=5",
        "--set",
        "min_time_s=0",
        "--set",
        "warmup=1",
        "--json",
        out / "report.json",
    )
    assert result.code == 0, result.stderr
    assert "nan.onnx has non-finite weights (tensor '3.weight' holds 2 NaN and 1 Inf values)" in result.stderr
    assert leftovers(out) == ["report.json"]


def test_inspect_shows_a_model_with_non_finite_weights(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model, _ = non_finite_model("pt2", request, tmp_path)  # also proves the edited archive is a loadable .pt2
    result = run_cli("inspect", model, "--json", "-")
    assert result.code == 0, result.stderr
    assert b'"format": "pt2"' in result.stdout


# --- a model larger than the memory available ----------------------------------------------------


@pytest.mark.parametrize("verb", ["quantize", "inspect"])
def test_model_larger_than_memory_is_refused_before_loading(verb: str, sample: dict[str, Path], out: Path) -> None:
    """The sample ONNX model (1.4 MB) needs ~3x its size; a machine with 2 MB available is simulated."""
    result = run_cli(*command(verb, sample["onnx"], "onnx", out), env={"EDGECLI_MEMORY_LIMIT_BYTES": "2000000"})
    line = assert_refused(result, 3, "MiB of memory, 1.91 MiB available", out)
    size = sample["onnx"].stat().st_size
    assert line.startswith(
        f"out of memory: {sample['onnx']} ({size:,} bytes, ~3x that while loaded and transformed) needs ~"
    )


def test_inf_is_refused_in_layer_weights_only(sample: dict[str, Path], tmp_path: Path) -> None:
    """-Inf has a use in a stored tensor (an attention mask added to scores); in a conv weight it is a fault."""
    import onnx
    from onnx import helper, numpy_helper

    from edgecli.analysis.model_stats import check_finite_weights
    from edgecli.core.errors import ModelReadError
    from edgecli.formats.model_file import ModelFile

    proto = onnx.load(str(sample["onnx"]))
    mask = np.zeros((1, 10), np.float32)
    mask[0, 0] = -np.inf  # class 0 never wins
    proto.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
    logits = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [name if name != logits else "unmasked" for name in node.output]
    proto.graph.node.append(helper.make_node("Add", ["unmasked", "mask"], [logits]))
    onnx.save(proto, str(tmp_path / "masked.onnx"))
    check_finite_weights(ModelFile.open(tmp_path / "masked.onnx"))  # accepted

    weight = next(t for t in proto.graph.initializer if t.name == "3.weight")
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = np.inf
    weight.CopyFrom(numpy_helper.from_array(values, "3.weight"))
    onnx.save(proto, str(tmp_path / "inf.onnx"))
    with pytest.raises(ModelReadError, match=r"tensor '3\.weight' holds 0 NaN and 1 Inf values"):
        check_finite_weights(ModelFile.open(tmp_path / "inf.onnx"))
