"""The teacher's targets for distillation: its logits (and a hint layer's features) on each view of
the training set, computed once through the shared runtimes and cached on disk."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecli.core import console
from edgecli.core.errors import RecipeError, TransformError
from edgecli.data.augment import ViewRows, augmented_view
from edgecli.data.dataset import Dataset
from edgecli.data.rows import array_digest
from edgecli.formats.detect import Format
from edgecli.formats.files import TempFolder, atomic_path
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import AugmentSpec
from edgecli.runtimes import Runner, open_runner

if TYPE_CHECKING:
    from edgecli.runtimes.torch_runner import TorchRunner

CACHE_VERSION = 1
CACHE_ENV = "EDGECLI_CACHE_DIR"


def cache_root() -> Path:
    """$EDGECLI_CACHE_DIR, else $XDG_CACHE_HOME/edgecli, else ~/.cache/edgecli."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecli"


class IntegerRows(ViewRows):
    """Integer samples (token ids) read when indexed, in the data's own dtype: a teacher with int32
    or int64 inputs gets them as stored (ViewRows would cast them to float32). Never augmented
    (augment refuses non-image data)."""

    def __init__(self, base: Any, index: np.ndarray | None = None) -> None:
        super().__init__(base, None, index)
        self.dtype = np.dtype(base.dtype)

    def subset(self, index: np.ndarray) -> IntegerRows:
        return IntegerRows(self.base, index if self.index is None else self.index[index])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        if isinstance(key, slice) and self.index is None:
            return np.asarray(self.base[key])
        positions = np.arange(*key.indices(len(self))) if isinstance(key, slice) else np.asarray(key)
        return np.asarray(self.base[positions if self.index is None else self.index[positions]])


def training_rows(x: Any) -> ViewRows:
    """The training inputs read when indexed: float32, or integer ids in their own dtype."""
    return IntegerRows(x) if np.issubdtype(np.dtype(x.dtype), np.integer) else ViewRows(x)


@dataclass
class View:
    """One view of the training set (read batch by batch) and the teacher's targets on it."""

    inputs: ViewRows
    logits: np.ndarray
    features: np.ndarray | None


def _close_names(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    shown = close or names[:5]
    return ", ".join(shown) + (" ..." if not close and len(names) > 5 else "")


def _onnx_with_output(teacher: ModelFile, layer: str, folder: Path) -> ModelFile:
    """A copy of an ONNX teacher that also outputs tensor `layer`."""
    import onnx

    proto = onnx.load(str(teacher.path))
    produced = [out for node in proto.graph.node for out in node.output if out]
    if layer not in produced:
        raise RecipeError(
            f"hint.teacher_layer '{layer}' is not a tensor of the ONNX teacher",
            hint=f"e.g. {_close_names(layer, produced)}",
        )
    if layer not in {o.name for o in proto.graph.output}:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(layer))
        proto.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    path = folder / "teacher-with-hint.onnx"
    onnx.save(proto, str(path))
    return ModelFile.open(path)


