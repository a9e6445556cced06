"""The exception tree: exit codes of the command-line contract and the one-line messages."""

from __future__ import annotations

import pytest

from edgecli.core import errors
from edgecli.core.errors import (
    BackendMissing,
    DataError,
    EdgecliError,
    GateFailed,
    InputError,
    ModelReadError,
    ModelTooLarge,
    OutputError,
    ParityError,
    RecipeError,
    TransformError,
    UsageError,
)

# The contract in DESIGN.md: 1 gate, 2 usage/recipe, 3 unreadable input, 4 transformation, 5 backend.
EXPECTED = [
    (GateFailed, 1, "gate failed"),
    (UsageError, 2, "usage error"),
    (RecipeError, 2, "recipe error"),
    (InputError, 3, "cannot read input"),
    (ModelReadError, 3, "cannot read model"),
    (ModelTooLarge, 3, "out of memory"),
    (DataError, 3, "cannot read data"),
    (TransformError, 4, "transformation failed"),
    (ParityError, 4, "parity check failed"),
    (BackendMissing, 5, "missing backend"),
    (OutputError, 6, "cannot write output"),
    (EdgecliError, 4, "error"),
]


@pytest.mark.parametrize(("cls", "code", "label"), EXPECTED, ids=[c.__name__ for c, _, _ in EXPECTED])
def test_exit_code_and_label(cls: type[EdgecliError], code: int, label: str) -> None:
    exc = cls("something broke")
    assert exc.exit_code == code
    assert exc.line() == f"{label}: something broke"


def test_every_error_class_is_covered() -> None:
    classes = {obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, EdgecliError)}
    assert classes == {cls for cls, _, _ in EXPECTED}


def test_line_appends_hint_in_parentheses() -> None:
    exc = RecipeError("unknown key 'sparsty' in r.yaml", hint="did you mean 'sparsity'?")
    assert exc.line() == "recipe error: unknown key 'sparsty' in r.yaml (did you mean 'sparsity'?)"
    assert exc.message == "unknown key 'sparsty' in r.yaml"
    assert exc.hint == "did you mean 'sparsity'?"
    assert str(exc) == "unknown key 'sparsty' in r.yaml"


def test_line_is_a_single_line_without_hint() -> None:
    line = DataError("data.npz does not exist").line()
    assert line == "cannot read data: data.npz does not exist"
    assert "\n" not in line and "(" not in line


def test_hierarchy_lets_callers_catch_by_family() -> None:
    assert issubclass(RecipeError, UsageError)
    assert issubclass(ModelReadError, InputError) and issubclass(DataError, InputError)
    assert issubclass(ParityError, TransformError)
    with pytest.raises(InputError) as caught:
        raise ModelReadError("x.onnx is empty")
    assert caught.value.exit_code == 3
    # A plain Python exception type is not part of the tree (so it cannot be swallowed as one).
    assert not issubclass(ValueError, EdgecliError)
