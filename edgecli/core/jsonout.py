"""JSON that every reader accepts: NaN and Inf (a model whose outputs are NaN, a ratio with a zero
denominator) are written as null, never as the bare tokens NaN/Infinity that strict parsers (jq,
JavaScript, Go) reject."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, containers walked."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(
    value: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    separators: tuple[str, str] | None = None,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """json.dumps of `value` with NaN/Inf as null (allow_nan=False proves none slipped through)."""
    return json.dumps(
        finite(value), indent=indent, sort_keys=sort_keys, separators=separators, default=default, allow_nan=False
    )
