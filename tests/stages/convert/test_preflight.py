"""convert pre-flight: ops the target cannot express stop the conversion in seconds, each named on its own line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecli.backends.op_support import (
    TFLM_MISSING_BUILTINS,
    dynamic_shape_warnings,
    micro_problems,
    onnx2tf_handlers,
    onnx2tf_problems,
    ort_problems,
    tflite_findings,
)
from edgecli.backends.tflite_convert import onnx2tf_output
from edgecli.core.errors import TransformError
from edgecli.formats import onnx_file
from tests.conftest import leftovers, run_cli


def _model(nodes: list, inputs: list, initializers: list = (), domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [output], list(initializers))
    opsets = [helper.make_opsetid("", 18)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def _input(shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)


def castlike_model() -> onnx.ModelProto:
    """x -> CastLike(float16) -> Cast(float) -> Relu: runs in onnxruntime, onnx2tf has no CastLike."""
    like = numpy_helper.from_array(np.zeros(1, np.float16), "like")
    nodes = [
        helper.make_node("CastLike", ["x", "like"], ["half"], name="to_half"),
        helper.make_node("Cast", ["half"], ["back"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Relu", ["back"], ["y"], name="relu"),
    ]
    return _model(nodes, [_input([1, 8])], [like])


def castlike_and_custom_model() -> onnx.ModelProto:
    """CastLike plus an op of a custom domain (com.example::Scale)."""
    like = numpy_helper.from_array(np.zeros(1, np.float16), "like")
    nodes = [
        helper.make_node("CastLike", ["x", "like"], ["half"], name="to_half"),
        helper.make_node("Cast", ["half"], ["back"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Scale", ["back"], ["y"], name="scale", domain="com.example"),
    ]
    return _model(nodes, [_input([1, 8])], [like], domains=("com.example",))


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def test_onnx2tf_handlers_come_from_its_ops_folder():
    handlers = onnx2tf_handlers()
    assert {"Conv", "Relu", "Gemm", "MaxPool"} <= handlers
    assert "CastLike" not in handlers


def test_op_onnx2tf_cannot_convert_fails_fast_naming_it(tmp_path):
    source = _save(castlike_model(), tmp_path / "castlike.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])  # the parent itself runs
    assert session.run(None, {"x": np.ones((1, 8), np.float32)})[0].shape == (1, 8)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", source, "-r", "tflite", "-o", out / "castlike.tflite")
    assert result.code == 4, result.stderr
    assert result.lines[-1] == (
        "transformation failed: castlike.onnx -> tflite: op CastLike (node 'to_half'): "
        "onnx2tf has no converter for CastLike (no onnx2tf/ops/CastLike.py)"
    )
    assert leftovers(out) == []


def test_every_problem_gets_its_own_line(tmp_path):
    source = _save(castlike_and_custom_model(), tmp_path / "two.onnx")
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", source, "-r", "tflite", "-o", out / "two.tflite")
    assert result.code == 4, result.stderr
    assert result.lines[-3:] == [
        "transformation failed: two.onnx -> tflite: 2 problems, nothing was converted:",
        "  - op CastLike (node 'to_half'): onnx2tf has no converter for CastLike (no onnx2tf/ops/CastLike.py)",
        "  - op com.example::Scale (node 'scale'): custom domain 'com.example': onnx2tf converts standard ONNX ops only",
    ]
    assert leftovers(out) == []


def test_ort_target_names_the_op_onnxruntime_cannot_run(tmp_path):
    source = _save(castlike_and_custom_model(), tmp_path / "custom.onnx")
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", source, "-r", "ort-mobile", "-o", out / "custom.ort")
    assert result.code == 4, result.stderr
    assert result.lines[-1].startswith("transformation failed: custom.onnx -> ort: op com.example::Scale: ")
    assert leftovers(out) == []


def test_ort_missing_kernel_is_turned_into_the_op_name():
    # Relu on int16 is valid ONNX; onnxruntime expands it to Max, which has no int16 CPU kernel
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu16")]
    x = helper.make_tensor_value_info("x", TensorProto.INT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT16, [1, 4])
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    [problem] = ort_problems(proto.SerializeToString())
    assert re.match(r"op Max \(opset 13, .*\): onnxruntime \S+ has no CPU kernel for it", problem), problem
    assert ort_problems(castlike_model().SerializeToString()) == []


def test_pt2_path_is_checked_after_export_before_onnx2tf(tmp_path):
    # .pt2 models reach onnx2tf through onnx2tf_output; it refuses before importing onnx2tf (TensorFlow)
    source = _save(castlike_model(), tmp_path / "model.onnx")
    with (
        pytest.raises(TransformError, match=r"op CastLike \(node 'to_half'\): onnx2tf has no converter"),
        onnx2tf_output(source),
    ):
        pass
    # in a fresh interpreter: the refusal comes before onnx2tf or TensorFlow is imported
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edgecli.backends.tflite_convert import onnx2tf_output\n"
        "from edgecli.core.errors import TransformError\n"
        "try:\n"
        f"    with onnx2tf_output(Path({str(source)!r})):\n"
        "        pass\n"
        "except TransformError:\n"
        "    print(sorted(m for m in ('onnx2tf', 'tensorflow') if m in sys.modules))\n"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]", imported.stderr


def test_pt2_export_failure_names_the_op(tmp_path):
    import torch

    from edgecli.formats import pt2_file

    class RunningMax(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cummax(x, 1)[0] + 1

    program = torch.export.export(RunningMax(), (torch.randn(2, 4),))
    source = tmp_path / "cummax.pt2"
    source.write_bytes(pt2_file.to_bytes(program, None))
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", source, "-r", "onnx", "-o", out / "cummax.onnx")
    assert result.code == 4, result.stderr
    assert (
        f"torch.onnx could not export {source}: no ONNX translation for aten.cummax.default (graph node %cummax)"
        in result.lines[-1]
    )
    assert "Refer to the full stack trace" not in result.stderr
    assert leftovers(out) == []


def test_dynamic_dims_other_than_batch_warn_one_line_per_input():
    nodes = [
        helper.make_node("Add", ["x", "z"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 8, 8])
    warnings = dynamic_shape_warnings(_model(nodes, [x, z]))
    assert warnings == [
        "TFLite delegates (GPU/NNAPI/NPU) need static shapes: input 'x' dim 2 'height', dim 3 'width' are dynamic",
        "fix dynamic shapes before converting: python -m onnxruntime.tools.make_dynamic_shape_fixed "
        "--dim_param height --dim_value N MODEL OUT (once per dim_param)",
    ]


def test_dynamic_shapes_are_warned_on_the_cli_with_the_problems(tmp_path):
    proto = castlike_model()
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
    source = _save(proto, tmp_path / "seq.onnx")
    result = run_cli("convert", source, "-r", "tflite", "-o", tmp_path / "seq.tflite")
    assert result.code == 4
    assert (
        result.lines[0]
        == "warning: TFLite delegates (GPU/NNAPI/NPU) need static shapes: input 'x' dim 1 'seq' is dynamic"
    )


def test_tflite_micro_flags_builtins_tflm_has_no_kernel_for():
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="top2"),
        helper.make_node("Relu", ["values"], ["y"], name="relu"),
    ]
    proto = _model(nodes, [_input([1, 8])], [k])
    assert micro_problems(proto) == [
        "op TopK (node 'top2'): becomes TFLite TOPK_V2, which TensorFlow Lite Micro has no kernel for"
    ]
    assert tflite_findings(proto, micro=False).problems == []  # LiteRT runs TOPK_V2


def test_constant_folded_ops_are_not_flagged():
    # Range over a static input's shape: onnxsim folds it to a constant before onnx2tf runs
    scalars = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in ((0, "zero"), (1, "one"), (-1, "last"))]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "last"], ["size"], name="size", axis=0),
        helper.make_node("Range", ["zero", "size", "one"], ["positions"], name="range"),
        helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Add", ["x", "positions_f"], ["y"], name="add"),
    ]
    assert micro_problems(_model(nodes, [_input([1, 8])], scalars)) == []
    dynamic = _model(nodes, [_input([1, "n"])], scalars)
    assert micro_problems(dynamic) == [
        "op Range (node 'range'): becomes TFLite RANGE, which TensorFlow Lite Micro has no kernel for"
    ]


def test_tflm_table_matches_the_installed_tflite_micro():
    """Every builtin the table calls missing has no Register_<BUILTIN> in the tflite-micro runtime."""
    import tflite_micro as package

    runtime = next(Path(package.__file__).parent.rglob("_runtime*.so"))
    symbols = set(re.findall(rb"Register_([A-Z0-9_]+)Ev", runtime.read_bytes()))
    assert {b"CONV_2D", b"FULLY_CONNECTED", b"SOFTMAX"} <= symbols  # the scan sees registered kernels
    assert not {name.encode() for name in TFLM_MISSING_BUILTINS.values()} & symbols


def test_sample_model_passes_clean(sample):
    proto = onnx_file.load(sample["onnx"])
    findings = tflite_findings(proto, micro=True)
    assert findings.problems == [] and findings.warnings == []
    assert onnx2tf_problems(proto) == []
    assert ort_problems(sample["onnx"]) == []
