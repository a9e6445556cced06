"""Best-epoch selection: the one-standard-error rule on a small validation set, and patience."""

from __future__ import annotations

import torch

from edgecli.training.loop import BestKeeper

# Validation accuracy of 30 distillation epochs on 500 held-out images (benchmarks/distill.py, seed 2
# before this rule): a spike at epoch 11 (0.924), mid-schedule, scored 87.5% on the test images
# against about 90% for the final epoch (0.92).
SCORES = [
    0.674,
    0.782,
    0.824,
    0.868,
    0.886,
    0.868,
    0.882,
    0.886,
    0.89,
    0.902,
    0.924,
    0.88,
    0.902,
    0.894,
    0.92,
    0.918,
    0.908,
    0.906,
    0.916,
    0.916,
    0.916,
    0.918,
    0.91,
    0.922,
    0.914,
    0.918,
    0.92,
    0.922,
    0.922,
    0.92,
]


def _run(keeper: BestKeeper, module: torch.nn.Linear, scores: list[float]) -> None:
    for epoch, score in enumerate(scores, 1):
        with torch.no_grad():
            module.weight.fill_(epoch)  # the weights remember their epoch
        keeper.update(epoch, score)


def test_one_standard_error_rule_keeps_the_latest_epoch_within_noise():
    module = torch.nn.Linear(1, 1)
    keeper = BestKeeper(module, patience=None, samples=500)
    _run(keeper, module, SCORES)
    assert keeper.top_epoch == 11 and keeper.best_epoch == 30
    assert abs(keeper.tolerance() - (0.924 * 0.076 / 500) ** 0.5) < 1e-12
    keeper.restore(last_epoch=30)
    assert float(module.weight.detach()) == 30

    strict = BestKeeper(module, patience=None)
    _run(strict, module, SCORES)
    strict.restore(last_epoch=30)
    assert strict.best_epoch == 11 and float(module.weight.detach()) == 11  # the weights of epoch 11 come back


def test_patience_counts_from_the_highest_score():
    module = torch.nn.Linear(1, 1)
    keeper = BestKeeper(module, patience=3, samples=500)
    _run(keeper, module, [0.5, 0.8, 0.79, 0.78, 0.79])
    assert keeper.should_stop(5) and not keeper.should_stop(4)
    assert keeper.best_epoch == 5  # 0.79 is within one standard error (0.018) of 0.8
