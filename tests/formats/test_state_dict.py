"""PyTorch state_dict files (.pt/.pth): loaded with weights_only only, built with the recipe's
model.factory, and every way that can go wrong reported in one line with its exit code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgecli.core.errors import ModelReadError, UsageError
from edgecli.formats.state_dict_file import build_module, load_state_dict
from edgecli.recipes import ModelSource
from tests.conftest import SAMPLE, leftovers, run_cli

STATE_DICT = SAMPLE / "fashion_cnn.pt"
FACTORY = "model.factory=sample_models.fashion_cnn:build"


def convert_state_dict(model: Path, out_dir: Path, *sets: str) -> object:
    """convert MODEL to ONNX with the sample datasets; the output goes to out_dir/model.onnx. The
    sample factory is code the tests trust (--trust-code)."""
    out_dir.mkdir(exist_ok=True)
    args = [arg for item in sets for arg in ("--set", item)]
    return run_cli(
        "--trust-code",
        "convert",
        model,
        "-r",
        "onnx",
        "--data",
        SAMPLE / "eval.npz",
        *args,
        "-o",
        out_dir / "model.onnx",
    )


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the factories these tests name are code they trust (EDGECLI_TRUST_CODE=1)."""
    monkeypatch.setenv("EDGECLI_TRUST_CODE", "1")


def assert_failed(result, code: int, out_dir: Path, *phrases: str) -> None:
    assert result.code == code, result.stderr
    assert len(result.lines) == 1, result.stderr  # one line, no traceback
    for phrase in phrases:
        assert phrase in result.stderr
    assert leftovers(out_dir) == []  # nothing half-written


# --- through the CLI ---------------------------------------------------------------------------


def test_state_dict_without_model_section_is_a_usage_error(tmp_path: Path) -> None:
    result = convert_state_dict(STATE_DICT, tmp_path / "out")
    assert_failed(result, 2, tmp_path / "out", "MODEL is a state_dict: the recipe needs model.factory")


def test_factory_that_does_not_import_is_a_usage_error(tmp_path: Path) -> None:
    result = convert_state_dict(STATE_DICT, tmp_path / "out", "model.factory=no_such_package.models:build")
    assert_failed(
        result, 2, tmp_path / "out", "model.factory no_such_package.models:build: cannot import no_such_package.models"
    )


def test_kwargs_that_build_another_shape_exit_3_naming_the_tensor(tmp_path: Path) -> None:
    result = convert_state_dict(STATE_DICT, tmp_path / "out", FACTORY, "model.kwargs.num_classes=5")
    assert_failed(
        result,
        3,
        tmp_path / "out",
        "does not fit sample_models.fashion_cnn:build",
        "'25.weight' is [10, 128] in the file but [5, 128] in the module",
    )


