"""Train the sample Fashion-MNIST CNN deterministically and write its artifacts.

Usage (from the repository root)::

    .venv/bin/python sample_models/train.py [--out DIR]

Everything is staged in a temporary directory, the exported ``.pt2`` and
``.onnx`` are checked against the eager model, and only then are the files
copied into ``--out`` (default: ``sample_models/fashion/``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from fashion_cnn import LAYOUT, build
from torch import nn

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent / "fashion"

SEED = 0
THREADS = 2
EPOCHS = 2
BATCH_SIZE = 128
MAX_LR = 3e-3
WEIGHT_DECAY = 1e-4
N_TRAIN_SUBSET = 5000  # train.npz: fine-tuning / distillation data
N_CALIB = 512  # calib.npz: quantization calibration data
N_EVAL = 2000  # eval.npz: evaluation data (from the test set)
OPSET = 18
ATOL = 1e-4
EXPORT_EXAMPLE_BATCH = 2  # torch.export specialises a batch-1 example to 1
LATENCY_WARMUP = 50
LATENCY_RUNS = 500


def load_idx(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split ("train" or "t10k") as uint8 images [N,1,28,28] and int64 labels."""
    with gzip.open(DATA_DIR / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    with gzip.open(DATA_DIR / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy())
    return x, torch.from_numpy(labels.astype(np.int64))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the model's input convention)."""
    return x.to(torch.float32) / 255.0


def stratified_order(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Indices of all samples, shuffled within each class and interleaved round-robin
    over classes (class 0, 1, ..., 9, 0, 1, ...), so every prefix is class-balanced."""
    num_classes = int(labels.max()) + 1
    rank = torch.empty_like(labels)
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        rank[idx[torch.randperm(len(idx), generator=gen)]] = torch.arange(len(idx))
    return torch.argsort(rank * num_classes + labels, stable=True)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> None:
    """AdamW + one-cycle LR schedule over EPOCHS epochs of seeded shuffles."""
    steps_per_epoch = (len(x) + BATCH_SIZE - 1) // BATCH_SIZE
    opt = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch)
    model.train()
    for epoch in range(EPOCHS):
        start, total_loss = time.perf_counter(), 0.0
        perm = torch.randperm(len(x), generator=gen)
        for step in range(steps_per_epoch):
            idx = perm[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(to_float(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item()
        print(
            f"epoch {epoch + 1}/{EPOCHS}: loss {total_loss / steps_per_epoch:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """Eager float logits for float input x, as a numpy array."""
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of logits [N, C] against labels [N]."""
    return float((logits.argmax(axis=1) == y).mean())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass, counted analytically from the
    Conv2d / Linear weight shapes and their output sizes (other layers ignored)."""
    macs = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
            macs += output[0].numel() * per_output  # output[0]: one sample
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape[1:]))
    for h in handles:
        h.remove()
    return macs


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=OPSET,
        verbose=False,
    )
    side_files = sorted(p.name for p in path.parent.glob(path.name + "*") if p != path)
    if side_files:
        raise RuntimeError(f"ONNX export left external-data files: {side_files}")
    onnx.checker.check_model(str(path), full_check=True)


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_p50_latency_ms(path: Path, sample: np.ndarray) -> float:
    """Median wall time of one batch-1 inference in onnxruntime on a single thread."""
    session = ort_session(path, threads=1)
    feed = {"input": sample[None]}
    for _ in range(LATENCY_WARMUP):
        session.run(None, feed)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def verify_exports(reference: np.ndarray, x: np.ndarray, y: np.ndarray, pt2: Path, onnx_path: Path) -> dict[str, float]:
    """Check that the .pt2 and .onnx reproduce the eager logits on x; return max abs diffs."""
    with torch.no_grad():
        pt2_logits = torch.export.load(pt2).module()(torch.from_numpy(x)).numpy()
    onnx_logits = ort_session(onnx_path, threads=THREADS).run(["logits"], {"input": x})[0]
    diffs = {}
    for name, logits in (("pt2", pt2_logits), ("onnx", onnx_logits)):
        diff = float(np.abs(logits - reference).max())
        same_acc = accuracy(logits, y) == accuracy(reference, y)
        print(f"verify {name}: max abs diff vs eager {diff:.2e}, accuracy {accuracy(logits, y):.4f}")
        if diff >= ATOL or not same_acc:
            raise RuntimeError(f"{name} export does not match the eager model (diff {diff:.2e})")
        diffs[name] = diff
    return diffs


def save_npz(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    np.savez_compressed(path, x=to_float(x).numpy(), y=y.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    out: Path = parser.parse_args().out

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(SEED)

    train_x, train_y = load_idx("train")
    test_x, test_y = load_idx("t10k")
    train_order = stratified_order(train_y, gen)
    subset_idx = train_order[:N_TRAIN_SUBSET]
    calib_idx = train_order[N_TRAIN_SUBSET : N_TRAIN_SUBSET + N_CALIB]
    eval_idx = stratified_order(test_y, gen)[:N_EVAL]

    model = build()
    train_start = time.perf_counter()
    train(model, train_x, train_y, gen)
    train_seconds = time.perf_counter() - train_start
    model.eval()

    eval_x, eval_y = to_float(test_x[eval_idx]).numpy(), test_y[eval_idx].numpy()
    test_logits = logits_of(model, to_float(test_x))
    eval_logits = logits_of(model, torch.from_numpy(eval_x))
    test_acc, eval_acc = accuracy(test_logits, test_y.numpy()), accuracy(eval_logits, eval_y)
    print(f"float accuracy: test (10k) {test_acc:.4f}, eval.npz {eval_acc:.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        torch.save(model.state_dict(), stage / "fashion_cnn.pt")
        example = to_float(test_x[:EXPORT_EXAMPLE_BATCH])
        export_pt2(model, example, stage / "fashion_cnn.pt2")
        export_onnx(model, example, stage / "fashion_cnn.onnx")
        diffs = verify_exports(eval_logits, eval_x, eval_y, stage / "fashion_cnn.pt2", stage / "fashion_cnn.onnx")
        save_npz(stage / "train.npz", train_x[subset_idx], train_y[subset_idx])
        save_npz(stage / "calib.npz", train_x[calib_idx], train_y[calib_idx])
        save_npz(stage / "eval.npz", test_x[eval_idx], test_y[eval_idx])

        latency = ort_p50_latency_ms(stage / "fashion_cnn.onnx", eval_x[0])
        print(f"onnxruntime p50 latency, batch 1, 1 thread: {latency:.3f} ms")
        metrics = {
            "accuracy_eval_npz": eval_acc,
            "accuracy_test_10k": test_acc,
            "architecture": "conv3x3-BN-ReLU channels "
            + ",".join(map(str, LAYOUT))
            + " (M = maxpool2), global avg pool, linear",
            "export_max_abs_diff": diffs,
            "file_bytes": {p.name: p.stat().st_size for p in sorted(stage.iterdir())},
            "input": {"dtype": "float32", "name": "input", "range": [0.0, 1.0], "shape": ["batch", 1, 28, 28]},
            "latency_ms_p50_ort_batch1_1thread": round(latency, 4),
            "macs": count_macs(model, (1, 1, 28, 28)),
            "onnx_opset": OPSET,
            "output": {"name": "logits", "shape": ["batch", 10]},
            "params": sum(p.numel() for p in model.parameters()),
            "training": {
                "batch_size": BATCH_SIZE,
                "epochs": EPOCHS,
                "max_lr": MAX_LR,
                "optimizer": "AdamW",
                "schedule": "OneCycleLR",
                "seconds": round(train_seconds, 1),
                "seed": SEED,
                "torch_threads": THREADS,
                "train_images": len(train_x),
                "weight_decay": WEIGHT_DECAY,
            },
            "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__},
        }
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(stage.iterdir()):
            shutil.copyfile(path, out / path.name)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
