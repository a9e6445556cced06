"""prune method channel: structured pruning with Torch-Pruning's dependency graph.

Whole channels (with everything that depends on them: batch norms, the next layer's inputs, both
sides of a residual add) are removed, so the result is a physically smaller dense model. The .pt2
program is lifted to an eager module (prune_lift), pruned to a channel ratio or searched to a MAC or
parameter budget, fine-tuned (optionally distilled from the unpruned model, early-stopped on a
validation split) and exported again with a dynamic batch.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import numpy as np

from edgecli.core import console
from edgecli.core.errors import BackendMissing, RecipeError, TransformError, UsageError, last_line
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.models.lift import failing_node, lift, lift_difference, prove, recurrent_layers, where
from edgecli.recipes import PruneRecipe
from edgecli.stages.artifact import Artifact
from edgecli.training.loop import batch_outputs, finetune, seed_everything

LIFT_ATOL = 1e-5
EXPORT_ATOL = 1e-4
TAYLOR_BATCHES = 8
SEARCH_ITERATIONS = 6
SEARCH_GRID = 0.1
EVAL_BATCH = 256


# ------------------------------------------------------------------ model facts


def _copy(module: Any) -> Any:
    """A deep copy of a (lifted) module with its parameters' gradients (a GraphModule's deepcopy rebuilds
    it from its state and drops .grad, which Taylor importance reads: the search's trial copies need
    them); torch's pytree deprecation warnings on the copy are muted."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        copied = copy.deepcopy(module)
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    for name, param in copied.named_parameters():
        if name in grads and param.grad is None:
            param.grad = grads[name].detach().clone()
    return copied


def _prunable(module: Any) -> dict[str, Any]:
    """name -> conv / linear module (the layers whose width changes)."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return {name: m for name, m in module.named_modules() if isinstance(m, kinds)}


def _width(layer: Any) -> int:
    return int(getattr(layer, "out_channels", getattr(layer, "out_features", 0)))


def _state_count(module: Any) -> int:
    """Parameters (BatchNorm running statistics not included), as `edgecli inspect` counts a .pt2."""
    return sum(p.numel() for p in module.parameters())


def _macs(module: Any, sample: Any) -> int:
    """MACs of one sample: torch's FlopCounterMode FLOPs / 2 (as model_stats.pt2_macs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(sample)
    module.train(was_training)
    return int(counter.get_total_flops()) // 2


def _output_layers(lifted: Any) -> set[str]:
    """Conv/linear layers with no other conv/linear after them: they produce the model's outputs."""
    prunable = set(_prunable(lifted))
    finals = set()
    for node in lifted.graph.nodes:
        if node.op != "call_module" or node.target not in prunable:
            continue
        seen, todo, downstream = set(), list(node.users), False
        while todo and not downstream:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module" and user.target in prunable:
                downstream = True
            todo.extend(user.users)
        if not downstream:
            finals.add(node.target)
    return finals


def _upstream_layers(lifted: Any, node: Any) -> list[str]:
    """The nearest conv/linear layers that feed `node`."""
    prunable = set(_prunable(lifted))
    found, seen, todo = [], set(), list(node.all_input_nodes)
    while todo:
        arg = todo.pop()
        if arg in seen:
            continue
        seen.add(arg)
        if arg.op == "call_module" and arg.target in prunable:
            found.append(arg.target)
        else:
            todo.extend(arg.all_input_nodes)
    return sorted(set(found))


def _kept(lifted: Any, keep: list[str]) -> set[str]:
    """Layer names matched by keep_layers (a name or a container prefix). UsageError for unknown names."""
    names = list(_prunable(lifted))
    kept = set()
    for wanted in keep:
        matched = [n for n in names if n == wanted or n.startswith(wanted + ".")]
        if not matched:
            close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.3)
            shown = close or names[:8]
            raise UsageError(
                f"channel.keep_layers: no layer named '{wanted}'",
                hint=f"{'close' if close else 'layers'}: {', '.join(shown)}",
            )
        kept.update(matched)
    return kept