def _pt2_with_output(runner: TorchRunner, layer: str) -> None:
    """Make a .pt2 runner's module also return graph node `layer` (outputs become a flat tuple)."""
    import torch

    graph = runner.module.graph
    nodes = {n.name: n for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")}
    if layer not in nodes:
        raise RecipeError(
            f"hint.teacher_layer '{layer}' is not a node of the .pt2 teacher",
            hint=f"e.g. {_close_names(layer, list(nodes))}",
        )
    output = next(n for n in graph.nodes if n.op == "output")
    flat = output.args[0] if isinstance(output.args[0], (list, tuple)) else (output.args[0],)
    output.args = ((*flat, nodes[layer]),)
    graph._codegen = torch.fx.graph.CodeGen()  # plain positional in, tuple out (no pytree specs)
    runner.module.recompile()


@contextlib.contextmanager
def teacher_runner(teacher: ModelFile, hint_layer: str | None):
    """A runner over the teacher whose first output is its logits and, with a hint layer, whose last
    output is that layer's features."""
    if hint_layer is None:
        yield open_runner(teacher)
        return
    if teacher.format is Format.PT2:
        from edgecli.runtimes.torch_runner import TorchRunner

        runner = open_runner(teacher)
        if not isinstance(runner, TorchRunner):  # open_runner runs every .pt2 with torch
            raise TransformError(f"a hint layer of a .pt2 teacher needs the torch runner, not {type(runner).__name__}")
        _pt2_with_output(runner, hint_layer)
        yield runner
    elif teacher.format in (Format.ONNX,):
        with TempFolder(prefix="edgecli-hint-") as folder:
            yield open_runner(_onnx_with_output(teacher, hint_layer, Path(folder)))
    else:
        raise RecipeError(
            f"a hint loss needs an ONNX or .pt2 teacher; {teacher.path} is {teacher.format.value}",
            hint="convert the teacher to ONNX, or drop the hint section",
        )


class TeacherTargets:
    """The teacher's outputs on view 0..views-1 of the training inputs `x` (an array or rows on disk;
    view 0 is `x` itself when there is no augmentation), each computed once, a batch at a time, and
    kept in memory (logits, hint features; never the inputs) and, with `cache`, on disk under a key
    of the teacher's bytes, the data's bytes, the augmentation, the seed and the hint layer."""

    def __init__(
        self,
        teacher: ModelFile,
        runner: Runner,
        input_name: str,
        x: Any,
        augment: AugmentSpec | None,
        seed: int,
        hint_layer: str | None,
        cache: bool,
    ) -> None:
        self.teacher, self.runner, self.input_name = teacher, runner, input_name
        self.x = training_rows(x)  # float32 samples (integer ids as stored), read when indexed
        self.augment, self.seed, self.hint_layer = augment, seed, hint_layer
        self.cache_folder = cache_root() / "teacher-outputs" if cache else None
        self.views = augment.views if augment is not None else 1
        # one pass over the data, shared with the checkpoint
        self.data_digest = array_digest(x, self.x.dtype)
        self._memory: dict[int, View] = {}
        self.computed = 0  # views whose teacher outputs were computed in this run
        self.read = 0  # views read from the disk cache

    def key(self, view: int) -> str:
        parts = {
            "version": CACHE_VERSION,
            "teacher": self.teacher.sha256,
            "data": self.data_digest,
            "augment": None if self.augment is None else self.augment.model_dump(exclude={"views"}),
            "seed": None if self.augment is None else self.seed,
            "view": view,
            "hint": self.hint_layer,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def inputs(self, view: int) -> ViewRows:
        if self.augment is None:
            return self.x
        return augmented_view(self.x.base, self.augment, self.seed, view)

    def view(self, index: int) -> View:
        """View `index` modulo the number of views."""
        index %= self.views
        if index not in self._memory:
            inputs = self.inputs(index)
            found = self._read(index, len(inputs))
            if found is None:
                found = self._compute(inputs, index)
                self._write(index, *found)
                self.computed += 1
            else:
                self.read += 1
            self._memory[index] = View(inputs, found[0], found[1])
        return self._memory[index]

    def _compute(self, inputs: ViewRows, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        label = f"teacher outputs (view {index + 1}/{self.views})" if self.views > 1 else "teacher outputs"
        outputs = self.runner.predict(
            Dataset({self.input_name: inputs}, None, "training data"), batch_size=256, description=label
        )
        logits = outputs[0].astype(np.float32)
        features = outputs[-1].astype(np.float32) if self.hint_layer is not None else None
        if features is not None and features.ndim == 4 and self.runner.input_layout == "NHWC":
            raise TransformError("hint features from an NHWC teacher are not supported")
        return logits, features

    def _path(self, index: int) -> Path | None:
        return None if self.cache_folder is None else self.cache_folder / f"{self.key(index)}.npz"

    def _read(self, index: int, count: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        path = self._path(index)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                logits = archive["logits"]
                features = archive["features"] if self.hint_layer is not None else None
        except Exception as exc:  # a damaged cache entry is recomputed, never trusted
            console.warn(f"ignoring unreadable teacher cache entry {path.name}: {str(exc)[:100]}")
            return None
        if len(logits) != count or (features is not None and len(features) != count):
            console.warn(f"ignoring teacher cache entry {path.name}: it holds {len(logits)} samples, not {count}")
            return None
        return logits, features

    def _write(self, index: int, logits: np.ndarray, features: np.ndarray | None) -> None:
        path = self._path(index)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, Any] = {"logits": logits}
            if features is not None:
                arrays["features"] = features
            with atomic_path(path) as tmp, tmp.open("wb") as handle:
                np.savez(handle, **arrays)
        except OSError as exc:  # a read-only or full cache folder only costs time
            console.warn(f"cannot write the teacher cache in {path.parent}: {exc.strerror or exc}")
