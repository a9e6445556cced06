"""Lift a .pt2 program back into an eager module Torch-Pruning can prune (channel pruning) and distill
can train (a .pt2 student).

`torch.export.load(p).module()` is a GraphModule whose convolutions, dense layers and batch norms are
aten call_function nodes on get_attr parameters: Torch-Pruning finds no nn.Conv2d / nn.Linear in it.
`lift` rebuilds the graph with those nodes as call_module nodes on real nn.Conv*d / nn.Linear /
nn.BatchNorm*d modules carrying the same tensors, named after the user's module paths ("0",
"features.2", "layer1.0.conv1"), so that keep_layers and reports speak the user's names. Literal
shapes that would pin a channel count (view(x, [s0, 128]) before a classifier) are rewritten to
follow the tensor (flatten(x, 1)). The lifted module computes exactly
what the program computes (checked by `lift_difference`), and BatchNorm follows train()/eval().
"""

from __future__ import annotations

import copy
import operator
from math import prod
from typing import Any

from edgecli.core.errors import TransformError, last_line

LIFTED_PREFIX = "lifted"


def _aten() -> dict[Any, str]:
    import torch

    aten = torch.ops.aten
    return {
        aten.conv1d.default: "conv",
        aten.conv2d.default: "conv",
        aten.conv3d.default: "conv",
        aten.convolution.default: "convolution",
        aten.linear.default: "linear",
        aten.batch_norm.default: "batch_norm",
        aten._native_batch_norm_legit_no_training.default: "native_batch_norm",
    }