def _fixed_batch(runner: Any) -> int | None:
    """The batch size a program was exported for, or None for a dynamic batch."""
    shape = runner.inputs[0].shape
    return shape[0] if shape and isinstance(shape[0], int) else None


def _lifted(runner: Any, x: Any, example: Any) -> Any:
    """The program lifted to eager modules, proven against the program on every node at the program's
    batch, and able to run the two-row example Torch-Pruning traces (a fixed-batch program's literal
    batch sizes are taken from the input). TransformError names the first node that differs."""
    lifted = lift(runner.module)
    batch = _fixed_batch(runner)
    prove(lifted, runner.module, [x[: batch or 2]], LIFT_ATOL)
    if batch is not None and batch != len(example):
        failure = failing_node(lifted, [example])
        if failure is not None:
            node, error = failure
            raise TransformError(
                f"the program was exported for a fixed batch of {batch} and {where(node)} keeps it "
                f"({node.target}: {last_line(error, 160)})",
                hint="export the model with a dynamic batch: torch.export.export(..., dynamic_shapes=...)",
            )
    return lifted


def _check_something_to_prune(lifted: Any, outputs: set[str], kept: set[str], recurrent: list[str]) -> None:
    """Refuse (TransformError: exit 4, before any work, nothing written) a model in which every conv and
    dense layer is kept: the result would be the input, and the recipe's target cannot be met. Warn that
    recurrent layers keep their width when other layers can still be pruned."""
    why_recurrent = (
        f"recurrent layers keep their width ({', '.join(recurrent)}): Torch-Pruning prunes neither GRU/RNN "
        "nor a multi-layer nn.LSTM, and edgecli does not lift them out of a .pt2"
    )
    free = set(_prunable(lifted)) - outputs - kept
    if free:
        if recurrent:
            console.warn(why_recurrent)
        return
    reasons = []
    if outputs:
        reasons.append(f"{', '.join(sorted(outputs))} {'produce' if len(outputs) > 1 else 'produces'} the output")
    if kept - outputs:
        reasons.append(f"channel.keep_layers keeps {', '.join(sorted(kept - outputs))}")
    if recurrent:
        reasons.append(why_recurrent)
    raise TransformError(
        f"structured pruning has nothing to remove: {'; '.join(reasons)}",
        hint="zero weights instead (--set method=magnitude), distill a smaller student, or quantize",
    )


# ------------------------------------------------------------------ data


def _tensor(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


def _inputs(runner_feeds: Any, name: str, data: Dataset) -> Any:
    return _tensor(runner_feeds(data.batch(0, len(data)))[name])


def _first_output(out: Any) -> Any:
    return (out[0] if isinstance(out, (list, tuple)) else out).float()


def _predict(module: Any, x: Any) -> np.ndarray:
    was_training = module.training
    module.eval()
    outputs = batch_outputs(module, x, EVAL_BATCH, keep=_first_output)
    module.train(was_training)
    return outputs.numpy()


def _accuracy(module: Any, x: Any, y: Any) -> float:
    from edgecli.analysis.metrics import accuracy

    return accuracy(_predict(module, x), y.numpy())  # NaN/Inf outputs count as wrong


# ------------------------------------------------------------------ pruning


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=1)


def _pruner_class() -> type:
    import torch_pruning as tp

    class Pruner(tp.pruner.BasePruner):
        """BasePruner whose round_to rounds the kept channels to the nearest multiple (Torch-Pruning
        rounds down, which empties a small layer: 6 of 64 kept -> 0) and never below one multiple."""

        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            if current_channels <= round_to:
                return 0
            kept = max(round_to, round((current_channels - n_pruned) / round_to) * round_to)
            return max(current_channels - kept, 0)

    return Pruner


