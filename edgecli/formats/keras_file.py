"""Keras 3 `.keras` archives (and legacy Keras 2 `.h5` models) and TensorFlow SavedModel folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from edgecli.core.errors import BackendMissing, ModelReadError, last_line, one_line
from edgecli.formats.files import TempFolder, utf8_path

TRUST_HINT = "pass --trust-pickle if you trust this file"


def import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError:
        raise BackendMissing("Keras/TFLite support needs TensorFlow", hint="pip install 'edgecli[tflite]'") from None
    return tf


def load_keras(path: Path) -> Any:
    """A Keras model, loaded with safe_mode (no arbitrary code from Lambda layers) unless --trust-pickle."""
    from edgecli.core.security import trust_pickle

    import_tensorflow()
    import keras

    from edgecli.formats.detect import HDF5_MAGIC

    with path.open("rb") as handle:
        legacy = handle.read(8) == HDF5_MAGIC  # a Keras 2 .h5 (Keras 3 reads it, safe_mode included)
    suffixes = (".h5", ".hdf5") if legacy else (".keras",)
    with TempFolder(prefix="edgecli-keras-") as folder:
        source = path
        if path.suffix not in suffixes or not utf8_path(path):  # Keras picks its reader by the extension
            source = Path(folder) / f"model{suffixes[0]}"
            shutil.copyfile(path, source)
        try:
            return keras.saving.load_model(str(source), safe_mode=not trust_pickle(), compile=False)
        except Exception as exc:
            text = " ".join(str(exc).split())
            if "safe_mode" in text and ("lambda" in text.lower() or "deserializ" in text.lower()):
                # Keras' own advice names its safe_mode argument, which an edgecli user cannot pass
                raise ModelReadError(
                    f"{path} holds a Lambda layer (Python bytecode): edgecli does not run code from a model file",
                    hint=TRUST_HINT,
                ) from None
            raise ModelReadError(f"{path} is not a loadable Keras model ({last_line(exc, 200)})") from None


# --- SavedModel: the graph is checked before TensorFlow loads or runs it --------------------------
# A SavedModel is a TensorFlow graph: any op TensorFlow has runs when the model runs (or, for the init
# op, when it loads), including ops that read, write or list files, run Python or reach a server.
# saved_model.pb is parsed with the protobuf alone (nothing is run) and every node of the graph and
# of every function in its library is checked against these ops.

_READS = "reads files"
_WRITES = "writes files"
DENIED_OPS: dict[str, str] = {
    **dict.fromkeys(
        (
            "ReadFile",
            "MatchingFiles",
            "MatchingFilesDataset",
            "ExperimentalMatchingFilesDataset",
            "ImmutableConst",
            "WholeFileReader",
            "WholeFileReaderV2",
            "TextLineReader",
            "TextLineReaderV2",
            "TFRecordReader",
            "TFRecordReaderV2",
            "FixedLengthRecordReader",
            "FixedLengthRecordReaderV2",
            "LMDBReader",
            "TextLineDataset",
            "TFRecordDataset",
            "TFRecordDatasetV2",
            "FixedLengthRecordDataset",
            "FixedLengthRecordDatasetV2",
            "CSVDataset",
            "CSVDatasetV2",
            "ExperimentalCSVDataset",
            "LMDBDataset",
            "ExperimentalLMDBDataset",
            "LoadDataset",
            "SnapshotDatasetReader",
            "SnapshotNestedDatasetReader",
            "SnapshotChunkDataset",
            "ListSnapshotChunksDataset",
            "InitializeTableFromTextFile",
            "InitializeTableFromTextFileV2",
            "LoadAndRemapMatrix",
            "GenerateVocabRemapping",
            "Restore",
            "RestoreSlice",
            "RestoreV2",
            "SqlDataset",
            "ExperimentalSqlDataset",
        ),
        _READS,
    ),
    **dict.fromkeys(
        (
            "WriteFile",
            "SaveDataset",
            "SaveDatasetV2",
            "DistributedSave",
            "DatasetToTFRecord",
            "ExperimentalDatasetToTFRecord",
            "SnapshotDataset",
            "SnapshotDatasetV2",
            "CacheDataset",
            "CacheDatasetV2",
            "CreateSummaryFileWriter",
            "CreateSummaryDbWriter",
            "SummaryWriter",
            "WriteSummary",
            "WriteRawProtoSummary",
            "WriteScalarSummary",
            "WriteHistogramSummary",
            "WriteImageSummary",
            "WriteAudioSummary",
            "WriteGraphSummary",
            "ImportEvent",
            "FlushSummaryWriter",
            "CloseSummaryWriter",
            "StatsAggregatorSetSummaryWriter",
            "Save",
            "SaveSlices",
            "SaveV2",
            "MergeV2Checkpoints",
        ),
        _WRITES,
    ),
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"), "runs Python code"),
    **dict.fromkeys(
        (
            "DataServiceDataset",
            "DataServiceDatasetV2",
            "DataServiceDatasetV3",
            "DataServiceDatasetV4",
            "RegisterDataset",
            "Rpc",
            "TryRpc",
            "DebugIdentity",
            "DebugIdentityV2",
            "DebugIdentityV3",
            "DebugNanCount",
            "DebugNumericSummary",
            "DebugNumericSummaryV2",
            "FileSystemSetConfiguration",
        ),
        "reaches files or servers outside the model",
    ),
}
# What every SavedModel's own saver functions hold (tf.saved_model.save, Keras model.export): allowed
# there only, where they save or restore the model's variables to the path TensorFlow passes in.
CHECKPOINT_OPS = frozenset(
    {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "Save", "SaveSlices", "Restore", "RestoreSlice"}
)


def _attr_use(node: Any) -> str | None:
    """What an op allowed in general does with a file, from its attributes (None: nothing)."""
    if node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://"):
        return _WRITES
    if node.op in ("DecodeProtoV2", "EncodeProto") and node.attr["descriptor_source"].s not in (b"", b"local://"):
        return _READS  # a descriptor set read from a file path
    return None


def _called(node: Any) -> Iterator[str]:
    """The functions a node calls (StatefulPartitionedCall's f, If/While branches, dataset map functions...)."""

    def walk(value: Any) -> Iterator[str]:
        if value.HasField("func"):
            yield value.func.name
            for inner in value.func.attr.values():
                yield from walk(inner)
        if value.HasField("list"):
            for func in value.list.func:
                yield func.name
                for inner in func.attr.values():
                    yield from walk(inner)

    for value in node.attr.values():
        yield from walk(value)


def _reach(roots: Iterable[str], functions: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = [name for name in roots if name in functions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(called for node in functions[name].node_def for called in _called(node) if called in functions)
    return seen


def _saver_nodes(meta: Any, graph: Any) -> set[str]:
    """The graph nodes of the SavedModel's saver: the save and restore calls (TF2), or the nodes of the
    saver's name scope (TF1 `save/...`)."""
    names = {
        name.split(":")[0].lstrip("^") for name in (meta.saver_def.save_tensor_name, meta.saver_def.restore_op_name)
    }
    names.discard("")
    scopes = {name.rsplit("/", 1)[0] + "/" for name in names if "/" in name}
    return {node.name for node in graph.node if node.name in names or any(node.name.startswith(s) for s in scopes)}


def check_saved_model_ops(path: Path) -> None:
    """Refuse a SavedModel whose graph holds an op that touches files, runs Python or reaches a server,
    read from saved_model.pb without running anything; --trust-pickle skips the check. The checkpoint
    ops of the SavedModel's own saver are allowed in the functions only the saver calls. Raises
    ModelReadError (and BackendMissing without TensorFlow)."""
    from edgecli.core.security import trust_pickle

    if trust_pickle():
        return
    import_tensorflow()
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelReadError(
            f"{path}/saved_model.pb is not a SavedModel protobuf ({last_line(exc, 160)}); corrupt or truncated?"
        ) from None
    if not proto.meta_graphs:
        raise ModelReadError(f"{path}/saved_model.pb holds no graph; corrupt or truncated?")
    for meta in proto.meta_graphs:
        graph = meta.graph_def
        functions = {f.signature.name: f for f in graph.library.function}
        saver = _saver_nodes(meta, graph)
        saver_reach = _reach((f for n in graph.node if n.name in saver for f in _called(n)), functions)
        # every function not called only by the saver is checked strictly, orphans included (TensorFlow
        # loads each function of the library and the object graph can call any of them)
        other_roots = [f for n in graph.node if n.name not in saver for f in _called(n)]
        other_roots += [name for name in functions if name not in saver_reach]
        strict = _reach(other_roots, functions)
        places = [(node, None, node.name in saver) for node in graph.node]
        places += [(node, name, name not in strict) for name, f in functions.items() for node in f.node_def]
        for node, function, in_saver in places:
            use = DENIED_OPS.get(node.op) or _attr_use(node)
            if use is None or (in_saver and node.op in CHECKPOINT_OPS):
                continue
            where = f"node '{one_line(node.name)}'" + (f" of function '{one_line(function)}'" if function else "")
            raise ModelReadError(
                f"{path} holds a {one_line(node.op)} op ({where}), which {use} when the model runs: "
                "edgecli does not run a SavedModel's file, Python or network ops",
                hint=TRUST_HINT,
            )
