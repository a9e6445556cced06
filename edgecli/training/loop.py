"""A small, deterministic training loop shared by fine-tuning (prune) and distillation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecli.core import console
from edgecli.data.split import validation_size, validation_split
from edgecli.training.losses import kd_loss


def top1(logits: Any) -> Any:
    """Each sample's top-1 class, -1 (never a label) where its logits hold NaN/Inf."""
    import torch

    return torch.where(torch.isfinite(logits).all(1), logits.argmax(1), torch.full_like(logits.argmax(1), -1))


def _as_tensor(rows: Any) -> Any:
    import torch

    return rows if isinstance(rows, torch.Tensor) else torch.from_numpy(rows)


def batch_outputs(
    module: Any,
    rows: Any,
    batch_size: int = 256,
    tensor: Callable[[Any], Any] | None = None,
    keep: Callable[[Any], Any] | None = None,
) -> Any:
    """The module's outputs on `rows` (a tensor, an array or rows on disk), `batch_size` samples at a
    time without gradients, concatenated into one tensor. `tensor` makes a slice of rows the module's
    input (default: the slice itself, or torch.from_numpy of it); `keep` maps each batch's output
    before it is kept (e.g. top1). The module's train/eval mode is the caller's to set."""
    import torch

    tensor, keep = tensor or _as_tensor, keep or (lambda out: out)
    with torch.no_grad():
        return torch.cat([keep(module(tensor(rows[i : i + batch_size]))) for i in range(0, len(rows), batch_size)])


