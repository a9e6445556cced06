"""Parity that fits the output: float conversions held to a tolerance relative to the output's scale,
reduced-precision ones to the answer check (issue 19 finding 10)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecli.analysis.parity import check_parity
from edgecli.core.errors import ParityError
from edgecli.data.dataset import Dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ParitySpec
from edgecli.runtimes import open_runner
from tests.conftest import run_cli
from tests.unit_helpers import export_onnx, export_pt2, images, tiny_cnn


def _large_output_models(folder):
    """The tiny CNN with its classifier scaled by 2000: outputs of magnitude ~1e3, as a third-party
    model's un-normalised scores can be. The same module as .pt2 and as ONNX (exported separately)."""
    import torch

    model = tiny_cnn()
    with torch.no_grad():
        model[5].weight.mul_(2000.0)
        model[5].bias.mul_(2000.0)
    return export_pt2(model, folder / "large.pt2"), export_onnx(model, folder / "large.onnx")


def test_float_parity_is_relative_to_the_output_scale(tmp_path):
    """.pt2 -> ONNX of a model with outputs ~1e3: float32 rounding alone exceeds an absolute 1e-5
    (the old refusal), and atol + rtol * max|ref| passes it; a genuinely different output fails."""
    pt2, onnx_path = _large_output_models(tmp_path)
    data = Dataset({"input": images(64, seed=1)}, None, "images")
    parent, child = open_runner(ModelFile.open(pt2)), open_runner(ModelFile.open(onnx_path))
    ref, out = parent.predict(data)[0], child.predict(data)[0]
    diff, scale = float(np.abs(ref - out).max()), float(np.abs(ref).max())
    assert scale > 500 and diff > 1e-5, (diff, scale)  # the old atol-only check refused this
    spec = ParitySpec(atol=1e-5, min_agreement=0.99)  # the shipped onnx recipe's parity
    metrics = check_parity(parent, child, data, spec, "pt2 -> onnx")
    assert metrics["parity_max_abs_diff"] == pytest.approx(diff) and diff <= 1e-5 + 1e-4 * scale
    with pytest.raises(ParityError, match=r"max abs diff .* > atol \+ rtol \* max\|ref\|"):
        check_parity(parent, _Scaled(child, 1.001), data, spec, "pt2 -> onnx")  # 0.1% off everywhere: not rounding


class _Scaled:
    """A runner whose outputs are another runner's times a factor (a conversion that changed the math)."""

    def __init__(self, runner, factor: float) -> None:
        self.runner, self.factor = runner, factor
        self.outputs, self.inputs, self.model = runner.outputs, runner.inputs, runner.model

    def predict(self, data, description=None):
        return [o * self.factor for o in self.runner.predict(data)]


def test_shipped_onnx_recipe_converts_a_large_output_model(tmp_path):
    pt2, _ = _large_output_models(tmp_path)
    np.savez(tmp_path / "x.npz", x=images(64, seed=2))
    result = run_cli("convert", pt2, "-r", "onnx", "--data", tmp_path / "x.npz", "-o", tmp_path / "out.onnx", "-q")
    assert result.code == 0, result.stderr