def _pruner(module: Any, example: Any, recipe: PruneRecipe, ratio: float, ignored: set[str], steps: int) -> Any:
    layers = dict(module.named_modules())
    spec = recipe.channel
    with console.muted():
        return _pruner_class()(
            module,
            example,
            importance=_importance(spec.importance),
            global_pruning=recipe.scope == "global",
            pruning_ratio=ratio,
            max_pruning_ratio=spec.max_layer_ratio,
            iterative_steps=steps,
            ignored_layers=[layers[name] for name in sorted(ignored)],
            round_to=spec.round_to,
        )


def _taylor_gradients(module: Any, x: Any, y: Any, batch_size: int) -> None:
    """Accumulate loss gradients on a few labelled batches (Taylor importance reads weight.grad)."""
    import torch

    was_training = module.training
    module.eval()
    module.zero_grad(set_to_none=True)
    for start in range(0, min(len(x), TAYLOR_BATCHES * batch_size), batch_size):
        out = module(x[start : start + batch_size])
        torch.nn.functional.cross_entropy(out, y[start : start + batch_size]).backward()
    module.train(was_training)


def _step(pruner: Any, module: Any, example: Any) -> None:
    """One pruning step, then a run that proves the shapes still fit. TransformError names the layer."""
    try:
        with console.muted():
            pruner.step()
    except Exception as exc:  # Torch-Pruning raises assorted errors on constructs it cannot follow
        raise TransformError(
            f"Torch-Pruning could not prune this model: {last_line(exc, 200)}",
            hint="keep the layers involved with channel.keep_layers",
        ) from None
    failure = failing_node(module, [example])
    if failure is not None:
        node, error = failure
        feeding = _upstream_layers(module, node)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        after = f" after layer {', '.join(feeding)}" if feeding else ""
        raise TransformError(
            f"structured pruning cannot follow the pruned channels through {where(node)}{after} "
            f"({node.target}: {first})",
            hint=f"keep the layers feeding it: channel.keep_layers: [{', '.join(feeding)}]" if feeding else None,
        )


def _measure(module: Any, target: str, sample: Any) -> int:
    return _macs(module, sample) if target == "macs" else _state_count(module)


def _search_ratio(
    lifted: Any,
    example: Any,
    recipe: PruneRecipe,
    ignored: set[str],
    target: str,
    fraction: float,
    sample: Any,
) -> tuple[float, list[dict[str, float]]]:
    """The smallest pruning ratio whose one-shot result has at most `fraction` of the dense MACs/params
    (bisection on copies). Returns the ratio and the search steps."""
    dense = _measure(lifted, target, sample)
    cache: dict[float, float] = {}

    def reached(ratio: float) -> float:
        if ratio not in cache:
            trial = _copy(lifted)
            _step(_pruner(trial, example, recipe, ratio, ignored, 1), trial, example)
            cache[ratio] = _measure(trial, target, sample) / dense
        return cache[ratio]

    ceiling = min(0.95, recipe.channel.max_layer_ratio if recipe.scope == "layer" else 0.95)
    low, high = 0.0, None
    for step in range(1, int(ceiling / SEARCH_GRID) + 1):  # coarse scan upwards: past the target, results
        ratio = round(step * SEARCH_GRID, 4)  # can turn non-monotonic (layers hit max_layer_ratio, rounding)
        if reached(ratio) <= fraction:
            high = ratio
            break
        low = ratio
    if high is None:
        return low, [{"ratio": round(r, 4), f"{target}_ratio": round(v, 4)} for r, v in sorted(cache.items())]
    for _ in range(SEARCH_ITERATIONS):
        middle = (low + high) / 2
        if reached(middle) <= fraction:
            high = middle
        else:
            low = middle
        if high - low < 0.004:
            break
    return high, [{"ratio": round(r, 4), f"{target}_ratio": round(v, 4)} for r, v in sorted(cache.items())]


# ------------------------------------------------------------------ fine-tuning


def _split_epochs(epochs: int, steps: int) -> list[int]:
    """Fine-tuning epochs after each pruning step (the remainder after the last steps)."""
    base, extra = divmod(epochs, steps)
    return [base + (1 if i >= steps - extra else 0) for i in range(steps)]


