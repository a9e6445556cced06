"""Students: the built-in CNN and MLP families (width and depth knobs), a .pt2 file, or the user's factory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgecli.core.errors import RecipeError
from edgecli.recipes import StudentSpec


def scaled(count: int, factor: float) -> int:
    """A channel / layer count times a width or depth factor, at least 1."""
    return max(1, round(count * factor))


def cnn_stages(spec: StudentSpec) -> list[list[int]]:
    """The output channels of each conv, stage by stage, after width and depth scaling. A stage's
    convs are cut from the end (depth < 1) or its last conv repeated (depth > 1)."""
    stages = []
    for stage in spec.channels:
        convs = [stage] if isinstance(stage, int) else list(stage)
        count = scaled(len(convs), spec.depth)
        convs = (convs + [convs[-1]] * count)[:count]
        stages.append([scaled(c, spec.width) for c in convs])
    return stages


def mlp_hidden(spec: StudentSpec) -> list[int]:
    """The hidden widths after width and depth scaling (depth cuts or repeats the last layer)."""
    count = scaled(len(spec.hidden), spec.depth) if spec.hidden else 0
    layers = (spec.hidden + spec.hidden[-1:] * count)[:count]
    return [scaled(h, spec.width) for h in layers]


def build_student(spec: StudentSpec, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """A fresh built-in student for samples of `input_shape` (no batch axis) and `num_classes` outputs."""
    from torch import nn

    if spec.family == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in mlp_hidden(spec):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)
    if len(input_shape) != 3:
        raise RecipeError(
            f"student.family 'cnn' needs image inputs [N,C,H,W]; the data has samples of shape {list(input_shape)}",
            hint="use student.family: mlp",
        )
    channels, height, width = input_shape
    stages = cnn_stages(spec)
    blocks: list[nn.Module] = []
    for index, convs in enumerate(stages):
        for out_channels in convs:
            blocks += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            channels = out_channels
        if index < len(stages) - 1 and min(height, width) >= 4:
            blocks.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
    if spec.head == "avgpool":
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    else:
        blocks += [nn.Flatten(), nn.Linear(channels * height * width, num_classes)]
    return nn.Sequential(*blocks)


def check_student_file(path: Path) -> None:
    """student.path is a .pt2 whose archive edgecli would read (pt2_archive): checked before any work."""
    from edgecli.formats import pt2_file

    pt2_file.check_archive(_pt2_student(path).path)


def _pt2_student(path: Path) -> Any:
    from edgecli.formats.model_file import ModelFile

    model = ModelFile.open(path)
    if model.format.value != "pt2":
        raise RecipeError(f"student.path {path} is {model.format.value}, not a .pt2 file")
    return model


def student_from_pt2(path: Path) -> Any:
    """A trainable eager module from a .pt2 file: its conv/linear/BatchNorm nodes lifted back into
    nn modules, so that train()/eval() switch BatchNorm (an exported module's cannot)."""
    from edgecli.formats import pt2_file
    from edgecli.models.lift import lift

    return lift(pt2_file.load(_pt2_student(path).path).module())


def student_from_factory(spec: StudentSpec) -> Any:
    """The user's nn.Module, with optional starting weights (weights_only=True). The factory is imported
    only with --trust-code, and only if it is model code (edgecli/core/security.py)."""
    from edgecli.formats.state_dict_file import build_module, call_factory, load_state_dict
    from edgecli.recipes import ModelSource

    if spec.factory is None:
        raise RecipeError("student.factory is not set", hint="give student.factory: pkg.module:function")
    source = ModelSource(factory=spec.factory, kwargs=spec.kwargs)
    if spec.weights is None:
        return call_factory(source, "student.factory")
    return build_module(source, load_state_dict(Path(spec.weights)), Path(spec.weights), "student.factory")


def make_student(
    spec: StudentSpec, input_shape: tuple[int, ...], num_classes: int, input_dtype: Any = "float32"
) -> tuple[Any, str]:
    """The student module and a short description of where it came from. Integer inputs (token ids)
    need the user's student (a .pt2 or a factory, e.g. with an nn.Embedding): the built-in families
    read float features."""
    import numpy as np

    if spec.path is not None:
        return student_from_pt2(Path(spec.path)), Path(spec.path).name  # a name, not a path: the lineage stays portable
    if spec.factory is not None:
        return student_from_factory(spec), spec.factory
    if np.issubdtype(np.dtype(input_dtype), np.integer):
        raise RecipeError(
            f"the data holds {np.dtype(input_dtype)} inputs (token ids?): a built-in {spec.family} student reads "
            "float features",
            hint="give student.path (a .pt2, e.g. with an nn.Embedding) or student.factory",
        )
    if spec.family == "mlp":
        return build_student(spec, input_shape, num_classes), f"mlp {mlp_hidden(spec)}"
    return build_student(spec, input_shape, num_classes), f"cnn {cnn_stages(spec)} {spec.head}"


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def stored_values(module: Any) -> int:
    """Weights the student stores (parameters and buffers such as BatchNorm statistics), counted as a
    teacher file's stored values are (analysis.model_stats.param_count)."""
    return sum(t.numel() for t in module.state_dict().values())


SMALLER_WIDTHS = (0.75, 0.5, 0.375, 0.25, 0.125, 0.0625)


def check_smaller(
    student: Any, spec: StudentSpec, teacher_values: int | None, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Refuse (RecipeError, exit 2) a student that stores as many weights as the teacher or more,
    unless student.allow_larger; for a built-in family, name a width that fits."""
    if spec.allow_larger or not teacher_values:
        return
    count = stored_values(student)
    if count < teacher_values:
        return
    if spec.path is not None or spec.factory is not None:
        hint = "give a smaller student, or set student.allow_larger: true"
    else:
        fits = next(
            (
                w
                for w in SMALLER_WIDTHS
                if stored_values(
                    build_student(spec.model_copy(update={"width": spec.width * w}), input_shape, num_classes)
                )
                < teacher_values
            ),
            None,
        )
        hint = (
            f"set student.width: {spec.width * fits:g}, smaller student.channels / hidden, "
            "or student.allow_larger: true"
            if fits is not None
            else "give smaller student.channels / hidden, or set student.allow_larger: true"
        )
    raise RecipeError(
        f"the student has {count:,} parameters, not fewer than the teacher's {teacher_values:,}: "
        "distillation would not shrink the model",
        hint=hint,
    )
