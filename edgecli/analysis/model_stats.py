"""Static facts about a model file: parameter count, operator histogram, sparsity, MACs and compressed size."""

from __future__ import annotations

import gzip
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile


def gzip_bytes(data: bytes) -> int:
    """Compressed size: what an over-the-air update downloads (gzip -6, no timestamp)."""
    return len(gzip.compress(data, compresslevel=6, mtime=0))


def gzip_size(path: Path) -> int | None:
    """gzip_bytes of a model file; None for folders (a SavedModel)."""
    return None if path.is_dir() else gzip_bytes(path.read_bytes())


def param_count(model: ModelFile) -> int | None:
    """Number of stored weight values (constants), or None where it cannot be read cheaply."""
    if model.format is Format.ONNX:
        from edgecli.formats import onnx_file

        return onnx_param_count(onnx_file.load(model.path, check=False))
    if model.format is Format.PT2:
        from edgecli.formats import pt2_file

        program = pt2_file.load(model.path)
        return sum(t.numel() for t in program.state_dict.values())
    if model.format is Format.TFLITE:
        from edgecli.formats import tflite_file

        _, flat = tflite_file.load(model.path)
        graph = flat.Subgraphs(0)
        total = 0
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            buffer = flat.Buffers(tensor.Buffer()) if tensor.Buffer() < flat.BuffersLength() else None
            if buffer is not None and (buffer.DataLength() or buffer.Size()):
                total += prod(tensor.ShapeAsNumpy()) if tensor.ShapeLength() else 1
        return int(total)
    if model.format is Format.KERAS:
        return keras_param_count(model.path)
    return None


# Top-level groups of a .keras archive's model.weights.h5 that are training state, not the model's.
KERAS_TRAINING_GROUPS = ("optimizer", "metrics", "compile_metrics")


def keras_param_count(path: Path) -> int | None:
    """Every variable of a Keras 3 .keras archive (trainable and not: Keras's count_params), read from
    its model.weights.h5 with h5py (of a legacy .h5: its model_weights group), without building the
    model (no layer code runs); the optimizer's slots are not counted. None without weights."""
    import io
    import zipfile

    import h5py

    from edgecli.formats.detect import HDF5_MAGIC

    total = 0

    def count(name: str, item: Any) -> None:
        nonlocal total
        if isinstance(item, h5py.Dataset) and name.split("/", 1)[0] not in KERAS_TRAINING_GROUPS:
            total += int(item.size)

    with path.open("rb") as handle:
        legacy = handle.read(8) == HDF5_MAGIC
    if legacy:  # Keras 2 .h5: the variables under model_weights/ (optimizer_weights/ beside it)
        with h5py.File(path, "r") as stored:
            if "model_weights" not in stored:
                return None
            stored["model_weights"].visititems(count)
        return total
    with zipfile.ZipFile(path) as archive:
        if "model.weights.h5" not in archive.namelist():
            return None
        weights = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(weights), "r") as stored:
        stored.visititems(count)
    return total


# ---------------------------------------------------------------- ONNX stored tensors
# Weights sit in initializers, but also in Constant nodes (Paddle exports keep nearly all their weights
# there) and inside the subgraphs of If / Loop / Scan nodes (silero-vad's whole network is in If
# branches): every graph and every Constant node is read.

# Constant-node tensors of these types are shape, index and mask constants, not weights.
ONNX_INDEX_TYPES = (6, 7, 9, 12, 13)  # INT32, INT64, BOOL, UINT32, UINT64 (onnx.TensorProto codes)


def onnx_graphs(graph: Any) -> Iterator[Any]:
    """`graph` and, depth first, every subgraph held by a node attribute (If branches, Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from onnx_graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from onnx_graphs(subgraph)


def onnx_constant_tensors(graph: Any) -> Iterator[Any]:
    """The TensorProto of every Constant node (its `value` attribute) in `graph` and its subgraphs."""
    for sub in onnx_graphs(graph):
        for node in sub.node:
            if node.op_type == "Constant" and not node.domain:
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.HasField("t"):
                        yield attribute.t


def onnx_stored_tensors(graph: Any) -> Iterator[Any]:
    """Every initializer (of every graph) and every Constant node's tensor."""
    for sub in onnx_graphs(graph):
        yield from sub.initializer
    yield from onnx_constant_tensors(graph)


