"""prune, methods magnitude (gradual) and 2:4 on .pt2, and magnitude / 2:4 on ONNX, through the CLI;
the shared fine-tuning loop (early stopping, best-epoch restore) directly."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from edgecli.formats.model_file import ModelFile
from edgecli.recipes import FinetuneSpec
from edgecli.stages.prune.unstructured import cubic_sparsity, two_four_mask
from edgecli.training.loop import finetune
from tests.conftest import data_args, run_cli

# 400 training images (was 1000): 2 epochs still lift accuracy far above one-shot pruning's, measured
# on the first 300 eval images: 2:4 0.62 -> 0.877, gradual 80% 0.177 (one-shot) -> 0.453
FAST = ["--set", "data.limit=400", "--set", "eval_data.limit=300", "-q"]
REPORT_FIELDS = (
    "method",
    "sparsity",
    "layers",
    "params",
    "nonzero_params",
    "prunable_params",
    "gzip_bytes",
    "gzip_bytes_parent",
    "gzip_ratio",
    "macs",
    "accuracy_before",
    "accuracy",
)


def _pt2_weights(path) -> dict[str, torch.Tensor]:
    program = torch.export.load(str(path))
    return {k: v for k, v in program.state_dict.items() if v.dim() >= 2 and v.numel() >= 64}


def _metrics(path) -> dict:
    return ModelFile.open(path).lineage["steps"][-1]["metrics"]


def _groups_of_four(w: torch.Tensor, axis: int = 1) -> torch.Tensor:
    return w.movedim(axis, -1).reshape(-1, 4)


# ---------------------------------------------------------------- units


def test_two_four_mask_keeps_the_two_largest_of_each_group_along_input_channels():
    torch.manual_seed(0)
    w = torch.randn(8, 16, 3, 3)
    mask = two_four_mask(w)
    groups, kept = _groups_of_four(w.abs()), _groups_of_four(mask)
    assert torch.equal(kept.sum(1), torch.full((groups.shape[0],), 2))
    assert bool(((groups * kept).amax(1) >= 0).all())
    assert bool(((groups * ~kept).amax(1) <= torch.where(kept, groups, torch.inf).amin(1)).all())
    assert two_four_mask(torch.randn(8, 3, 3, 3)) is None  # 3 input channels: left dense


def test_cubic_schedule_starts_at_zero_and_ends_exactly_at_target():
    assert cubic_sparsity(0.8, 0, 10) == 0.0
    assert cubic_sparsity(0.8, 10, 10) == 0.8
    assert cubic_sparsity(0.8, 12, 10) == 0.8
    values = [cubic_sparsity(0.8, t, 10) for t in range(11)]
    assert values == sorted(values) and values[1] > 0.8 / 10  # fast at first, slow at the end


def _toy_task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 2)), x, y


def test_early_stopping_stops_when_nothing_improves():
    module, x, y = _toy_task()
    spec = FinetuneSpec(epochs=6, lr=1e-9, batch_size=32, val_split=0.2, patience=2)  # cannot improve
    result = finetune(module, None, (x, y), spec, seed=0)
    assert result.epochs_run == 3 and result.stopped_early  # best epoch 1, then 2 epochs without gain
    assert result.best_epoch == 1 and len(result.val_accuracy) == 3


def test_best_epoch_weights_are_restored():
    module, x, y = _toy_task(1)
    spec = FinetuneSpec(epochs=6, lr=3.0, optimizer="sgd", batch_size=16, val_split=0.25, patience=3)  # noisy
    result = finetune(module, None, (x, y), spec, seed=0)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(1))  # finetune's split (seed + 1)
    val = order[150:]
    with torch.no_grad():
        restored = float((module(x[val]).argmax(1) == y[val]).float().mean())
    assert restored == max(result.val_accuracy) == result.val_accuracy[result.best_epoch - 1]


def test_distillation_uses_the_teacher():
    module, x, y = _toy_task(2)
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 2))
    spec = FinetuneSpec(epochs=1, lr=1e-2, batch_size=50, distill=True, soft_weight=1.0)
    assert finetune(module, teacher, (x, y), spec, seed=0).epochs_run == 1
    with pytest.raises(ValueError):
        finetune(module, None, (x, y), spec, seed=0)


# ---------------------------------------------------------------- .pt2 through the CLI


@pytest.fixture(scope="module")
def two_four(sample, tmp_path_factory):
    """sparse-2of4 with fine-tuning (validation split, early stopping and distillation on)."""
    out = tmp_path_factory.mktemp("p24") / "s24.pt2"
    result = run_cli(
        "prune",
        sample["pt2"],
        "-r",
        "sparse-2of4",
        *data_args("prune"),
        *FAST,
        "--set",
        "finetune.epochs=2",
        "--set",
        "finetune.val_split=0.2",
        "--set",
        "finetune.patience=1",
        "--set",
        "finetune.distill=true",
        "-o",
        out,
    )
    assert result.code == 0, result.stderr
    return out


def test_two_four_pattern_holds_after_finetuning(sample, two_four):
    dense, pruned = _pt2_weights(sample["pt2"]), _pt2_weights(two_four)
    metrics = _metrics(two_four)
    assert metrics["dense_layers"] == ["0.weight"]  # one input channel: not a multiple of 4
    assert metrics["layers"]["0.weight"] == 0.0 and bool((pruned["0.weight"] != 0).all())  # fine-tuned, not pruned
    assert set(pruned) == set(dense)
    for name, w in pruned.items():
        if name == "0.weight":
            continue
        zeros = (_groups_of_four(w) == 0).sum(1)
        assert bool((zeros >= 2).all()), name
        assert metrics["layers"][name] >= 0.5
    assert metrics["sparsity"] == pytest.approx(
        1 - (sum(int((w != 0).sum()) for w in pruned.values()) / sum(w.numel() for w in pruned.values()))
    )


def test_two_four_report(two_four):
    metrics = _metrics(two_four)
    for key in (*REPORT_FIELDS, "accuracy_pruned", "finetune_epochs", "val_accuracy", "best_epoch"):
        assert key in metrics, key
    assert metrics["method"] == "2of4"
    assert metrics["gzip_bytes"] < metrics["gzip_bytes_parent"]
    assert metrics["nonzero_params"] < metrics["params"]
    assert 1 <= metrics["finetune_epochs"] <= 2 and len(metrics["val_accuracy"]) == metrics["finetune_epochs"]
    assert metrics["accuracy"] > metrics["accuracy_pruned"]  # fine-tuning recovered part of the loss


def test_gradual_magnitude_reaches_the_target_exactly(sample, tmp_path):
    out = tmp_path / "m80.pt2"
    result = run_cli(
        "prune",
        sample["pt2"],
        "-r",
        "magnitude-80",
        *data_args("prune"),
        *FAST,
        "--set",
        "finetune.epochs=2",
        # 400 images and two epochs win back ~45% accuracy at 80% zeros (the shipped recipe on all 5,000
        # images: 0.888, agreement 0.93, which passes the default bar); the subject here is the target
        "--set",
        "answers.min_agreement=0.3",
        "-o",
        out,
    )
    assert result.code == 0, result.stderr
    pruned = _pt2_weights(out)
    zeros = sum(int((w == 0).sum()) for w in pruned.values())
    total = sum(w.numel() for w in pruned.values())
    assert zeros == round(0.8 * total)
    metrics = _metrics(out)
    assert metrics["finetune_epochs"] == 2 and metrics["sparsity"] == zeros / total
    assert metrics["accuracy"] > metrics["accuracy_pruned"]  # gradual + fine-tuning beats one-shot 80%
    assert len(gzip.compress(out.read_bytes())) < 0.5 * len(gzip.compress(sample["pt2"].read_bytes()))


def test_gradual_without_finetuning_or_with_two_four_is_a_usage_error(sample, tmp_path):
    out = tmp_path / "x.pt2"
    for extra in (["--set", "finetune.epochs=0"], ["--set", "method=2of4"]):
        result = run_cli("prune", sample["pt2"], "-r", "magnitude-80", *data_args("prune"), *extra, "-o", out)
        assert result.code == 2, result.stderr
        assert "gradual" in result.lines[-1]
    assert not out.exists()


# ---------------------------------------------------------------- ONNX


def _onnx_weights(path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    names = [n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    return {name: numpy_helper.to_array(inits[name]) for name in names}


def test_onnx_magnitude_pruning(sample, tmp_path):
    out = tmp_path / "m.onnx"
    result = run_cli(
        "prune",
        sample["onnx"],
        "-r",
        "magnitude-50",
        "--set",
        "finetune.epochs=0",
        "--set",
        "sparsity=0.3",
        "--eval-data",
        sample["eval"],
        "--set",
        "eval_data.limit=300",
        "-o",
        out,
        "-q",
    )
    assert result.code == 0, result.stderr
    weights = _onnx_weights(out)
    total = sum(w.size for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == round(0.3 * total)
    metrics = _metrics(out)
    for key in (*REPORT_FIELDS, "agreement"):
        assert key in metrics, key
    assert metrics["gzip_bytes"] < metrics["gzip_bytes_parent"]
    assert len(gzip.compress(out.read_bytes())) < len(gzip.compress(sample["onnx"].read_bytes()))
    assert metrics["agreement"] > 0.9  # 30% of the smallest weights barely matter


def test_onnx_two_four(sample, tmp_path):
    out = tmp_path / "s.onnx"
    result = run_cli("prune", sample["onnx"], "-r", "sparse-2of4", "--set", "finetune.epochs=0", "-o", out, "-q")
    assert result.code == 0, result.stderr
    for name, w in _onnx_weights(out).items():
        if w.ndim == 4 and w.shape[1] % 4 == 0:
            assert bool(((_groups_of_four(torch.from_numpy(w)) == 0).sum(1) >= 2).all()), name
        elif w.ndim == 2:  # Gemm B with transB=1: [N, K]
            assert bool(((_groups_of_four(torch.from_numpy(w), 1) == 0).sum(1) >= 2).all()), name


@pytest.mark.parametrize(
    "extra, words",
    [
        ([], "fine-tuning"),
        (["--set", "method=channel", "--set", "channel.ratio=0.5", "--set", "finetune.epochs=0"], ".pt2"),
    ],
)
def test_onnx_usage_errors(sample, tmp_path, extra, words):
    out = tmp_path / "x.onnx"
    result = run_cli("prune", sample["onnx"], "-r", "magnitude-50", *data_args("prune"), *extra, "-o", out)
    assert result.code == 2, result.stderr
    assert words in result.lines[-1]
    assert not out.exists()
