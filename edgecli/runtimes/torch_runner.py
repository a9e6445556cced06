"""Run a .pt2 ExportedProgram with torch on the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecli.formats import pt2_file
from edgecli.formats.model_file import ModelFile
from edgecli.runtimes.base import Runner, TensorSpec


def _numpy_dtype(torch_dtype: Any) -> np.dtype:
    import torch

    return torch.empty(0, dtype=torch_dtype).numpy().dtype


def tensor_specs(nodes: list[Any]) -> list[TensorSpec]:
    """Specs from exported graph nodes' fake tensors; symbolic sizes become None."""
    specs = []
    for node in nodes:
        value = node.meta.get("val")
        shape = tuple(d if isinstance(d, int) else None for d in value.shape)
        specs.append(TensorSpec(node.name, shape, _numpy_dtype(value.dtype)))
    return specs


def program_specs(program: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of an ExportedProgram (user inputs only, no parameters)."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = tensor_specs([placeholders[name] for name in program.graph_signature.user_inputs])
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    flat = output_node.args[0] if isinstance(output_node.args[0], (list, tuple)) else [output_node.args[0]]
    user_outputs = set(program.graph_signature.user_outputs)
    outputs = tensor_specs([n for n in flat if getattr(n, "name", None) in user_outputs])
    return inputs, outputs


class TorchRunner(Runner):
    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        super().__init__(model, threads)
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.program = pt2_file.load(model.path)
        self.module = self.program.module()
        self.inputs, self.outputs = program_specs(self.program)

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        args = [torch.from_numpy(feeds[spec.name]) for spec in self.inputs]
        with torch.no_grad():
            result = self.module(*args)
        flat = result if isinstance(result, (list, tuple)) else [result]
        return [t.detach().numpy() for t in flat]
