"""bench, memory: real peak-RSS measurements in a child process per model (Linux /proc figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgecli.core.errors import DataError, ModelReadError, TransformError, UsageError
from edgecli.stages.bench import memory as bench_memory
from edgecli.stages.bench.memory import measure_memory

MIB = 2**20
KEYS = {
    "baseline_mib", "load_peak_mib", "run_peak_mib", "peak_mib", "load_mib", "run_mib", "model_mib",
    "batch", "runs", "format", "method", "seconds",
}  # fmt: skip
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="figures from /proc/self/status")


def mlp_onnx(path: Path, width: int, hidden: int) -> int:
    """x[N,width] @ W0[width,hidden] @ W1[hidden,width]: an ONNX MLP; returns its weight bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape, dtype=np.float32) * 0.01 for shape in ((width, hidden), (hidden, width))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return sum(w.nbytes for w in weights)


def fc_tflite(path: Path, rows: int, cols: int, dynamic_batch: bool = True) -> int:
    """y[N,rows] = x[N,cols] @ W.T: one FULLY_CONNECTED op written with the LiteRT flatbuffer schema
    (no TensorFlow, no converter); returns its weight bytes."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    weight = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * 0.01

    def tensor(name: str, shape: tuple[int, int], buffer: int, batch_dim: bool) -> s.TensorT:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buffer
        if batch_dim and dynamic_batch:
            t.shapeSignature = [-1, shape[1]]
        return t

    weights = s.BufferT()
    weights.data = np.frombuffer(weight.tobytes(), np.uint8)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, -1], [2]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.FullyConnectedOptions, s.FullyConnectedOptionsT()
    subgraph = s.SubGraphT()
    subgraph.tensors = [
        tensor("x", (1, cols), 1, True),
        tensor("w", (rows, cols), 2, False),
        tensor("y", (1, rows), 3, True),
    ]
    subgraph.inputs, subgraph.outputs, subgraph.operators = [0], [2], [op]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model = s.ModelT()
    model.version, model.description = 3, "fc"
    model.buffers = [s.BufferT(), s.BufferT(), weights, s.BufferT()]
    model.operatorCodes, model.subgraphs = [code], [subgraph]
    builder = flatbuffers.Builder(weight.nbytes + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
    return weight.nbytes


def check_figures(report: dict, fmt: str, batch: int) -> None:
    assert set(report) == KEYS
    assert report["format"] == fmt and report["batch"] == batch and report["method"] == "VmHWM"
    assert 20 < report["baseline_mib"] < report["load_peak_mib"] <= report["peak_mib"]
    assert report["run_peak_mib"] <= report["peak_mib"] == max(report["load_peak_mib"], report["run_peak_mib"])
    assert report["load_mib"] == pytest.approx(report["load_peak_mib"] - report["baseline_mib"], abs=0.02)
    assert report["run_mib"] == pytest.approx(report["run_peak_mib"] - report["baseline_mib"], abs=0.02)
    assert report["load_mib"] > 0 and report["run_mib"] > 0


@pytest.fixture(scope="module")
def onnx_figures(sample: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    big = tmp_path_factory.mktemp("memory") / "mlp.onnx"
    weight_bytes = mlp_onnx(big, width=1024, hidden=8192)  # 64 MiB of float32 weights
    return {
        "small": measure_memory(sample["onnx"], threads=1, batch_size=8, runs=3),
        "big": measure_memory(big, threads=1, batch_size=8, runs=3),
        "extra_mib": (weight_bytes - sample["onnx"].stat().st_size) / MIB,  # the sample is ~all weights
    }


@linux_only
def test_onnx_memory_grows_with_the_weights(onnx_figures: dict) -> None:
    small, big, extra = onnx_figures["small"], onnx_figures["big"], onnx_figures["extra_mib"]
    check_figures(small, "onnx", 8)
    check_figures(big, "onnx", 8)
    assert abs(big["baseline_mib"] - small["baseline_mib"]) < 10  # the same runtime, imported alike
    assert big["load_mib"] - small["load_mib"] >= 0.8 * extra
    assert big["run_mib"] - small["run_mib"] >= 0.8 * extra  # the weights stay resident while running
    assert big["model_mib"] < small["model_mib"] + 4 * extra  # a sane upper bound, noise included
    assert small["seconds"] < 30 and big["seconds"] < 30


@linux_only
def test_parent_memory_does_not_leak_into_the_figure(sample: dict[str, Path], onnx_figures: dict) -> None:
    """ru_maxrss would report the parent's 400 MiB in the child (it survives exec); VmHWM does not."""
    ballast = np.ones(400 * MIB, dtype=np.uint8)  # touched pages: resident in this (parent) process
    report = measure_memory(sample["onnx"], threads=1, batch_size=8, runs=3)
    assert ballast.sum() == 400 * MIB
    assert report["peak_mib"] < 300
    assert report["baseline_mib"] == pytest.approx(onnx_figures["small"]["baseline_mib"], abs=10)


