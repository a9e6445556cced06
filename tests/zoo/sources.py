"""Real inputs for the zoo, made here without any download: text from the Python standard library's
docstrings, files of many types from the installed packages, images rendered with PIL or shipped by
scikit-image, and audio synthesised at known frequencies (tones, notes, a source-filter voice)."""

from __future__ import annotations

import ast
import importlib.util
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it (rapidocr_onnxruntime imports cv2)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name} is not installed: run `make test-zoo` (installs the zoo extra)")
    return Path(next(iter(spec.submodule_search_locations)))


# ---------------------------------------------------------------- text


def stdlib_sentences(count: int, min_words: int = 4, max_chars: int = 60) -> list[str]:
    """English sentences from the module docstrings of the standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or "site-packages" in path.parts:
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8", errors="ignore")))
        except (SyntaxError, ValueError):
            continue
        for line in (doc or "").replace("\n", " ").split(". "):
            text = re.sub(r"\s+", " ", line).strip(" .")
            if not text.isascii() or any(c in text for c in "`$\\|{}<>[]"):
                continue
            if len(text.split()) < min_words:
                continue
            text = text[:max_chars].rsplit(" ", 1)[0] if len(text) > max_chars else text
            if text not in seen:
                seen.add(text)
                out.append(text)
            if len(out) == count:
                return out
    return out


def font_path() -> str | None:
    """DejaVu Sans from matplotlib (installed by the plot extra) or the system, else None."""
    spec = importlib.util.find_spec("matplotlib")
    candidates = []
    if spec and spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
        candidates.append(base / "mpl-data/fonts/ttf/DejaVuSans.ttf")
    candidates.append(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
    return next((str(p) for p in candidates if p.exists()), None)


def _font(size: int):
    from PIL import ImageFont

    path = font_path()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def text_line(text: str, height: int, rng: np.random.Generator) -> np.ndarray:
    """A text line rendered with PIL: dark ink on a light, slightly tinted background, RGB uint8."""
    from PIL import Image, ImageDraw

    font = _font(int(height * rng.uniform(0.55, 0.75)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(height * 0.15)
    width = right - left + 2 * pad
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    image = Image.new("RGB", (width, height), bg)
    ImageDraw.Draw(image).text((pad - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=ink)
    return np.asarray(image)


def text_page(lines: list[str], size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A small page (H, W) with a few lines of text at random sizes and places, RGB uint8."""
    from PIL import Image, ImageDraw

    height, width = size
    bg = tuple(int(v) for v in rng.integers(190, 256, 3))
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(4, 16))
    for text in lines:
        font = _font(int(rng.integers(13, 22)))
        x = int(rng.integers(4, 30))
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        draw.text((x, y), text, font=font, fill=ink)
        y += int(font.size * rng.uniform(1.4, 2.2))
        if y > height - 20:
            break
    return np.asarray(image)


# ---------------------------------------------------------------- files (magika)

# extension -> magika content type (only unambiguous ones)
MAGIKA_TYPES = {
    ".py": "python",
    ".pyi": "python",
    ".pyc": "pythonbytecode",
    ".json": "json",
    ".so": "elf",
    ".html": "html",
    ".css": "css",
    ".js": "javascript",
    ".png": "png",
    ".gif": "gif",
    ".jpg": "jpeg",
    ".ico": "ico",
    ".xml": "xml",
    ".csv": "csv",
    ".c": "c",
    ".cpp": "cpp",
    ".pem": "pem",
    ".gz": "gzip",
    ".zip": "zip",
    ".whl": "zip",
    ".ttf": "ttf",
    ".npy": "npy",
    ".npz": "npz",
    ".onnx": "onnx",
    ".pdf": "pdf",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".md": "markdown",
    ".rst": "rst",
    ".sh": "shell",
    ".bat": "batch",
    ".ps1": "powershell",
    ".exe": "pebin",
    ".svg": "svg",
    ".tcl": "tcl",
    ".pkl": "pickle",
    ".wav": "wav",
    ".tar": "tar",
    ".afm": "txt",
    ".txt": "txt",
    ".hpp": "cpp",
    ".cfg": "ini",
    ".ini": "ini",
    ".mo": "gettext",  # not in magika's space: dropped by the label filter
    ".proto": "proto",
    ".sql": "sql",
    ".rs": "rust",
    ".go": "go",
    ".java": "java",
    ".pyx": "python",
    ".tflite": "tflite",
}


