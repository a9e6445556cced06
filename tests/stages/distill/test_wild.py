"""distill on teachers from the wild (issue 19 #12): integer (token id) inputs, probability heads
(sigmoid, softmax), and a student that is not smaller than its teacher. Small models built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecli.core.errors import RecipeError
from edgecli.formats.model_file import ModelFile
from edgecli.models.students import make_student
from edgecli.recipes import StudentSpec
from tests.conftest import run_cli_forked

VOCAB, TOKENS = 50, 12


class TokenBag(nn.Module):
    """Embedding + mean over the sequence + linear: a text classifier on int32 token ids."""

    def __init__(self, dim: int, classes: int = 4) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(VOCAB, dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(x).mean(1))


def _token_teacher(path: Path) -> None:
    torch.manual_seed(0)
    example = torch.randint(0, VOCAB, (2, TOKENS), dtype=torch.int32)
    torch.onnx.export(
        TokenBag(16).eval(),
        (example,),
        str(path),
        input_names=["tokens"],
        output_names=["logits"],
        dynamic_axes={"tokens": {0: "n"}},
        dynamo=False,
    )


def _pt2(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))


def _recipe(path: Path, body: str) -> Path:
    path.write_text("epochs: 2\nbatch_size: 32\nval_split: 0.1\nlatency_runs: 0\nteacher_cache: false\n" + body)
    return path


def test_int32_teacher_reads_int32_data_and_trains_an_embedding_student(tmp_path: Path) -> None:
    """The data is int32 on disk and the teacher's input is int32: the ids reach the teacher, the
    student and the report as int32 (before: 'data is float32 but the model input is int32')."""
    teacher = tmp_path / "teacher.onnx"
    _token_teacher(teacher)
    torch.manual_seed(1)
    student = tmp_path / "student.pt2"
    _pt2(TokenBag(4), torch.randint(0, VOCAB, (2, TOKENS), dtype=torch.int32), student)
    data = tmp_path / "tokens.npz"
    np.savez(data, x=np.random.default_rng(0).integers(0, VOCAB, (300, TOKENS)).astype(np.int32))
    recipe = _recipe(tmp_path / "r.yaml", f"student:\n  path: {student}\n")
    out = tmp_path / "out.pt2"
    result = run_cli_forked("distill", teacher, "-r", recipe, "--data", data, "-o", out)
    assert result.code == 0, result.stderr
    metrics = ModelFile.open(out).lineage["steps"][-1]["metrics"]
    assert metrics["student_params"] == 4 * VOCAB + 4 * 4 + 4 < metrics["teacher_params"] == 16 * VOCAB + 16 * 4 + 4
    program = torch.export.load(str(out)).module()
    ids = torch.from_numpy(np.load(data)["x"][:8])
    assert program(ids).shape == (8, 4)  # the student takes the int32 ids as they are stored


def test_a_built_in_student_is_refused_for_integer_inputs() -> None:
    """The built-in families read float features: token ids need the user's student."""
    with pytest.raises(RecipeError, match="int32 inputs") as caught:
        make_student(StudentSpec(family="mlp"), (TOKENS,), 4, np.int32)
    assert "student.path" in caught.value.hint