@linux_only
def test_tflite_memory_grows_with_the_weights(tmp_path: Path) -> None:
    small_bytes = fc_tflite(tmp_path / "small.tflite", 16, 16)
    big_bytes = fc_tflite(tmp_path / "big.tflite", 4096, 4096)  # 64 MiB of float32 weights
    small = measure_memory(tmp_path / "small.tflite", threads=1, batch_size=4, runs=3)
    big = measure_memory(tmp_path / "big.tflite", threads=1, batch_size=4, runs=3)
    check_figures(small, "tflite", 4)
    check_figures(big, "tflite", 4)
    assert big["load_mib"] - small["load_mib"] >= 0.8 * (big_bytes - small_bytes) / MIB


@linux_only
def test_tflite_with_a_fixed_batch_runs_one_sample(tmp_path: Path) -> None:
    fc_tflite(tmp_path / "fixed.tflite", 32, 32, dynamic_batch=False)
    check_figures(measure_memory(tmp_path / "fixed.tflite", threads=1, batch_size=8, runs=2), "tflite", 1)


@linux_only
def test_pt2_is_measured_above_the_torch_baseline(sample: dict[str, Path], onnx_figures: dict) -> None:
    report = measure_memory(sample["pt2"], threads=1, batch_size=8, runs=3)
    check_figures(report, "pt2", 8)
    assert report["baseline_mib"] > onnx_figures["small"]["baseline_mib"] + 50  # torch is in the baseline...
    assert report["model_mib"] < 150  # ...not in the model's figure (torch.export's lazy imports included)


@linux_only
def test_first_batch_of_the_data_is_fed(sample: dict[str, Path]) -> None:
    report = measure_memory(sample["onnx"], threads=1, batch_size=16, runs=2, data_path=sample["eval"])
    check_figures(report, "onnx", 16)


@linux_only
def test_synthetic_options_are_forwarded(tmp_path: Path) -> None:
    fc_tflite(tmp_path / "fc.tflite", 8, 8)
    check_figures(measure_memory(tmp_path / "fc.tflite", 1, 2, runs=1, synthetic={"seed": 7}), "tflite", 2)
    with pytest.raises(TransformError, match="unexpected keyword"):
        measure_memory(tmp_path / "fc.tflite", 1, 2, runs=1, synthetic={"no_such_option": 1})


def test_corrupt_model_is_a_model_read_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07" + bytes(range(256)) * 8)  # detected as ONNX, not loadable
    with pytest.raises(ModelReadError, match="onnxruntime cannot load .*corrupt.onnx"):
        measure_memory(corrupt, threads=1, batch_size=1)


def test_unknown_file_and_missing_file_are_model_read_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelReadError, match="not a model edgecli knows"):
        measure_memory(tmp_path / "notes.txt", threads=1, batch_size=1)
    with pytest.raises(ModelReadError, match="does not exist"):
        measure_memory(tmp_path / "missing.onnx", threads=1, batch_size=1)


def test_unusable_data_is_a_data_error(sample: dict[str, Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 5, 5), np.float32))
    with pytest.raises(DataError, match="shape"):
        measure_memory(sample["onnx"], threads=1, batch_size=2, data_path=tmp_path / "wrong.npz")


def test_bad_arguments_and_timeout(sample: dict[str, Path]) -> None:
    with pytest.raises(UsageError):
        measure_memory(sample["onnx"], threads=1, batch_size=0)
    with pytest.raises(TransformError, match="took more than"):
        measure_memory(sample["onnx"], threads=1, batch_size=1, timeout_s=0.05)


def test_child_report_parsing() -> None:
    noisy = 'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n{"load_mib": 1.5}\n'
    assert bench_memory._last_json(noisy) == {"load_mib": 1.5}
    assert bench_memory._last_json("Segmentation fault\n") is None
    error = bench_memory._error({"type": "DataError", "message": "bad data", "hint": "fix it"})
    assert isinstance(error, DataError) and error.line() == "cannot read data: bad data (fix it)"
    assert type(bench_memory._error({"type": "SystemExit", "message": "x"})) is TransformError  # only edgecli classes
    assert "SIGKILL (out of memory?)" in bench_memory._death(-9, "")
    assert bench_memory._death(1, "warning\nRuntimeError: boom\n").endswith("exited with code 1: RuntimeError: boom")