def onnx_param_count(proto: Any) -> int:
    """Values stored in initializers (every graph, as before: all types) and in Constant nodes (not
    shape/index constants: integer and bool Constant tensors are left out)."""
    total = sum(prod(t.dims) for sub in onnx_graphs(proto.graph) for t in sub.initializer)
    return int(
        total + sum(prod(t.dims) for t in onnx_constant_tensors(proto.graph) if t.data_type not in ONNX_INDEX_TYPES)
    )


def op_histogram(model: ModelFile) -> dict[str, int]:
    """Operator type -> count (ONNX node types, TFLite builtin ops, aten ops of a .pt2 graph)."""
    if model.format is Format.ONNX:
        from edgecli.formats import onnx_file

        proto = onnx_file.load(model.path, check=False)  # subgraph nodes (If/Loop/Scan bodies) included
        return dict(Counter(n.op_type for sub in onnx_graphs(proto.graph) for n in sub.node).most_common())
    if model.format is Format.PT2:
        from edgecli.formats import pt2_file

        program = pt2_file.load(model.path)
        ops = Counter(
            str(n.target).split(".")[1] if "." in str(n.target) else str(n.target)
            for n in program.graph.nodes
            if n.op == "call_function"
        )
        return dict(ops.most_common())
    if model.format is Format.TFLITE:
        from edgecli.formats import tflite_file

        _, flat = tflite_file.load(model.path)
        names = tflite_file.op_names(flat)
        graph = flat.Subgraphs(0)
        ops = Counter(names[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength()))
        return dict(ops.most_common())
    return {}


# ---------------------------------------------------------------- sparsity

WEIGHT_MIN_RANK = 2  # conv kernels, dense matrices, embeddings; biases, norms and shape constants are not weights


def weight_arrays(model: ModelFile) -> list[np.ndarray] | None:
    """The stored weight tensors (constants of rank >= 2) as arrays, or None where they cannot be read.
    Quantized weights are read as stored (int8): with symmetric quantization a zero stays a zero."""
    if model.format is Format.ONNX:
        return _onnx_weights(model)
    if model.format is Format.PT2:
        return _pt2_weights(model)
    if model.format is Format.TFLITE:
        return _tflite_weights(model)
    return None


def _onnx_weights(model: ModelFile) -> list[np.ndarray]:
    from onnx import numpy_helper

    from edgecli.formats import onnx_file

    proto = onnx_file.load(model.path, check=False)
    return [numpy_helper.to_array(t) for t in onnx_stored_tensors(proto.graph) if len(t.dims) >= WEIGHT_MIN_RANK]


def _pt2_weights(model: ModelFile) -> list[np.ndarray]:
    from edgecli.formats import pt2_file

    program = pt2_file.load(model.path)
    tensors = [*program.state_dict.values(), *program.constants.values()]
    return [t.detach().cpu().numpy() for t in tensors if hasattr(t, "dim") and t.dim() >= WEIGHT_MIN_RANK]


def _tflite_numpy_types() -> dict[int, np.dtype]:
    from ai_edge_litert import schema_py_generated as schema

    names = {
        "FLOAT32": np.float32,
        "FLOAT16": np.float16,
        "FLOAT64": np.float64,
        "INT8": np.int8,
        "UINT8": np.uint8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "BOOL": np.bool_,
    }
    return {
        getattr(schema.TensorType, name): np.dtype(dtype)
        for name, dtype in names.items()
        if hasattr(schema.TensorType, name)
    }


def _tflite_buffer_bytes(raw: bytes, flat: Any, index: int) -> bytes:
    """A buffer's bytes: inline in the flatbuffer, or at an offset after it (models over 2 GB)."""
    buffer = flat.Buffers(index)
    if buffer.DataLength():
        return buffer.DataAsNumpy().tobytes()
    if buffer.Offset() > 1 and buffer.Size():
        return raw[buffer.Offset() : buffer.Offset() + buffer.Size()]
    return b""