def typed_files(roots: list[Path], per_type: int, labels: list[str]) -> Iterator[tuple[Path, str]]:
    """Up to `per_type` real files of each known type under `roots` (sorted walk, so reproducible)."""
    counts: dict[str, int] = {}
    known = set(labels)
    for root in roots:
        for path in sorted(root.rglob("*")):
            label = MAGIKA_TYPES.get(path.suffix.lower())
            if label is None or label not in known or counts.get(label, 0) >= per_type:
                continue
            try:
                if not path.is_file() or path.stat().st_size < 64:
                    continue
            except OSError:
                continue
            counts[label] = counts.get(label, 0) + 1
            yield path, label


# ---------------------------------------------------------------- audio


def harmonic_tone(freq: float, samples: int, rate: int, rng: np.random.Generator, harmonics: int = 6) -> np.ndarray:
    t = np.arange(samples) / rate
    out = np.zeros_like(t)
    tilt = rng.uniform(0.4, 0.8)
    for h in range(1, harmonics + 1):
        if freq * h >= rate / 2:
            break
        out += tilt ** (h - 1) * np.sin(2 * np.pi * freq * h * t + rng.uniform(0, 2 * np.pi))
    return (out / np.abs(out).max()).astype(np.float32)


VOWELS = [
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (440, 1020, 2240),
]


def voice(
    seconds: float, rate: int, f0: float, tract: float, rng: np.random.Generator, breath: float = 0.02
) -> np.ndarray:
    """A source-filter voice: a glottal pulse train (f0 with vibrato, declination and jitter) through
    three formant resonators per vowel (scaled by the speaker's tract length), syllable envelopes and
    a little breath noise. Speakers differ by f0, tract and spectral tilt."""
    from scipy.signal import lfilter

    n = int(seconds * rate)
    t = np.arange(n) / rate
    contour = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)) * np.linspace(1.08, 0.92, n)
    contour *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    phase = np.cumsum(contour / rate)
    source = (phase % 1.0) - 0.5  # sawtooth: all harmonics, -6 dB/octave
    source = lfilter([1.0], [1.0, -0.9], np.diff(source, prepend=0.0))
    syllable = int(rate * rng.uniform(0.16, 0.26))
    out = np.zeros(n)
    for start in range(0, n, syllable):
        stop = min(n, start + syllable)
        formants = VOWELS[int(rng.integers(len(VOWELS)))]
        piece = source[start:stop]
        for k, fc in enumerate(formants):
            fc = fc / tract
            bw = 80 + 40 * k
            r = np.exp(-np.pi * bw / rate)
            a = [1.0, -2 * r * np.cos(2 * np.pi * fc / rate), r * r]
            piece = lfilter([1 - r], a, piece)
        envelope = np.sin(np.linspace(0, np.pi, stop - start)) ** 0.5
        out[start:stop] = piece * envelope
    out += breath * rng.standard_normal(n) * np.abs(out).max()
    return (out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def piano_notes(samples: int, rate: int, rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[int]]:
    """Notes (MIDI 40..84) with harmonic partials and an exponential decay, at random onsets."""
    n = samples
    out = np.zeros(n, np.float32)
    pitches = []
    for _ in range(count):
        midi = int(rng.integers(40, 85))
        pitches.append(midi)
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        start = int(rng.integers(0, int(n * 0.7)))
        length = min(n - start, int(rate * rng.uniform(0.3, 1.0)))
        tone = harmonic_tone(freq, length, rate, rng, harmonics=8)
        tone *= np.exp(-np.arange(length) / (rate * rng.uniform(0.2, 0.6))).astype(np.float32)
        out[start : start + length] += rng.uniform(0.3, 0.9) * tone
    return out / max(1.0, float(np.abs(out).max())), pitches


def mel_filters(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (Slaney mel scale and norm)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, np.float64)
        mel = f / (200.0 / 3)
        log = f >= 1000.0
        return np.where(log, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        hz = m * (200.0 / 3)
        log = m >= 15.0
        return np.where(log, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), hz)

    fft_freqs = np.linspace(0, rate / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(rate / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights


def mel_spectrogram(wav: np.ndarray, rate: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """librosa.feature.melspectrogram(y, sr, n_fft, hop_length, n_mels) (power 2, centred with zero
    padding, Hann window), frames first: [frames, n_mels] as resemblyzer's wav_to_mel_spectrogram."""
    padded = np.pad(wav.astype(np.float64), n_fft // 2)
    frames = 1 + (len(padded) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    spectrum = np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2
    return (spectrum @ mel_filters(rate, n_fft, n_mels).T).astype(np.float32)
