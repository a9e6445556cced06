"""`edgecli convert`'s recipe: the target format, its precision and the parity check."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgecli.recipes.base import AnswersSpec, DataSpec, ReadsPyTorch, Strict


class ParitySpec(Strict):
    """How a converted model is compared with its parent."""

    atol: float = Field(
        default=1e-4,
        ge=0,
        description="Float conversions: largest allowed max abs difference of an output is atol + rtol * max|ref| "
        "(ref: the parent's output), so outputs of any scale are held to float32 rounding.",
    )
    rtol: float = Field(
        default=1e-4,
        ge=0,
        le=1,
        description="Float conversions: the part of the allowed max abs difference relative to the output's "
        "largest magnitude (see atol).",
    )
    min_agreement: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="Smallest allowed top-1 agreement for classifiers with fewer than 100 classes; outputs with "
        "more classes (pitch bins, ImageNet) are judged at reduced precision by answers.min_agreement and "
        "answers.min_within_one, as quantize judges them.",
    )
    samples: int = Field(default=256, ge=1, description="Samples of the data used for the check.")
    max_relative_error: float = Field(
        default=0.1,
        ge=0,
        description="Reduced-precision targets (TFLite float16, dynamic, int8, tflite-micro) are judged by the "
        "answer check (answers: the measure that fits each output, as quantize does), top-1 agreement of "
        "classifiers, and this relative error ||out - ref|| / ||ref|| of outputs that are not class scores "
        "with 100 or more classes, instead of atol.",
    )


class MicroSpec(Strict):
    """target tflite-micro: the microcontroller's limits."""

    max_arena_bytes: int | None = Field(
        default=None, ge=1, description="Budget for the tensor arena (RAM for activations); exceeding it exits 1."
    )
    max_model_bytes: int | None = Field(
        default=None, ge=1, description="Budget for the model flatbuffer (flash); exceeding it exits 1."
    )


class ConvertRecipe(ReadsPyTorch):
    """`edgecli convert`: change the model's format, checked for parity on real inputs."""

    target: Literal["onnx", "tflite", "tflite-micro", "ort", "pt2"] = Field(
        ...,
        description="Output format. onnx; tflite (LiteRT); tflite-micro: full-integer INT8 TFLite verified with the "
        "TensorFlow Lite Micro interpreter; ort: onnxruntime's ORT format for its mobile and minimal builds; "
        "pt2: a torch.export program (from a state_dict and model.factory).",
    )
    opset: int = Field(default=18, ge=13, le=23, description="ONNX opset (target onnx).")
    dynamic_batch: bool = Field(default=True, description="Keep the batch dimension dynamic.")
    simplify: bool = Field(
        default=False,
        description="target onnx: fold constants and remove redundant nodes with onnxsim (onnx-simplifier).",
    )
    precision: Literal["float32", "float16", "dynamic", "int8"] = Field(
        default="float32",
        description="TFLite precision (target tflite): float32; float16 weights; dynamic (int8 weights, float "
        "activations); int8 (full integer, calibrated on --data). tflite-micro is always int8.",
    )
    io_type: Literal["float", "int8"] = Field(
        default="float", description="precision int8 / tflite-micro: float32 or int8 model inputs and outputs."
    )
    calibration_samples: int = Field(
        default=256, ge=1, description="precision int8 / tflite-micro: calibration samples from --data."
    )
    micro: MicroSpec = Field(default_factory=MicroSpec, description="target tflite-micro: memory budgets.")
    ort_optimization: Literal["basic", "extended", "all"] = Field(
        default="basic",
        description="target ort: graph optimisations saved into the file. basic and extended run on any CPU "
        "(phones); all adds x86 layout transforms (NCHWc) that only suit the converting machine's kind of CPU.",
    )
    parity: ParitySpec = Field(default_factory=ParitySpec, description="Parity check against the parent model.")
    answers: AnswersSpec = Field(
        default_factory=AnswersSpec,
        description="Reduced-precision targets: every output measured against the parent the way it is read, "
        "with quantize's bars, so that convert and quantize pass and refuse the same models.",
    )
    data: DataSpec = Field(
        default_factory=DataSpec, description="Real inputs for the parity check (and int8 calibration)."
    )

    @model_validator(mode="after")
    def _fields_fit_the_target(self) -> ConvertRecipe:
        if self.simplify and self.target not in ("onnx", "ort"):
            raise ValueError(
                f"simplify applies to targets onnx and ort, not {self.target} (onnx2tf simplifies on its own)"
            )
        if self.target == "tflite-micro" and self.precision not in ("float32", "int8"):
            raise ValueError(f"tflite-micro models are full-integer int8; precision {self.precision} does not apply")
        int8 = self.target == "tflite-micro" or (self.target == "tflite" and self.precision == "int8")
        if self.io_type != "float" and not int8:
            raise ValueError(f"io_type {self.io_type} needs precision int8 (integer inputs need calibrated scales)")
        return self
