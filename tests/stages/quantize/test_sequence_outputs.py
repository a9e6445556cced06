"""quantize of models whose outputs are not [N, classes] (issue 19, the zoo's PP-OCRv4 models): a
text recogniser's [N, T, classes] sequence and a detector's [N, 1, H, W] map crashed with "internal
error: operands could not be broadcast" (top-1 agreement taken over axis 1). Also: a model given by
a relative path is pre-processed (quant_pre_process resolved it inside its private folder and was
skipped), and a quantized model the runtime cannot load is the transformation's failure (exit 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecli.core.errors import TransformError
from edgecli.formats.model_file import ModelFile
from edgecli.stages.artifact import open_candidate
from tests.conftest import run_cli

STEPS, CLASSES = 12, 40


class Recogniser(nn.Module):
    """Conv features over a text line, then class scores per time step: [N, STEPS, CLASSES] (CTC-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d((1, STEPS))
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.conv(x)).squeeze(2).transpose(1, 2)  # [N, STEPS, 32]
        return torch.softmax(self.head(features), -1)


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recogniser")
    torch.manual_seed(0)
    model = Recogniser().eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 16, 48),),
        str(folder / "rec.onnx"),
        input_names=["x"],
        output_names=["probs"],
        dynamic_axes={"x": {0: "n"}, "probs": {0: "n"}},
        dynamo=False,
    )
    rng = np.random.default_rng(0)
    lines = (rng.random((96, 1, 16, 48)) > 0.7).astype(np.float32)  # sparse ink on a blank line
    np.savez(folder / "lines.npz", x=lines)
    return {"model": folder / "rec.onnx", "data": folder / "lines.npz", "folder": folder}


@pytest.mark.parametrize("recipe", ["int8-dynamic", "int8-static"])
def test_a_sequence_output_is_quantized_and_judged_by_its_answers(recogniser: dict[str, Path], recipe: str) -> None:
    folder = recogniser["folder"]
    out, report = folder / f"{recipe}.onnx", folder / f"{recipe}.json"
    # the model by a relative path, from its folder: pre-processing must find it
    result = run_cli(
        "quantize", "rec.onnx", "-r", recipe, "--data", "lines.npz", "-o", out, "--report", report, cwd=folder
    )
    assert result.code in (0, 1), result.stderr  # written and judged; never a crash
    assert "internal error" not in result.stderr and "quant_pre_process failed" not in result.stderr, result.stderr
    answers = json.loads(report.read_text())["answers"]
    measured = {record["measure"] for record in answers}
    assert "cosine" in measured, answers  # a [N, T, C] output is judged as a map, not as top-1 of axis 1
    from edgecli.data.dataset import load_dataset
    from edgecli.recipes import DataSpec
    from edgecli.runtimes import open_runner

    data = load_dataset(DataSpec(path=recogniser["data"]))
    ref = open_runner(ModelFile.open(recogniser["model"])).predict(data)[0]
    got = open_runner(ModelFile.open(out)).predict(data)[0]
    assert got.shape == ref.shape == (96, STEPS, CLASSES)
    cosine = next(r["value"] for r in answers if r["measure"] == "cosine")
    a, b = ref.reshape(96, -1)[:96], got.reshape(96, -1)[:96]
    mine = float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    assert abs(cosine - mine) < 1e-4, (cosine, mine)  # the figure edgecli reports is the one measured here
    assert (result.code == 0) == (cosine >= 0.95)


def test_min_agreement_on_a_sequence_output_is_a_recipe_error(recogniser: dict[str, Path]) -> None:
    out = recogniser["folder"] / "agree.onnx"
    result = run_cli(
        "quantize", recogniser["model"], "-r", "int8-static", "--data", recogniser["data"],
        "--set", "min_agreement=0.99", "-o", out, "-q",
    )  # fmt: skip
    assert result.code == 2, result.stderr
    assert "min_agreement is top-1 agreement of class scores [N, classes]" in " ".join(result.stderr.split())
    assert not out.exists()


def test_a_made_model_the_runtime_cannot_load_is_exit_4_not_a_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "candidate.onnx"
    real = (Path(__file__).parents[3] / "sample_models" / "fashion" / "fashion_cnn.onnx").read_bytes()
    broken.write_bytes(real[: len(real) // 2])  # what a mishandled graph amounts to: a model that does not load
    with pytest.raises(TransformError, match="quantize made a model its runtime cannot load") as caught:
        open_candidate(ModelFile.open(broken), "quantize")
    assert caught.value.exit_code == 4 and "another recipe" in (caught.value.hint or "")