def _tflite_weights(model: ModelFile) -> list[np.ndarray]:
    from edgecli.formats import tflite_file

    raw, flat = tflite_file.load(model.path)
    return [array for _, array in _tflite_constants(raw, flat, WEIGHT_MIN_RANK).values()]


def _tflite_constants(raw: bytes, flat: Any, min_rank: int) -> dict[int, tuple[str, np.ndarray]]:
    """Tensor index -> (name, values) of the main subgraph's constant tensors of rank >= min_rank."""
    graph = flat.Subgraphs(0)
    types = _tflite_numpy_types()
    arrays = {}
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        if tensor.ShapeLength() < min_rank or tensor.Type() not in types or tensor.Buffer() >= flat.BuffersLength():
            continue
        data = _tflite_buffer_bytes(raw, flat, tensor.Buffer())
        dtype = types[tensor.Type()]
        if data and len(data) == prod(tensor.ShapeAsNumpy()) * dtype.itemsize:
            arrays[i] = ((tensor.Name() or b"").decode("utf-8", "replace"), np.frombuffer(data, dtype=dtype))
    return arrays


def sparsity(model: ModelFile) -> float | None:
    """Fraction of exactly-zero values over the weight tensors; None where the weights cannot be read."""
    arrays = weight_arrays(model)
    if arrays is None:
        return None
    total = sum(a.size for a in arrays)
    if not total:
        return None
    return sum(int(np.count_nonzero(a == 0)) for a in arrays) / total


def weight_state(model: ModelFile) -> dict[str, Any] | None:
    """What later steps must keep: the fraction of zero weights and the dtype most weight values are
    stored in (int8 after quantization); None where the weights cannot be read."""
    arrays = weight_arrays(model)
    if arrays is None:
        return None
    total = sum(a.size for a in arrays)
    if not total:
        return None
    by_dtype: dict[str, int] = {}
    for array in arrays:
        by_dtype[array.dtype.name] = by_dtype.get(array.dtype.name, 0) + array.size
    return {
        "weight_sparsity": round(sum(int(np.count_nonzero(a == 0)) for a in arrays) / total, 4),
        "weight_dtype": max(sorted(by_dtype), key=by_dtype.__getitem__),
    }


# ---------------------------------------------------------------- NaN / Inf weights
# NaN has no use in a stored tensor; -Inf has (attention masks), so Inf is refused only in layer
# weights: trainable parameters, or the weight and bias inputs of conv, dense and matmul ops.

Tensor = tuple[str, np.ndarray, bool]  # (name, values, is a layer weight)
ONNX_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# torch.export's serialized ScalarType codes (torch/_export/serde/schema.py) of the float types
PT2_FLOAT_TYPES: dict[int, DTypeLike] = {6: np.float16, 7: np.float32, 8: np.float64, 13: "bfloat16"}