# ------------------------------------------------------------------ the stage


def structured_prune(
    model: ModelFile, recipe: PruneRecipe, train: Dataset | None, eval_data: Dataset | None
) -> Artifact:
    """Remove whole channels of a .pt2 model to the recipe's target; fine-tune; export again."""
    import torch

    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise BackendMissing("structured pruning needs Torch-Pruning", hint="pip install torch-pruning") from None
    from edgecli.formats.state_dict_file import export_difference, export_program
    from edgecli.runtimes.torch_runner import TorchRunner

    if model.format is not Format.PT2:
        raise UsageError(f"channel pruning reads .pt2 programs or state_dicts; {model.path} is {model.format.value}")
    spec, tune = recipe.channel, recipe.finetune  # one target, patience with val_split: PruneRecipe checks
    seed_everything(recipe.seed)
    runner = TorchRunner(model)
    if len(runner.inputs) != 1:
        raise UsageError("channel pruning supports single-input models for now")
    name = runner.inputs[0].name
    data = train if train is not None else eval_data
    needs_labels = spec.importance == "taylor" or tune.epochs > 0
    if needs_labels and (train is None or train.labels is None):
        what = "Taylor importance" if spec.importance == "taylor" else "fine-tuning"
        raise UsageError(f"{what} needs labelled training data", hint="pass --data train.npz with 'y' labels")
    if data is None:
        raise UsageError("channel pruning needs example inputs to trace the model", hint="pass --data or --eval-data")

    x_train = _inputs(runner.feeds, name, train) if train is not None else None
    y_train = _tensor(train.labels).long() if train is not None and train.labels is not None else None
    x_eval = _inputs(runner.feeds, name, eval_data) if eval_data is not None and eval_data.labels is not None else None
    y_eval = _tensor(eval_data.labels).long() if eval_data is not None and eval_data.labels is not None else None
    x_any = x_train if x_train is not None else _inputs(runner.feeds, name, data)
    example = torch.cat([x_any[:2], x_any[:1]])[:2].clone()
    sample = example[:1].clone()

    lifted = _lifted(runner, x_any, example)
    difference = lift_difference(lifted, runner.module, [x_any[:64]], _fixed_batch(runner))
    if difference > LIFT_ATOL:
        raise TransformError(f"the lifted module differs from the program: max abs diff {difference:.3g}")
    outputs = _output_layers(lifted)
    kept_by_recipe = _kept(lifted, spec.keep_layers)
    ignored = outputs | kept_by_recipe
    recurrent = recurrent_layers(lifted)
    _check_something_to_prune(lifted, outputs, kept_by_recipe, recurrent)
    widths_before = {n: _width(m) for n, m in _prunable(lifted).items()}
    params_before, macs_before = _state_count(lifted), _macs(lifted, sample)
    accuracy_before = _accuracy(lifted, x_eval, y_eval) if x_eval is not None else None
    teacher = _copy(lifted).eval() if tune.distill and tune.epochs else None

    if spec.importance == "taylor":
        _taylor_gradients(lifted, x_train, y_train, tune.batch_size)
    search: list[dict[str, float]] = []
    if spec.ratio is not None:
        ratio = spec.ratio
    else:
        target = "macs" if spec.macs_ratio is not None else "params"
        fraction = spec.macs_ratio if spec.macs_ratio is not None else spec.params_ratio
        if fraction is None:  # PruneRecipe requires one target: only an unvalidated recipe gets here
            raise RecipeError(
                "method channel needs exactly one target: channel.ratio, channel.macs_ratio or channel.params_ratio"
            )
        console.info(f"searching the pruning ratio for {target} <= {fraction:g}x")
        ratio, search = _search_ratio(lifted, example, recipe, ignored, target, fraction, sample)
        console.info(f"pruning ratio {ratio:.3f} meets {target} <= {fraction:g}x ({len(search)} trials)")

    pruner = _pruner(lifted, example, recipe, ratio, ignored, spec.steps)
    history: dict[str, Any] = {"loss": [], "val_accuracy": [], "epochs": 0}
    accuracy_pruned = None
    for i, epochs in enumerate(_split_epochs(tune.epochs, spec.steps)):
        if spec.importance == "taylor" and i:
            _taylor_gradients(lifted, x_train, y_train, tune.batch_size)
        _step(pruner, lifted, example)
        if spec.importance == "taylor":
            lifted.zero_grad(set_to_none=True)
        if i == spec.steps - 1 and x_eval is not None:
            accuracy_pruned = _accuracy(lifted, x_eval, y_eval)
        if epochs:
            label = "fine-tuning" if spec.steps == 1 else f"fine-tuning (step {i + 1}/{spec.steps})"
            # the same seed each step: the same validation split (never trained on)
            done = finetune(
                lifted,
                teacher,
                (x_train, y_train),
                tune.model_copy(update={"epochs": epochs}),
                recipe.seed,
                description=label,
            )
            history["loss"] += done.loss
            history["val_accuracy"] += done.val_accuracy
            history["epochs"] += done.epochs_run
    lifted.eval()

    program, dynamic = export_program(lifted, example, True)
    for node in program.graph.nodes:  # provenance records id()s of in-memory graphs: not reproducible bytes
        node.meta.pop("from_node", None)
    exported = export_difference(lifted, program, x_any[:64])
    if exported > EXPORT_ATOL:
        raise TransformError(f"the pruned module did not export faithfully: max abs diff {exported:.3g}")

    params_after, macs_after = _state_count(lifted), _macs(lifted, sample)
    widths_after = {n: _width(m) for n, m in _prunable(lifted).items()}
    if widths_after == widths_before:
        raise TransformError(
            f"structured pruning removed no channel at ratio {ratio:.3g} (round_to {spec.round_to}, "
            f"max_layer_ratio {spec.max_layer_ratio:g}): nothing was written",
            hint="raise channel.ratio, or lower channel.round_to for layers this narrow",
        )
    metrics: dict[str, Any] = {
        "method": "channel",
        "importance": spec.importance,
        "pruning_ratio": round(ratio, 4),
        "params_before": params_before,
        "params": params_after,
        "params_ratio": params_after / params_before,
        "macs_before": macs_before,
        "macs": macs_after,
        "macs_ratio": macs_after / macs_before,
        "lift_max_abs_diff": difference,
        "layers": {n: f"{widths_before[n]} -> {w}" for n, w in widths_after.items() if w != widths_before.get(n)},
        "kept_layers": sorted(ignored),
    }
    if recurrent:
        metrics["kept_recurrent"] = recurrent
    if not dynamic:
        metrics["export_batch"] = "1"
    if history["epochs"]:
        metrics["finetune_epochs"] = history["epochs"]
        metrics["finetune_loss"] = [round(v, 5) for v in history["loss"]]
        if history["val_accuracy"]:
            metrics["finetune_val_accuracy"] = [round(v, 4) for v in history["val_accuracy"]]
    if accuracy_before is not None:
        after = _accuracy(lifted, x_eval, y_eval)
        metrics.update(
            accuracy_before=accuracy_before,
            accuracy_pruned=accuracy_pruned,
            accuracy=after,
            accuracy_drop=accuracy_before - after,
        )
    failures = []
    for key, budget in (("macs_ratio", spec.macs_ratio), ("params_ratio", spec.params_ratio)):
        if budget is not None and metrics[key] > budget + 1e-9:
            failures.append(
                f"{key} {metrics[key]:.3f} > {budget:g} (max_layer_ratio {spec.max_layer_ratio:g} or "
                "keep_layers limit the pruning)"
            )
    console.info(
        f"removed channels: params {params_before:,} -> {params_after:,} ({metrics['params_ratio']:.2f}x), "
        f"MACs {macs_before:,} -> {macs_after:,} ({metrics['macs_ratio']:.2f}x)"
    )
    report = {"search": search} if search else None
    return Artifact(Format.PT2, program, metrics, gate_failures=failures, report=report)
