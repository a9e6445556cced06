"""onnxruntime's ORT format (.ort): the flatbuffer its mobile and minimal builds load. It is made
from an ONNX model by onnxruntime itself; the ONNX metadata_props, lineage included, carry over."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edgecli.errors import ModelReadError, TransformError
from edgecli.formats import lineage as lin

def from_onnx_bytes(onnx_bytes: bytes, optimization: str = "basic") -> bytes:
    """The ORT-format bytes of a serialized ONNX model, with graph optimisations `optimization`
    (basic/extended: portable to any CPU; all: x86 layout transforms) saved in. Raises TransformError."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

    with tempfile.TemporaryDirectory(prefix="edgecli-ort-") as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "model.ort"
        source.write_bytes(onnx_bytes)
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.optimized_model_filepath = str(target)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            lines = [l for l in str(exc).strip().splitlines() if l.strip()]
            raise TransformError(f"onnxruntime cannot save this model in ORT format: {(lines or [type(exc).__name__])[0][:240]}") from None
        return target.read_bytes()


def load_options(options: Any) -> Any:
    """Session options told the file is ORT format (whatever its name)."""
    options.add_session_config_entry("session.load_model_format", "ORT")
    return options


def read_lineage(path: Path) -> dict[str, Any] | None:
    import onnxruntime as ort

    options = load_options(ort.SessionOptions())
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelReadError(f"onnxruntime cannot load {path} as ORT format: {str(exc).strip().splitlines()[0][:200]}") from None
    text = session.get_modelmeta().custom_metadata_map.get(lin.LINEAGE_KEY)
    return json.loads(text) if text else None