def _reshape_ops() -> set[Any]:
    import torch

    aten = torch.ops.aten
    return {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _arg(node: Any, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _val(node: Any) -> Any:
    return node.meta.get("val") if hasattr(node, "meta") else None


def _stack_path(node: Any) -> str:
    """The user's module path of the innermost module that made this node ('' for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _kind in reversed(list(stack.values())):
        if isinstance(path, str) and not path.startswith("_empty"):
            return path
    return ""


def where(node: Any) -> str:
    """'layer1.0.conv1 (node conv2d_1)': how a node is named in messages."""
    path = _stack_path(node)
    return f"{path} (node {node.name})" if path else f"node {node.name}"


class _Namer:
    """Unique dotted module names from parameter targets ('0.weight' -> '0') or module paths."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def name(self, node: Any, weight: Any) -> str:
        base = ""
        target = getattr(weight, "target", None) if weight is not None else None
        for suffix in (".weight", ".running_mean"):
            if isinstance(target, str) and target.endswith(suffix):
                base = target[: -len(suffix)]
        base = base or _stack_path(node) or f"{LIFTED_PREFIX}_{node.name}"
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def _set_path(root: Any, dotted: str, value: Any) -> None:
    """Register `value` (module, parameter or buffer) at `dotted`, creating plain containers on the way."""
    import torch
    from torch import nn

    *parents, last = dotted.split(".")
    owner = root
    for part in parents:
        child = getattr(owner, part, None) if part in owner._modules else None
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    if isinstance(value, nn.Module):
        owner.add_module(last, value)
    elif isinstance(value, nn.Parameter):
        owner.register_parameter(last, value)
    elif isinstance(value, torch.Tensor):
        owner.register_buffer(last, value)
    else:
        setattr(owner, last, value)


def _fetch(gm: Any, node: Any) -> Any:
    """The tensor a get_attr node reads, or None if the argument is not a plain get_attr."""
    if node is None or getattr(node, "op", None) != "get_attr":
        return None
    value: Any = gm
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def _attr(gm: Any, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _as_param(tensor: Any) -> Any:
    from torch import nn

    return tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor.detach().clone(), requires_grad=True)


def _conv_module(gm: Any, node: Any, kind: str) -> Any:
    from torch import nn

    weight = _fetch(gm, node.args[1])
    bias_node = _arg(node, 2, "bias", None)
    bias = _fetch(gm, bias_node)
    if weight is None or (bias_node is not None and bias is None):
        return None
    if kind == "convolution":
        stride, padding, dilation = node.args[3], node.args[4], node.args[5]
        transposed, groups = node.args[6], node.args[8]
        if transposed:
            return None
    else:
        stride = _arg(node, 3, "stride", 1)
        padding = _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
        groups = _arg(node, 6, "groups", 1)
    dims = weight.dim() - 2
    classes: dict[int, type[nn.Conv1d] | type[nn.Conv2d] | type[nn.Conv3d]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    cls = classes.get(dims)
    if cls is None or not isinstance(groups, int):
        return None
    module = cls(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias is not None,
    )
    module.weight = _as_param(weight)
    if bias is not None:
        module.bias = _as_param(bias)
    return module


def _linear_module(gm: Any, node: Any) -> Any:
    from torch import nn

    weight = _fetch(gm, node.args[1])
    bias_node = _arg(node, 2, "bias", None)
    bias = _fetch(gm, bias_node)
    if weight is None or weight.dim() != 2 or (bias_node is not None and bias is None):
        return None
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    module.weight = _as_param(weight)
    if bias is not None:
        module.bias = _as_param(bias)
    return module


def _bn_module(gm: Any, node: Any, kind: str) -> Any:
    from torch import nn

    x = node.args[0]
    weight, bias = _fetch(gm, node.args[1]), _fetch(gm, node.args[2])
    mean, var = _fetch(gm, node.args[3]), _fetch(gm, node.args[4])
    if (
        mean is None
        or var is None
        or (node.args[1] is not None and weight is None)
        or (node.args[2] is not None and bias is None)
    ):
        return None
    if (weight is None) != (bias is None):
        return None
    if kind == "batch_norm":
        if node.args[5]:  # exported in training mode: leave it as it is
            return None
        momentum, eps = node.args[6], node.args[7]
    else:
        momentum, eps = node.args[5], node.args[6]
    rank = _val(x).dim() if _val(x) is not None else 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
    if cls is None:
        return None
    module = cls(mean.shape[0], eps=eps, momentum=momentum, affine=weight is not None)
    if weight is not None:
        module.weight, module.bias = _as_param(weight), _as_param(bias)
    module.running_mean = mean
    module.running_var = var
    owner, _, _ = node.args[3].target.rpartition(".")
    tracked = _attr(gm, f"{owner}.num_batches_tracked" if owner else "num_batches_tracked")
    if tracked is not None:
        module.num_batches_tracked = tracked
    return module


def _follows(in_val: Any, out_val: Any) -> bool:
    """Whether a reshape is a per-sample flatten ([n, C, H, W] -> [n, C*H*W], written with literal
    sizes or -1) that can become flatten(x, 1) and follow pruned channels. Decided on the program's
    real shapes (the nodes' fake tensors), not on the literals. Other reshapes (a channel shuffle's
    [n, g, C/g, H, W]) stay as they are: after pruning they fail, and the failure names them."""
    if in_val is None or out_val is None:
        return False
    in_shape, out_shape = list(in_val.shape), list(out_val.shape)
    return (
        len(out_shape) == 2
        and len(in_shape) > 2
        and str(in_shape[0]) == str(out_shape[0])
        and str(out_shape[1]) == str(prod(in_shape[1:]))
    )


def _fixed_batch(shape: Any, in_val: Any, out_val: Any) -> bool:
    """Whether a reshape's first size is a literal batch ([1, 2, 8, H, W] of a program exported for a
    fixed batch of 1) or a -1 that stands for the batch ([-1, 256] where the input's first size is the
    output's): the lifted module takes it from its input instead, so that a reshape that cannot follow
    pruned channels fails (and names itself) rather than folding the batch into rows silently."""
    if in_val is None or out_val is None or not isinstance(shape, (list, tuple)) or not shape:
        return False
    if not in_val.dim() or not out_val.dim() or not isinstance(shape[0], int):
        return False
    first, n_in, n_out = shape[0], in_val.shape[0], out_val.shape[0]
    if first == -1:
        return str(n_in) == str(n_out)
    return isinstance(n_in, int) and first == n_in == n_out


def _permuted(node: Any) -> bool:
    """Whether the tensor a reshape reads went through a permute/transpose since the last conv or dense
    layer: a flatten of it is not channel-major (C, H, W), so Torch-Pruning's index mapping through
    flatten would remove the wrong inputs of the next layer."""
    import torch

    aten = torch.ops.aten
    moves = {aten.permute.default, aten.transpose.int, aten.t.default, aten.movedim.int, aten.swapaxes.default}
    stops = set(_aten())
    seen, todo = set(), [node.args[0]]
    while todo:
        arg = todo.pop()
        if arg in seen or getattr(arg, "op", None) != "call_function":
            continue
        seen.add(arg)
        if arg.target in moves:
            return True
        if arg.target not in stops:
            todo.extend(a for a in arg.all_input_nodes if a.op == "call_function")
    return False


def lift(gm: Any) -> Any:
    """An eager torch.fx.GraphModule equivalent to `gm` (an unlifted `program.module()`), with aten conv,
    linear and batch-norm nodes on parameters turned into nn modules. Raises TransformError."""
    import torch
    from torch import fx, nn

    kinds = _aten()
    reshapes = _reshape_ops()
    root = nn.Module()
    graph = fx.Graph()
    env: dict[Any, Any] = {}
    namer = _Namer()
    by_weight: dict[str, tuple[str, Any]] = {}  # weight target -> (module name, node kind)
    native_outputs: dict[Any, Any] = {}
    lifted_names: dict[str, str] = {}  # module name -> node name
    origin: dict[str, str] = {}  # lifted node name -> the program node it computes

    def remap(arg: Any) -> Any:
        return fx.node.map_arg(arg, lambda n: env[n])

    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == "_guards_fn":
            continue
        if node.op == "get_attr":
            continue  # materialised lazily below, only if still used
        kind = kinds.get(node.target) if node.op == "call_function" else None
        module = None
        if kind in ("conv", "convolution"):
            module = _conv_module(gm, node, kind)
        elif kind == "linear":
            module = _linear_module(gm, node)
        elif kind in ("batch_norm", "native_batch_norm"):
            module = _bn_module(gm, node, kind)
        if module is not None:
            weight_node = node.args[1] if kind != "batch_norm" and kind != "native_batch_norm" else node.args[3]
            key: str = weight_node.target  # a get_attr node: the module was built from the tensor it reads
            if key in by_weight:
                name = by_weight[key][0]
                if by_weight[key][1] != kind:
                    raise TransformError(
                        f"the weights of {where(node)} are shared with another kind of layer; "
                        "structured pruning cannot change one without the other"
                    )
            else:
                name = namer.name(
                    node,
                    weight_node
                    if kind in ("batch_norm", "native_batch_norm") and node.args[1] is None
                    else node.args[1],
                )
                _set_path(root, name, module)
                by_weight[key] = (name, kind)
                lifted_names[name] = node.name
            new = graph.call_module(name, (remap(node.args[0]),))
            new.meta = copy.copy(node.meta)
            origin[new.name] = node.name
            if kind == "native_batch_norm":
                native_outputs[node] = new
                env[node] = new  # only getitem 0 is allowed below
            else:
                env[node] = new
            continue
        if node.op == "call_function" and node.target is operator.getitem and node.args[0] in native_outputs:
            if node.args[1] != 0:
                raise TransformError(f"{where(node)} reads the batch statistics of a batch norm; cannot lift it")
            env[node] = native_outputs[node.args[0]]
            origin[env[node].name] = node.name  # the batch norm's output is getitem 0 of the program's node
            continue
        if (
            node.op == "call_function"
            and node.target in reshapes
            and _follows(_val(node.args[0]), _val(node))
            and not _permuted(node)
        ):
            new = graph.call_function(torch.ops.aten.flatten.using_ints, (env[node.args[0]], 1))
            new.meta = copy.copy(node.meta)
            env[node] = new
            origin[new.name] = node.name
            continue
        if (
            node.op == "call_function"
            and node.target in reshapes
            and _fixed_batch(node.args[1], _val(node.args[0]), _val(node))
        ):
            source = env[node.args[0]]
            size = graph.call_function(torch.ops.aten.sym_size.int, (source, 0))
            new = graph.call_function(node.target, (source, [size, *node.args[1][1:]]))
            new.meta = copy.copy(node.meta)
            env[node] = new
            origin[new.name] = node.name
            continue
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and arg not in env:
                tensor = _fetch(gm, arg)
                _set_path(root, arg.target, tensor)
                attr = graph.get_attr(arg.target)
                attr.meta = copy.copy(arg.meta)
                env[arg] = attr
        env[node] = graph.node_copy(node, lambda n: env[n])
        origin[env[node].name] = node.name
    graph._codegen = gm.graph._codegen  # pytree in/out specs: same call signature as the program
    graph.lint()
    lifted = fx.GraphModule(root, graph, class_name="LiftedModule")
    # torch types Module attributes as Tensor | Module; any other value is a plain attribute at runtime
    lifted.edgecli_lifted = lifted_names  # type: ignore[assignment]
    lifted.edgecli_origin = origin  # type: ignore[assignment]
    if not lifted_names:
        raise TransformError("the program has no convolution or dense layer on stored weights to prune")
    return lifted


def lift_difference(lifted: Any, reference: Any, inputs: list[Any], batch: int | None = None) -> float:
    """Max abs difference between the lifted module and the program's module on `inputs`; a program
    exported for a fixed batch runs `batch` rows at a time (the lifted module takes them all at once)."""
    import torch

    def flat(out: Any) -> list[Any]:
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def program(rows: list[Any]) -> list[Any]:
        if batch is None:
            return flat(reference(*rows))
        total = len(rows[0]) - len(rows[0]) % batch
        parts = [flat(reference(*[r[i : i + batch] for r in rows])) for i in range(0, total, batch)]
        return [torch.cat(column) for column in zip(*parts)]

    lifted.eval()
    with torch.no_grad():
        if batch is not None:
            inputs = [x[: len(x) - len(x) % batch] for x in inputs]
        got, want = flat(lifted(*inputs)), program(inputs)
    if len(got) != len(want):
        raise TransformError(f"the lifted module returns {len(got)} outputs, the program {len(want)}")
    return max(float((a.float() - b.float()).abs().max()) if a.numel() else 0.0 for a, b in zip(got, want))


def failing_node(module: Any, inputs: list[Any]) -> tuple[Any, BaseException] | None:
    """Run the (fx) module node by node; the node that raises and its exception, or None if it runs."""
    import torch
    from torch import fx

    class _Find(fx.Interpreter):
        current: Any = None

        def run_node(self, n: Any) -> Any:
            self.current = n
            return super().run_node(n)

    finder = _Find(module)
    try:
        with torch.no_grad():
            finder.run(*inputs)
    except Exception as exc:
        return finder.current, exc
    return None


def _tensors(value: Any) -> list[Any]:
    """The tensors in a node's value (a tensor, or a tuple/list of them), in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _snapshot(value: Any) -> Any:
    """A copy of a node's value whose tensors no later in-place op can change."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value) if not hasattr(value, "_fields") else value
    return value


def _node_difference(got: Any, want: Any) -> float | None:
    """Max abs difference of two node values scaled to the reference's magnitude (None: not comparable
    tensors, e.g. a symbolic size). NaN where the program is finite counts as infinitely different."""
    import torch

    a, b = _tensors(got), _tensors(want)
    if not a or len(a) != len(b):
        return None
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        if not x.numel() or not (x.is_floating_point() or y.is_floating_point()):
            if x.numel() and not torch.equal(x, y):
                return float("inf")
            continue
        x, y = x.detach().double(), y.detach().double()
        both_nan = torch.isnan(x) & torch.isnan(y)
        gap = torch.where(both_nan, torch.zeros_like(x), (x - y).abs())
        scale = max(1.0, float(y[torch.isfinite(y)].abs().max()) if torch.isfinite(y).any() else 1.0)
        worst = max(worst, float(torch.nan_to_num(gap, nan=float("inf")).max()) / scale)
    return worst


def prove(lifted: Any, reference: Any, inputs: list[Any], atol: float = 1e-5) -> float:
    """Run the program's module and the lifted module on `inputs` node by node and compare every
    intermediate value the lifted module computes against the program node it stands for. Returns the
    largest (scale-relative) difference; TransformError names the first node that differs or fails."""
    import torch
    from torch import fx

    origin: dict[str, str] = getattr(lifted, "edgecli_origin", {})
    values: dict[str, Any] = {}

    class _Record(fx.Interpreter):
        current: Any = None

        def run_node(self, n: Any) -> Any:
            self.current = n
            out = super().run_node(n)
            values[n.name] = _snapshot(out)  # a later in-place op (relu_) must not change what is kept
            return out

    program_nodes = {n.name: n for n in reference.graph.nodes}
    recorder = _Record(reference)
    try:
        with torch.no_grad():
            recorder.run(*inputs)
    except Exception as exc:
        raise TransformError(
            f"the program itself fails on the data at {where(recorder.current)}: {last_line(exc, 160)}",
            hint="check that the data has the shape the model was exported for (edgecli inspect MODEL)",
        ) from None
    worst = 0.0

    class _Compare(fx.Interpreter):
        current: Any = None
        differs = ""

        def run_node(self, n: Any) -> Any:
            nonlocal worst
            self.current = n
            out = super().run_node(n)
            name = origin.get(n.name)
            if name is None or name not in values or n.op in ("placeholder", "get_attr", "output"):
                return out
            gap = _node_difference(out, values[name])
            if gap is not None and gap > atol:
                shown = f"{gap:.3g}" if gap != float("inf") else "shape or NaN mismatch"
                self.differs = f"{where(program_nodes[name])} ({n.target}): difference {shown}"
                raise _Differs(self.differs)
            worst = max(worst, gap or 0.0)
            return out

    comparer = _Compare(lifted)
    was_training = lifted.training
    lifted.eval()
    try:
        with torch.no_grad():
            comparer.run(*inputs)
    except _Differs:  # fx.Interpreter appends its traceback to the exception's text: keep the node's line
        raise TransformError(
            f"the lifted module differs from the program first at {comparer.differs}",
            hint="structured pruning cannot rebuild this model faithfully; use method magnitude, or report the node",
        ) from None
    except Exception as exc:
        node = comparer.current
        shown = where(program_nodes[origin[node.name]]) if node is not None and node.name in origin else "a node"
        raise TransformError(
            f"the lifted module fails at {shown} where the program runs: {last_line(exc, 160)}",
            hint="structured pruning cannot rebuild this model faithfully; use method magnitude, or report the node",
        ) from None
    finally:
        lifted.train(was_training)
    return worst


class _Differs(Exception):
    """Internal: the first lifted node whose value differs from the program's."""


def recurrent_layers(gm: Any) -> list[str]:
    """The recurrent layers (aten lstm / gru / rnn nodes) of a program or lifted module, as messages
    name them. They are not lifted: Torch-Pruning 1.6 prunes only a single-layer nn.LSTM (its LSTMPruner
    asserts num_layers == 1) and no GRU/RNN, so structured pruning keeps their widths."""
    names = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
        if op in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
            names.append(where(node))
    return names
