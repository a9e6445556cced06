"""What a stage produces: a model object in memory, its metrics, and how to serialize it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecli.formats.detect import Format
from edgecli.formats.files import TempFolder
from edgecli.formats.model_file import ModelFile

if TYPE_CHECKING:
    from edgecli.analysis.answers import Answers, Bars
    from edgecli.data.dataset import Dataset
    from edgecli.runtimes.base import Runner


@dataclass
class Artifact:
    """A transformed model before it is written.

    payload: onnx.ModelProto (ONNX and ORT format), torch.export.ExportedProgram (.pt2) or bytes (TFLite).
    metrics: key figures stored in the lineage and printed in the summary (no timings).
    io: hints for later steps, e.g. {"input_layout": "NHWC"}.
    gate_failures: recipe targets that were missed; the artifact is still written, then exit 1.
    report: details for `--report` (per-layer errors, search steps, timings): never in the lineage.
    write: False in the other processes of a torchrun job (only rank 0 writes files).
    weights_from: the model whose weights this one continues when that is not the input (distill's
        student.path): its lineage is the one extended, and what it had (sparsity, int8) is checked.
    new_weights: True when the weights start afresh (a distilled student built from scratch): no
        state of the input can have been lost.
    """

    format: Format
    payload: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    io: dict[str, Any] = field(default_factory=dict)
    gate_failures: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None
    write: bool = True
    weights_from: ModelFile | None = None
    new_weights: bool = False

    def weight_state(self) -> dict[str, Any] | None:
        """Weight sparsity and dtype of the serialized artifact (an ORT file is measured as its ONNX)."""
        from edgecli.analysis.model_stats import weight_state

        measured = replace(self, format=Format.ONNX) if self.format is Format.ORT else self
        with staged(measured) as model:
            return weight_state(model)

    def to_bytes(self, lineage: dict[str, Any] | None) -> bytes:
        if self.format is Format.ONNX:
            from edgecli.formats import onnx_file

            return onnx_file.to_bytes(self.payload, lineage)
        if self.format is Format.PT2:
            from edgecli.formats import pt2_file

            return pt2_file.to_bytes(self.payload, lineage)
        if self.format is Format.ORT:  # payload: the onnx.ModelProto to save in ORT format
            from edgecli.formats import onnx_file, ort_file

            return ort_file.from_onnx_bytes(
                onnx_file.to_bytes(self.payload, lineage), self.io.get("ort_optimization", "basic")
            )
        if self.format is Format.TFLITE:
            from edgecli.formats import tflite_file

            return tflite_file.to_bytes(self.payload, lineage)
        raise ValueError(f"cannot serialize {self.format}")


@contextlib.contextmanager
def staged(artifact: Artifact) -> Iterator[ModelFile]:
    """The artifact written to a private temporary file, for checks that run it."""
    with TempFolder(prefix="edgecli-check-") as folder:
        path = Path(folder) / f"candidate{artifact.format.suffix}"
        path.write_bytes(artifact.to_bytes({"edgecli": 1, "steps": [{"io": artifact.io}]} if artifact.io else None))
        yield ModelFile.open(path)


def open_candidate(candidate: ModelFile, what: str) -> Runner:
    """A runner on a model this verb just made. A model the runtime cannot load is the
    transformation's failure (exit 4, nothing written), not a bad input (exit 3): basic-pitch's
    jax2tf graph came out of onnxruntime's QDQ quantizer with a Transpose onnxruntime then rejects."""
    from edgecli.core.errors import ModelReadError, TransformError
    from edgecli.runtimes import open_runner

    try:
        return open_runner(candidate)
    except ModelReadError as exc:
        raise TransformError(
            f"{what} made a model its runtime cannot load: {exc.message}",
            hint="the converter or quantizer mishandled this graph: try another recipe (fp16, int8-dynamic), "
            "or keep layers float (exclude_op_types)",
        ) from None


def check_answers(
    artifact: Artifact, parent: Runner, data: Dataset | None, bars: Bars, samples: int, what: str, against: str
) -> Answers:
    """Every output of the artifact (as written) measured against its parent's on `data` (synthesised
    inputs when None, saying so): collapsed answers become a gate failure, so the model is written,
    then exit 1. The figures join the artifact's metrics; the caller puts the records in its report."""
    from edgecli.analysis.answers import answers_of
    from edgecli.core import console

    with staged(artifact) as candidate:
        answers = answers_of(parent, open_candidate(candidate, what), data, bars, samples, what)
    console.info(f"answers against {against}: {answers.summary()}")
    artifact.metrics.update(answers.metrics())
    failure = answers.failure_line()
    if failure:
        artifact.gate_failures.append(f"{failure} ({answers.hint()})")
    return answers