class Payload:
    """Unpickling this creates a folder: proof that the file was (not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_module_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "unpickled"
    module = torch.nn.Sequential(torch.nn.Linear(4, 2))
    module.payload = Payload(marker)
    torch.save(module, tmp_path / "whole.pt")
    result = convert_state_dict(tmp_path / "whole.pt", tmp_path / "out", FACTORY)
    assert_failed(
        result, 3, tmp_path / "out", "is a pickled module", "edgecli does not unpickle it", "save model.state_dict()"
    )
    assert not marker.exists()
    # The same file unpickled (what edgecli never does) runs the payload.
    torch.load(tmp_path / "whole.pt", weights_only=False)
    assert marker.exists()


def test_truncated_state_dict_exits_3(tmp_path: Path) -> None:
    data = STATE_DICT.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    result = convert_state_dict(tmp_path / "cut.pt", tmp_path / "out", FACTORY)
    assert_failed(result, 3, tmp_path / "out", "truncated")


def test_no_input_shape_and_no_data_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = run_cli(
        "--trust-code", "convert", STATE_DICT, "-r", "onnx", "--set", FACTORY, "-o", tmp_path / "out" / "model.onnx"
    )
    assert_failed(result, 2, tmp_path / "out", "give model.input_shape or --data")


def test_model_section_for_another_format_is_ignored_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = run_cli(
        "--trust-code",
        "convert",
        SAMPLE / "fashion_cnn.onnx",
        "-r",
        "onnx",
        "--set",
        "target=pt2",
        "--set",
        FACTORY,
        "-o",
        tmp_path / "out" / "model.pt2",
    )
    assert "model.factory is ignored" in result.stderr
    assert result.code == 4 and "no conversion from onnx to .pt2" in result.stderr
    assert leftovers(tmp_path / "out") == []


def test_inspect_counts_the_tensors() -> None:
    result = run_cli("inspect", STATE_DICT, "--json", "-")
    assert result.code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["format"], info["tensors"], info["params"]) == ("state_dict", 44, 353_969)


def test_bench_asks_for_a_pt2_first() -> None:
    result = run_cli("bench", SAMPLE / "fashion_cnn.onnx", STATE_DICT, "-r", "default")
    assert result.code == 2, result.stderr
    assert "is a PyTorch state_dict" in result.stderr and "convert it to .pt2 first" in result.stderr


# --- loader and builder, in process ----------------------------------------------------------------


SAMPLE_FACTORY = "sample_models.fashion_cnn:build"


@pytest.mark.parametrize(
    ("factory", "kwargs", "phrase"),
    [
        ("sample_models.fashion_cnn:no_such_function", {}, "sample_models.fashion_cnn has no 'no_such_function'"),
        ("sample_models.fashion_cnn:LAYOUT", {}, "'LAYOUT' is a tuple, not a function or class"),
        ("sample_models.fashion_cnn:_conv_block", {"in_ch": 1, "out_ch": 2}, "returned a list, not a torch.nn.Module"),
        (SAMPLE_FACTORY, {"width": 3}, "raised TypeError: build() got an unexpected keyword argument 'width'"),
    ],
    ids=["no-attribute", "not-callable", "not-a-module", "bad-kwargs"],
)
@pytest.mark.usefixtures("trusted")
def test_bad_factory(factory: str, kwargs: dict, phrase: str) -> None:
    with pytest.raises(UsageError) as caught:
        build_module(ModelSource(factory=factory, kwargs=kwargs), load_state_dict(STATE_DICT), STATE_DICT)
    assert phrase in caught.value.message and caught.value.exit_code == 2


@pytest.mark.usefixtures("trusted")
def test_missing_and_unexpected_keys_are_listed() -> None:
    tensors = load_state_dict(STATE_DICT)
    tensors["extra.weight"] = tensors.pop("0.weight")
    del tensors["1.bias"]
    with pytest.raises(ModelReadError) as caught:
        build_module(ModelSource(factory=SAMPLE_FACTORY), tensors, STATE_DICT)
    assert "keys differ: missing 0.weight, 1.bias; unexpected extra.weight" in caught.value.message
    module = build_module(ModelSource(factory=SAMPLE_FACTORY, strict=False), tensors, STATE_DICT)  # strict: false
    assert not module.training


@pytest.mark.usefixtures("trusted")
def test_a_prefix_on_every_key_is_named() -> None:
    tensors = {f"model.{key}": value for key, value in load_state_dict(STATE_DICT).items()}
    with pytest.raises(ModelReadError) as caught:
        build_module(ModelSource(factory=SAMPLE_FACTORY), tensors, STATE_DICT)
    assert "the file's keys start with 'model.'" in caught.value.hint


def test_checkpoint_wrappers_are_unwrapped(tmp_path: Path) -> None:
    import torch

    tensors = {"w": torch.ones(2, 3), "b": torch.zeros(2)}
    for key in ("state_dict", "model"):
        torch.save({key: tensors, "epoch": 3}, tmp_path / f"{key}.ckpt")
        loaded = load_state_dict(tmp_path / f"{key}.ckpt")
        assert sorted(loaded) == ["b", "w"] and torch.equal(loaded["w"], tensors["w"])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_training_checkpoint_uses_its_model_state(
    tmp_path: Path, legacy: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.save({step, model_state, optimizer_state}) of a trained model: its nested state_dict is
    used, with a notice naming the key; the optimizer state is ignored (all read with weights_only)."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    path = tmp_path / "checkpoint.pt"
    checkpoint = {"step": 10, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict()}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    notice = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "using the state_dict under 'model_state' (4 tensors); ignoring step, optimizer_state" in notice


def test_a_checkpoint_inspects_through_the_cli(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Linear(4, 3)
    torch.save({"epoch": 2, "net": model.state_dict()}, tmp_path / "run.ckpt")
    result = run_cli("inspect", tmp_path / "run.ckpt")
    assert result.code == 0, result.stderr
    assert "using the state_dict under 'net'" in " ".join(result.stderr.split())
    assert any(line.split()[:2] == ["params", "15"] for line in result.stderr.splitlines() if line.strip())


def test_a_checkpoint_under_another_key_is_refused_naming_the_key(tmp_path: Path) -> None:
    import torch

    torch.save({"step": 3, "student": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "run.pt")
    with pytest.raises(ModelReadError, match="is a checkpoint, not a state_dict") as caught:
        load_state_dict(tmp_path / "run.pt")
    assert "under 'student'" in caught.value.hint and "checkpoint['student']" in caught.value.hint


def test_a_pickled_module_inside_a_checkpoint_is_never_unpickled(tmp_path: Path) -> None:
    import torch

    torch.save({"step": 3, "model": torch.nn.Linear(2, 2)}, tmp_path / "run.pt")
    with pytest.raises(ModelReadError, match="does not unpickle"):
        load_state_dict(tmp_path / "run.pt")


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ({"w": [1, 2]}, "entry 'w' is a list, not a tensor"),
        ([1, 2], "holds a list, not a state_dict"),
        ({}, "empty state_dict"),
    ],
    ids=["list-value", "not-a-dict", "empty"],
)
def test_what_is_not_a_state_dict_is_a_read_error(tmp_path: Path, content: object, phrase: str) -> None:
    import torch

    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(ModelReadError, match=phrase) as caught:
        load_state_dict(tmp_path / "bad.pt")
    assert caught.value.exit_code == 3