def seed_everything(seed: int) -> None:
    """Same seed, same bytes: seed torch and numpy, and use deterministic kernels."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0) -> Any:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(name: str, opt: Any, lr: float, total_steps: int) -> Any | None:
    import torch

    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return None


def fit(
    module: Any,
    params: list[Any],
    count: int,
    batch_inputs: Callable[[Any], list[Any]],
    loss_fn: Callable[[Any, Any], Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    seed: int,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    description: str,
    after_step: Callable[[], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    after_epoch: Callable[[int], dict[str, float]] | None = None,
    stop_when: Callable[[int], bool] | None = None,
    resume: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[float]:
    """Train `params` of `module` for `epochs` over `count` samples in a seeded shuffled order.

    batch_inputs(indices) -> the module's positional inputs; loss_fn(output, indices) (indices: a
    LongTensor) -> scalar loss.
    before_epoch(epoch) runs first in each epoch (e.g. switching to another augmented view);
    after_step runs after each optimiser step (e.g. re-applying pruning masks); after_epoch may return
    figures shown on the progress bar (e.g. validation accuracy); stop_when(epoch) (0-based, after
    after_epoch) ends training early when it returns True.
    save_state(state) gets, after each epoch, what `resume` needs to continue from there (optimiser,
    schedule, shuffling generator, losses so far) for the caller to store with the module's weights.
    shard (rank, world): under torchrun each process trains on its slice of every global batch
    (module wrapped in DistributedDataParallel by the caller, which averages the gradients).
    Returns the mean loss of each epoch run.
    """
    import torch

    rank, world = shard
    generator = torch.Generator().manual_seed(seed)
    opt = make_optimizer(optimizer, params, lr, weight_decay)
    steps_per_epoch = (count + batch_size - 1) // batch_size
    scheduler = make_scheduler(schedule, opt, lr, epochs * steps_per_epoch)
    history: list[float] = []
    first = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        history, first = list(resume["history"]), int(resume["epoch"])
        if first and stop_when is not None and stop_when(first - 1):
            return history  # the interrupted run had already stopped early
    with console.progress(description, total=epochs * steps_per_epoch) as bar:
        bar.advance(first * steps_per_epoch)
        for epoch in range(first, epochs):
            if before_epoch is not None:
                before_epoch(epoch)
            order = torch.randperm(count, generator=generator)
            total = 0.0
            for start in range(0, count, batch_size):
                indices = order[start : start + batch_size]
                if world > 1:
                    if len(indices) < world:
                        continue  # every process needs a share of the batch
                    indices = indices.tensor_split(world)[rank]
                loss = loss_fn(module(*batch_inputs(indices)), indices)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step()
                total += float(loss.detach()) * len(indices) * world
                bar.advance(epoch=epoch + 1, loss=float(loss.detach()))
            history.append(total / count)
            if after_epoch is not None:
                bar.advance(0, epoch=epoch + 1, loss=history[-1], **after_epoch(epoch))
            if save_state is not None:
                save_state(
                    {
                        "epoch": epoch + 1,
                        "history": history,
                        "optimizer": opt.state_dict(),
                        "scheduler": None if scheduler is None else scheduler.state_dict(),
                        "generator": generator.get_state(),
                    }
                )
            if stop_when is not None and stop_when(epoch):
                break
    return history


class BestKeeper:
    """Best-epoch selection and early stopping on a validation score (higher is better).

    Epochs are 1-based; epochs before `first_eligible` neither count as best nor for patience.
    With `samples` (the validation set's size, for an accuracy-like score), the kept epoch follows
    the one-standard-error rule: the latest epoch scoring within one standard error
    (sqrt(p(1-p)/samples)) of the best score so far, so that a lucky spike on a small validation
    set does not beat a later, better-trained epoch. Without it, the highest score is kept.
    Patience counts epochs since the highest score.
    """

    def __init__(self, module: Any, patience: int | None, first_eligible: int = 1, samples: int | None = None) -> None:
        self.module, self.patience, self.first_eligible, self.samples = module, patience, first_eligible, samples
        self.scores: list[float] = []
        self.best_epoch: int | None = None  # the epoch whose weights are kept
        self.top_epoch: int | None = None  # the epoch with the highest score
        self.best_score = float("-inf")  # the highest score
        self.best_state: dict[str, Any] = {}

    def tolerance(self) -> float:
        if not self.samples:
            return 0.0
        p = min(max(self.best_score, 0.0), 1.0)
        return math.sqrt(p * (1 - p) / self.samples)

    def update(self, epoch: int, score: float) -> None:
        self.scores.append(score)
        if epoch < self.first_eligible:
            return
        if score > self.best_score:
            self.best_score, self.top_epoch = score, epoch
        keep = score >= self.best_score - self.tolerance() if self.samples else epoch == self.top_epoch
        if keep:
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def should_stop(self, epoch: int) -> bool:
        if self.patience is None or self.top_epoch is None:
            return False
        return epoch - self.top_epoch >= self.patience

    def restore(self, last_epoch: int) -> None:
        """Put the best epoch's weights back unless the last epoch was the best."""
        if self.best_state and self.best_epoch != last_epoch:
            import torch

            with torch.no_grad():
                for name, tensor in self.module.state_dict().items():
                    tensor.copy_(self.best_state[name])

    def state(self) -> dict[str, Any]:
        return {
            "scores": self.scores,
            "best_epoch": self.best_epoch,
            "top_epoch": self.top_epoch,
            "best_score": self.best_score,
            "best_state": self.best_state,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.scores, self.best_epoch, self.top_epoch = list(state["scores"]), state["best_epoch"], state["top_epoch"]
        self.best_score, self.best_state = float(state["best_score"]), dict(state["best_state"])


# ---------------------------------------------------------------- fine-tuning after a transformation


@dataclass
class FinetuneResult:
    """What `finetune` did. Epoch numbers are 1-based."""

    loss: list[float] = field(default_factory=list)  # mean training loss of each epoch run
    val_accuracy: list[float] = field(default_factory=list)  # validation accuracy of each epoch (val_split > 0)
    epochs_run: int = 0
    best_epoch: int | None = None  # the epoch whose weights were kept (val_split > 0), else None (the last)
    stopped_early: bool = False

    def metrics(self) -> dict[str, Any]:
        """Figures for an artifact's metrics (lineage and summary)."""
        out: dict[str, Any] = {"finetune_epochs": self.epochs_run, "finetune_loss": [round(v, 5) for v in self.loss]}
        if self.val_accuracy:
            out.update(
                val_accuracy=[round(v, 4) for v in self.val_accuracy],
                best_epoch=self.best_epoch,
                stopped_early=self.stopped_early,
            )
        return out


def set_mode(module: Any, training: bool) -> None:
    """train() / eval() where the module supports them: an eager nn.Module (BatchNorm learns batch
    statistics while fine-tuning); an ExportedProgram's module raises NotImplementedError and keeps
    its BatchNorm in inference mode."""
    try:
        module.train(training)
    except NotImplementedError:
        pass


def finetune_train_size(count: int, val_split: float) -> int:
    """How many of `count` samples `finetune` trains on (the rest validates); steps per epoch are
    ceil(this / batch_size)."""
    return count - validation_size(count, val_split)


def finetune(
    module: Any,
    teacher: Any | None,
    train: tuple[Any, Any],
    spec: Any,
    seed: int,
    after_step: Callable[[], None] | None = None,
    *,
    first_eligible_epoch: int = 1,
    description: str = "fine-tuning",
) -> FinetuneResult:
    """Fine-tune `module` in place on labelled data, as a FinetuneSpec (recipes.py) asks.

    module: a torch module taking one input tensor and returning logits (an ExportedProgram's
        .module() or an nn.Module; all its parameters are trained). An nn.Module trains in train mode
        and is validated and left in eval mode; an exported module cannot switch (see set_mode).
    teacher: None, or a module (e.g. a deep copy of the model before the transformation) whose logits
        become soft targets when spec.distill is true (kd loss: soft_weight * T² * KL + (1 - soft_weight) * CE).
        Its logits are computed once, up front.
    train: (inputs, labels) tensors, inputs already in the module's layout, labels int64 class ids.
    spec: FinetuneSpec — epochs, lr, batch_size, optimizer, schedule, val_split, patience, distill,
        temperature, soft_weight. val_split holds out the last fraction of a seeded permutation; after
        each epoch the validation accuracy is measured, the best epoch's weights are restored at the
        end and `patience` epochs without improvement stop training.
    after_step: runs after every optimiser step (re-apply pruning masks, raise a sparsity schedule).
    first_eligible_epoch: epochs before it (1-based) neither count as "best" nor for patience (e.g.
        while a gradual pruning schedule is still raising sparsity).
    """

    import torch

    x_all, y_all = train
    count = len(x_all)
    # fit shuffles; both parts keep the sample order of the file
    train_order, val_order = validation_split(count, spec.val_split, seed, generator="torch")
    train_idx, val_idx, n_val = torch.from_numpy(train_order), torch.from_numpy(val_order), len(val_order)
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    soft = None
    if spec.distill:
        if teacher is None:
            raise ValueError("finetune: spec.distill needs a teacher module")
        soft = batch_outputs(teacher, x_train)

    def loss_fn(out: Any, idx: Any) -> Any:
        if soft is None:
            return torch.nn.functional.cross_entropy(out, y_train[idx])
        return kd_loss(out, soft[idx], y_train[idx], spec.temperature, spec.soft_weight)

    result = FinetuneResult()
    keeper = BestKeeper(module, spec.patience, first_eligible_epoch)

    def validate(epoch: int) -> dict[str, float]:
        if not n_val:
            return {}
        set_mode(module, training=False)
        preds = batch_outputs(module, val_idx, tensor=lambda idx: x_all[idx], keep=top1)
        set_mode(module, training=True)
        value = float((preds == y_all[val_idx]).float().mean())
        keeper.update(epoch + 1, value)
        return {"val_acc": value}

    set_mode(module, training=True)
    result.loss = fit(
        module,
        list(module.parameters()),
        len(x_train),
        lambda idx: [x_train[idx]],
        loss_fn,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        optimizer=spec.optimizer,
        schedule=spec.schedule,
        seed=seed,
        description=description,
        after_step=after_step,
        after_epoch=validate,
        stop_when=lambda epoch: bool(n_val) and keeper.should_stop(epoch + 1),
    )
    set_mode(module, training=False)
    result.epochs_run = len(result.loss)
    result.stopped_early = result.epochs_run < spec.epochs
    result.val_accuracy, result.best_epoch = keeper.scores, keeper.best_epoch
    keeper.restore(result.epochs_run)
    return result
