"""A tiny BERT-like sequence classifier with three integer inputs, trained for real on a synthetic task.

The model: token + token-type + position embeddings, LayerNorm, 2 post-LN encoder layers (multi-head
self-attention with an additive attention mask as Hugging Face BERT builds it, GELU feed-forward),
a tanh pooler on the [CLS] position and a linear classifier.

The task: each sequence is `[CLS] A... [SEP] B... [SEP]` padded to SEQ_LEN, with token_type_ids 0 for
the first segment and 1 for the second. A segment may hold one "keyword" (ids KEYWORDS); the label is
`keyword in A` + 2 * `keyword in B` (4 balanced classes). Padded positions (attention_mask 0) hold
random tokens, keywords included, so only a model that honours attention_mask can solve it.

`build_tiny_transformer(folder)` trains the model (seeded, CPU, a few seconds), exports it with the
torch.onnx dynamo exporter through edgecli's own `pt2_to_onnx` (opset 18, dynamic batch, one
self-contained file) and writes calib.npz, eval.npz (int64 `input_ids`, `attention_mask`,
`token_type_ids`, labels `y`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 100
SEQ_LEN = 16
HIDDEN = 64
HEADS = 2
FFN = 128
LAYERS = 2
NUM_CLASSES = 4
PAD, CLS, SEP = 0, 1, 2
KEYWORDS = (3, 4, 5, 6, 7)
FILLER_LOW = 8  # ordinary tokens are FILLER_LOW..VOCAB-1
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TRAIN_STEPS = 500
BATCH = 64


@dataclass(frozen=True)
class TinyTransformer:
    onnx: Path
    pt2: Path
    calib: Path
    eval: Path
    eval_accuracy: float  # the float model's accuracy on eval.npz, measured after training


def make_data(count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` labelled sequences (int64 arrays keyed by input name, labels under 'y')."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(CLS + 1, VOCAB, size=(count, SEQ_LEN))  # padding is junk, keywords included
    mask = np.zeros((count, SEQ_LEN), np.int64)
    types = np.zeros((count, SEQ_LEN), np.int64)
    labels = np.zeros(count, np.int64)
    for i in range(count):
        len_a = int(rng.integers(1, 7))
        len_b = int(rng.integers(1, SEQ_LEN - 3 - len_a + 1))
        segments = []
        for bit, length in ((1, len_a), (2, len_b)):
            tokens = rng.integers(FILLER_LOW, VOCAB, size=length)
            if rng.random() < 0.5:
                tokens[rng.integers(length)] = rng.choice(KEYWORDS)
                labels[i] += bit
            segments.append(tokens)
        row = np.concatenate([[CLS], segments[0], [SEP], segments[1], [SEP]])
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        types[i, len_a + 2 : len(row)] = 1
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "token_type_ids": types, "y": labels}


def _module() -> Any:
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
            self.out = nn.Linear(HIDDEN, HIDDEN)
            self.norm1 = nn.LayerNorm(HIDDEN)
            self.ffn_in = nn.Linear(HIDDEN, FFN)
            self.ffn_out = nn.Linear(FFN, HIDDEN)
            self.norm2 = nn.LayerNorm(HIDDEN)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            batch, seq, _ = x.shape
            head = HIDDEN // HEADS
            q, k, v = self.qkv(x).view(batch, seq, 3, HEADS, head).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / math.sqrt(head) + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, HIDDEN)
            x = self.norm1(x + self.out(context))
            return self.norm2(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))

    class TinyBert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(VOCAB, HIDDEN)
            self.types = nn.Embedding(2, HIDDEN)
            self.positions = nn.Embedding(SEQ_LEN, HIDDEN)
            self.norm = nn.LayerNorm(HIDDEN)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
            self.pooler = nn.Linear(HIDDEN, HIDDEN)
            self.classifier = nn.Linear(HIDDEN, NUM_CLASSES)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.norm(self.tokens(input_ids) + self.types(token_type_ids) + self.positions(positions))
            # Hugging Face BERT's extended attention mask: 0 where attended, the float minimum where padded
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, bias)
            return self.classifier(torch.tanh(self.pooler(x[:, 0])))

    return TinyBert()


def _tensors(data: dict[str, np.ndarray]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(data[name]) for name in INPUT_NAMES)


def train() -> tuple[Any, float]:
    """The trained module (eval mode) and its accuracy on the evaluation set."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread (2 threads: 8x slower on a busy machine)
    try:
        return _train(torch)
    finally:
        torch.set_num_threads(threads)


def _train(torch: Any) -> tuple[Any, float]:
    torch.manual_seed(0)
    model = _module()
    train_data = make_data(TRAIN_STEPS * BATCH // 4, seed=1)  # each sequence seen about 4 times
    inputs, labels = _tensors(train_data), torch.from_numpy(train_data["y"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=TRAIN_STEPS)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    model.train()
    for step in range(TRAIN_STEPS):
        index = order[(step * BATCH) % len(labels) :][:BATCH]
        loss = torch.nn.functional.cross_entropy(model(*(t[index] for t in inputs)), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    evaluation = make_data(512, seed=3)
    with torch.no_grad():
        predicted = model(*_tensors(evaluation)).argmax(1).numpy()
    return model, float(np.mean(predicted == evaluation["y"]))


def build_tiny_transformer(folder: Path) -> TinyTransformer:
    """Train, export (.pt2 and self-contained ONNX, dynamic batch, opset 18) and write the datasets."""
    import torch

    from edgecli.backends.onnx_export import pt2_to_onnx
    from edgecli.formats import onnx_file
    from edgecli.formats.model_file import ModelFile
    from edgecli.stages.quantize.onnx import strip_debug_metadata

    folder.mkdir(parents=True, exist_ok=True)
    model, eval_accuracy = train()
    example = _tensors({k: v[:2] for k, v in make_data(2, seed=4).items()})
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in INPUT_NAMES))
    pt2 = folder / "tiny_bert.pt2"
    torch.export.save(program, str(pt2))
    proto = pt2_to_onnx(ModelFile.open(pt2), opset=18, dynamic_batch=True)
    # The exporter's per-node debug info (stack traces: 62 KB, 16% of the file) goes, as quantize drops
    # it too: the size checks then compare weights, not debug text.
    strip_debug_metadata(proto)
    onnx_path = folder / "tiny_bert.onnx"
    onnx_path.write_bytes(onnx_file.to_bytes(proto, None))
    paths = {"calib": folder / "calib.npz", "eval": folder / "eval.npz"}
    np.savez(paths["calib"], **make_data(256, seed=2))
    np.savez(paths["eval"], **make_data(512, seed=3))
    return TinyTransformer(onnx_path, pt2, paths["calib"], paths["eval"], eval_accuracy)


if __name__ == "__main__":  # python -m tests.tiny_transformer FOLDER: build and report
    import sys
    import time

    start = time.perf_counter()
    built = build_tiny_transformer(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-transformer"))
    print(f"{built} in {time.perf_counter() - start:.1f} s")