def _pt2_floats(path: Any) -> list[Tensor] | None:
    """A .pt2's float tensors (state_dict and constants) read from the archive without torch: the raw
    storage of each; None for an archive laid out another way."""
    import json
    import zipfile

    from edgecli.core.errors import ModelReadError

    found: list[Tensor] = []
    part = ""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            configs = sorted(n for n in names if n.endswith(("_weights_config.json", "_constants_config.json")))
            for config_name in configs:
                part = f"{config_name.split('/', 1)[-1]}: "
                folder = config_name.rsplit("/", 1)[0]
                for fqn, meta in json.loads(archive.read(config_name)).get("config", {}).items():
                    tensor_meta = meta.get("tensor_meta")
                    dtype = PT2_FLOAT_TYPES.get(tensor_meta.get("dtype")) if tensor_meta else None
                    member = f"{folder}/{meta.get('path_name')}"
                    if dtype is None or meta.get("use_pickle") or member not in names:
                        continue
                    raw = archive.read(member)
                    if dtype == "bfloat16":  # the upper half of a float32
                        values = (np.frombuffer(raw[: len(raw) // 2 * 2], np.uint16).astype(np.uint32) << 16).view(
                            np.float32
                        )
                    else:
                        values = np.frombuffer(
                            raw[: len(raw) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize], dtype
                        )
                    found.append((fqn, values, bool(meta.get("is_param"))))
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        EOFError,
        AttributeError,
        TypeError,
    ) as exc:  # a damaged member, bad JSON
        raise ModelReadError(f"{path} is a damaged .pt2 archive ({part}{str(exc)[:160]})") from None
    return found if configs else None


def stored_floats(model: ModelFile) -> list[Tensor] | None:
    """Every stored float tensor of the model, or None where they cannot be read cheaply (Keras,
    SavedModel, ORT)."""
    if model.format is Format.ONNX:
        from onnx import numpy_helper

        from edgecli.formats import onnx_file

        graph = onnx_file.load(model.path, check=False).graph
        weights = {n.input[i] for n in graph.node if n.op_type in ONNX_WEIGHT_OPS for i in (1, 2) if i < len(n.input)}
        arrays = ((t.name, numpy_helper.to_array(t)) for t in graph.initializer)
        return [(name, array, name in weights) for name, array in arrays if array.dtype.kind == "f"]
    if model.format is Format.PT2:
        found = _pt2_floats(model.path)
        if found is None:
            from edgecli.formats import pt2_file

            program = pt2_file.load(model.path)
            params = set(program.graph_signature.parameters)
            tensors = {**program.state_dict, **program.constants}
            found = [
                (k, t.detach().float().numpy(), k in params)
                for k, t in tensors.items()
                if hasattr(t, "is_floating_point") and t.is_floating_point()
            ]
        return found
    if model.format is Format.TFLITE:
        from edgecli.formats import tflite_file

        raw, flat = tflite_file.load(model.path)
        graph = flat.Subgraphs(0)
        names = tflite_file.op_names(flat)
        ops = [graph.Operators(o) for o in range(graph.OperatorsLength())]
        weights = {
            int(i)
            for op in ops
            if op.OpcodeIndex() < len(names) and names[op.OpcodeIndex()] in TFLITE_MAC_OPS
            for i in op.InputsAsNumpy()[1:]
        }
        return [
            (name, array, index in weights)
            for index, (name, array) in _tflite_constants(raw, flat, 0).items()
            if array.dtype.kind == "f"
        ]
    return None


def non_finite(tensors: Iterable[Tensor]) -> str | None:
    """ "tensor 'x' holds 3 NaN and 1 Inf values" for the first tensor with a NaN (or, in a layer
    weight, an Inf); None if there is none."""
    bad = [
        (name, int(np.isnan(a).sum()), int(np.isinf(a).sum()))
        for name, a, weight in tensors
        if np.isnan(a).any() or (weight and np.isinf(a).any())
    ]
    if not bad:
        return None
    name, nans, infs = bad[0]
    return f"tensor '{name}' holds {nans} NaN and {infs} Inf values" + (
        f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    )


def refuse_non_finite(path: Any, tensors: Iterable[Tensor]) -> None:
    """Refuse NaN/Inf weights (a diverged training run): every output would be NaN, and calibrating,
    pruning or checking parity on them means nothing. Raises ModelReadError."""
    from edgecli.core.errors import ModelReadError

    found = non_finite(tensors)
    if found:
        raise ModelReadError(
            f"{path} has non-finite weights: {found}",
            hint="export the model again from a checkpoint taken before training diverged",
        )


def check_finite_weights(model: ModelFile) -> None:
    """refuse_non_finite on the model's stored float tensors (where they can be read cheaply)."""
    refuse_non_finite(model.path, stored_floats(model) or [])


# ---------------------------------------------------------------- MACs


def macs(model: ModelFile, inputs: dict[str, np.ndarray]) -> int | None:
    """Multiply-accumulates of one run on `inputs` (feeds in the model's own layout, batch 1 for a
    per-sample figure), or None where they cannot be computed. Counted: convolutions (incl. grouped,
    depthwise, transposed), dense layers and matrix products; elementwise ops, pooling and norms are not.
    Recurrent layers (LSTM, GRU, RNN) count every gate's input and hidden products at every step.
    ONNX: from shape inference, else (shapes that only a run knows: Paddle exports, If subgraphs)
    from the shapes of one profiled onnxruntime run; .pt2: torch's FlopCounterMode on a run
    (FLOPs / 2) plus the recurrent ops it does not see; TFLite: from the tensor shapes stored in the
    file (dynamic dimensions as stored, i.e. 1)."""
    try:
        if model.format is Format.ONNX:
            from edgecli.formats import onnx_file

            proto = onnx_file.load(model.path, check=False)
            found = onnx_macs(proto, {k: v.shape for k, v in inputs.items()})
            return found if found is not None else onnx_run_macs(model.path, proto, inputs)
        if model.format is Format.PT2:
            return pt2_macs(model, inputs)
        if model.format is Format.TFLITE:
            return tflite_macs(model)
    except (
        ValueError,
        RuntimeError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ):  # a construct not followed: not computable
        return None
    return None


def _onnx_shapes(graph: Any) -> dict[str, tuple[int, ...] | None]:
    """Every tensor's shape in `graph` (not its subgraphs) after shape inference (None where any
    dimension is unknown)."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            known = [d for d in dims if d is not None]
            shapes[info.name] = tuple(known) if len(known) == len(dims) else None
    shapes.update({t.name: tuple(t.dims) for t in graph.initializer})
    return shapes


def _attribute(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _conv_macs(out: tuple, weight: tuple) -> int:
    """Each output value: Cin/groups x kernel MACs (weight [Cout, Cin/groups, k...])."""
    return prod(out) * prod(weight[1:])


def _matmul_macs(out: tuple, a: tuple, transposed: bool = False) -> int:
    """Each output value: K MACs, K the inner dimension of A."""
    return prod(out) * (a[-2] if transposed and len(a) >= 2 else a[-1])


def _onnx_node_macs(node: Any, shapes: dict[str, tuple[int, ...] | None]) -> int | None:
    """MACs of one ONNX node (0 for ops that are not counted); None if a needed shape is unknown."""

    def shape(index: int, outputs: bool = False) -> tuple[int, ...] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[index]) if index < len(names) else None

    kind = node.op_type
    weight_index = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}.get(kind)
    if weight_index is not None:
        out, weight = shape(0, outputs=True), shape(weight_index)
        return None if out is None or weight is None else _conv_macs(out, weight)
    if kind == "ConvTranspose":
        x, weight = shape(0), shape(1)  # each input value meets Cout/groups x kernel weights
        return None if x is None or weight is None else prod(x) * prod(weight[1:])
    if kind in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
        out, a = shape(0, outputs=True), shape(0)
        transposed = kind == "Gemm" and bool(_attribute(node, "transA", 0))
        return None if out is None or a is None else _matmul_macs(out, a, transposed)
    if kind in RECURRENT_OPS:
        x, w, r = shape(0), shape(1), shape(2)
        return None if x is None or w is None or r is None else recurrent_macs(x[:2], [w, r])
    return 0


# Recurrent layers: each step of each sequence multiplies the input by W and the hidden state by R
# (every gate, every direction): ONNX W [dirs, gates x hidden, input], R [dirs, gates x hidden, hidden];
# torch weight_ih_l{k} [gates x hidden, input_k], weight_hh_l{k} [gates x hidden, hidden] (and weight_hr).
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def recurrent_macs(steps: tuple[int, ...], weights: list[tuple[int, ...]]) -> int:
    """MACs of a recurrent layer: (sequence length x batch) steps, each one product with every weight
    matrix (for an LSTM: 4 gates x (input + hidden) x hidden per direction and layer)."""
    return prod(steps) * sum(prod(w) for w in weights)


def topological_nodes(nodes: list[Any]) -> list[Any]:
    """The nodes in an order where each comes after the producers of its inputs (shape inference
    needs it; converters such as onnxconverter-common's float16 append Cast nodes at the end)."""
    produced_by = {name: index for index, node in enumerate(nodes) for name in node.output}
    waiting = [{produced_by[name] for name in node.input if name in produced_by} for node in nodes]
    consumers: dict[int, list[int]] = {}
    for index, producers in enumerate(waiting):
        for producer in producers:
            consumers.setdefault(producer, []).append(index)
    ready = deque(index for index, producers in enumerate(waiting) if not producers)
    ordered = []
    while ready:
        index = ready.popleft()
        ordered.append(index)
        for consumer in consumers.get(index, []):
            waiting[consumer].discard(index)
            if not waiting[consumer]:
                ready.append(consumer)
    return [nodes[i] for i in ordered] if len(ordered) == len(nodes) else list(nodes)  # a cycle: as stored


def onnx_macs(proto: Any, input_shapes: dict[str, tuple[int, ...]]) -> int | None:
    """MACs of the main graph with its inputs fixed to `input_shapes` (shape inference with data
    propagation); None when a counted node's shapes stay unknown."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for graph_input in fixed.graph.input:
        if graph_input.name in input_shapes:
            dims = graph_input.type.tensor_type.shape.dim
            for dim, value in zip(dims, input_shapes[graph_input.name]):
                dim.Clear()
                dim.dim_value = int(value)
    for index, sub in enumerate(onnx_graphs(fixed.graph)):
        del sub.value_info[:]  # stored shapes keep symbolic dimensions (and win over inferred ones)
        ordered = topological_nodes(list(sub.node))
        del sub.node[:]
        sub.node.extend(ordered)
        if index == 0:
            for graph_output in sub.output:
                graph_output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return None
    return _graph_macs(inferred.graph, {})


INLINED_PREFIX = re.compile(r"^.*__Inline_\d+__")  # onnxruntime's name for a node of an inlined If branch


def onnx_run_macs(path: Path, proto: Any, inputs: dict[str, np.ndarray]) -> int | None:
    """MACs of one onnxruntime run on `inputs`, from the shapes every executed node saw (session
    profiling, graph optimizations off so that nodes keep their kind): exact where static shape
    inference gives up, and an If counts the branch that ran. None when the run fails."""
    import json
    import tempfile

    import onnx
    import onnxruntime as ort

    named = proto
    if any(not node.name for sub in onnx_graphs(proto.graph) for node in sub.node):
        named = onnx.ModelProto()
        named.CopyFrom(proto)
        for index, node in enumerate(node for sub in onnx_graphs(named.graph) for node in sub.node):
            node.name = node.name or f"edgecli_node_{index}_{node.op_type}"
    nodes = {node.name: node for sub in onnx_graphs(named.graph) for node in sub.node}
    stored = {t.name: tuple(t.dims) for sub in onnx_graphs(named.graph) for t in sub.initializer}
    with tempfile.TemporaryDirectory(prefix="edgecli-macs-") as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "run")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        try:
            source = str(path) if named is proto else named.SerializeToString()
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            session.run(None, inputs)
        except Exception:  # onnxruntime's own error types: not computable
            return None
        events = json.loads(Path(session.end_profiling()).read_text())
    total = 0
    for event in events:
        args = event.get("args") or {}
        name = str(event.get("name", "")).removesuffix("_kernel_time")
        node = nodes.get(name) or nodes.get(INLINED_PREFIX.sub("", name))
        if event.get("cat") != "Node" or node is None:
            continue
        # the profile lists the shapes of the inputs that are not initializers, in order
        fed = iter(tuple(next(iter(item.values()))) for item in args.get("input_type_shape", []))
        shapes: dict[str, tuple[int, ...] | None] = {
            name: stored[name] if name in stored else next(fed, None) for name in node.input if name
        }
        outs = [tuple(next(iter(item.values()))) for item in args.get("output_type_shape", [])]
        shapes.update({name: shape for name, shape in zip([n for n in node.output if n], outs)})
        total += _onnx_node_macs(node, shapes) or 0
    return int(total)


def _graph_macs(graph: Any, outer: dict[str, tuple[int, ...] | None]) -> int | None:
    """MACs of one graph, its subgraphs included: an If counts its costlier branch (which one runs
    depends on the data); a Loop or Scan whose body does counted work is not computable (None)."""
    shapes = {**outer, **_onnx_shapes(graph)}
    total = 0
    for node in graph.node:
        bodies = [a.g for a in node.attribute if a.HasField("g")]
        if bodies:
            counts = [_graph_macs(body, shapes) for body in bodies]
            if any(count is None for count in counts):
                return None
            known = [int(count or 0) for count in counts]
            if node.op_type != "If" and any(known):
                return None  # the trip count is data: not computable
            total += max(known)
            continue
        count = _onnx_node_macs(node, shapes)
        if count is None:
            return None
        total += count
    return int(total)


def pt2_macs(model: ModelFile, inputs: dict[str, np.ndarray]) -> int:
    """MACs of one run of the .pt2 module on `inputs`: torch's FlopCounterMode FLOPs / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgecli.formats import pt2_file

    program = pt2_file.load(model.path)
    args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in program.graph_signature.user_inputs]
    recurrent = _recurrent_counter(program.module())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        recurrent.run(*args)
    return int(counter.get_total_flops()) // 2 + recurrent.macs


# aten recurrent ops: (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
PT2_RECURRENT_OPS = ("aten.lstm.input", "aten.gru.input", "aten.rnn_tanh.input", "aten.rnn_relu.input")


def _recurrent_counter_class() -> type:
    import torch.fx

    class RecurrentCounter(torch.fx.Interpreter):
        """Runs the graph node by node and adds the MACs of recurrent ops, which FlopCounterMode does
        not see (the CPU kernels run below the dispatcher): steps x every weight matrix."""

        macs = 0

        def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
            if str(target) in PT2_RECURRENT_OPS and len(args) >= 3:
                x, params = args[0], args[2]
                steps = tuple(x.shape[:2]) if x.dim() == 3 else tuple(x.shape[:1])  # unbatched: [T, I]
                matrices = [tuple(p.shape) for p in params if hasattr(p, "dim") and p.dim() == 2]
                self.macs += recurrent_macs(steps, matrices)
            return super().call_function(target, args, kwargs)

    return RecurrentCounter


def _recurrent_counter(module: Any) -> Any:  # a class built on first use: torch imported lazily
    return _recurrent_counter_class()(module)


TFLITE_MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")


def _tflite_op_macs(name: str, op: Any, shape: Any) -> int:
    """MACs of one TFLite operator from its tensors' shapes (0 for ops that are not counted)."""
    if name not in TFLITE_MAC_OPS:
        return 0
    inputs, out = op.InputsAsNumpy(), shape(op.OutputsAsNumpy()[0])
    if name == "CONV_2D":  # filter [Cout, kh, kw, Cin/groups]
        return prod(out) * prod(shape(inputs[1])[1:])
    if name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, Cout]
        kernel = shape(inputs[1])
        return prod(out) * kernel[1] * kernel[2]
    if name == "CONV_3D":  # filter [kd, kh, kw, Cin, Cout]
        return prod(out) * prod(shape(inputs[1])[:4])
    if name == "FULLY_CONNECTED":  # weights [units, K]
        return prod(out) * shape(inputs[1])[-1]
    if name == "BATCH_MATMUL":
        from ai_edge_litert import schema_py_generated as schema

        options = schema.BatchMatMulOptions()
        table = op.BuiltinOptions()
        adjoint = False
        if table is not None:
            options.Init(table.Bytes, table.Pos)
            adjoint = bool(options.AdjX())
        return _matmul_macs(out, shape(inputs[0]), adjoint)
    if name == "TRANSPOSE_CONV":  # inputs: output shape, filter [Cout, kh, kw, Cin], input [N, H, W, Cin]
        return prod(shape(inputs[2])) * prod(shape(inputs[1])[:3])
    return 0


def tflite_macs(model: ModelFile) -> int:
    """MACs of the main subgraph from the tensor shapes stored in the flatbuffer."""
    from edgecli.formats import tflite_file

    _, flat = tflite_file.load(model.path)
    names = tflite_file.op_names(flat)
    graph = flat.Subgraphs(0)

    def shape(index: int) -> tuple[int, ...]:
        stored = graph.Tensors(int(index)).ShapeAsNumpy()
        return tuple(int(d) for d in stored) if not isinstance(stored, int) else ()

    total = 0
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        total += _tflite_op_macs(names[op.OpcodeIndex()], op, shape)
    return int(total)
