"""models.lift: a .pt2 program rebuilt as eager modules, proven against the program on every node. The
model is the plain MNIST CNN of issue 19 (Conv-ReLU-MaxPool x3, x.view(x.size(0), -1), Linear) exported
as torch.export does by default: for a fixed batch of 1, so its view reads view(x, [1, -1])."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecli.core.errors import TransformError
from edgecli.models.lift import lift, lift_difference, prove


class MnistCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(128 * 3 * 3, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.pool(torch.relu(self.conv3(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


def mnist_program(batch: int = 1) -> torch.export.ExportedProgram:
    """The MNIST CNN (seeded weights) exported for a fixed batch, as `torch.export.export(m, (x,))` does."""
    torch.manual_seed(0)
    return torch.export.export(MnistCnn().eval(), (torch.rand(batch, 1, 28, 28),))


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    return mnist_program()


def test_a_fixed_batch_view_lifts_to_a_flatten_that_takes_any_batch(program):
    assert any(n.target == torch.ops.aten.view.default and n.args[1] == [1, -1] for n in program.graph.nodes)
    reference = program.module()
    lifted = lift(reference)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert prove(lifted, reference, [x[:1]]) == 0.0  # every intermediate identical at the program's batch
    with torch.no_grad():
        rows = torch.cat([reference(x[i : i + 1]) for i in range(5)])
        assert torch.allclose(lifted(x), rows, atol=1e-5)  # the lifted module follows the batch
    assert lift_difference(lifted, reference, [x], batch=1) < 1e-5


def test_prove_names_the_first_node_that_differs(program):
    reference = program.module()
    lifted = lift(reference)
    # a new tensor (the lifted module shares the program's parameters): it computes something else from conv2 on
    lifted.conv2.bias = nn.Parameter(lifted.conv2.bias.detach() + 0.5)
    with pytest.raises(TransformError, match=r"differs from the program first at conv2 \(node conv2d_1\)"):
        prove(lifted, reference, [torch.rand(1, 1, 28, 28)])


def test_prove_turns_a_failing_lifted_node_into_a_transform_error(program):
    reference = program.module()
    lifted = lift(reference)
    lifted.fc1.weight = nn.Parameter(torch.zeros(256, 100))  # a module that no longer fits its input
    with pytest.raises(TransformError, match=r"lifted module fails at fc1 \(node linear\) where the program runs"):
        prove(lifted, reference, [torch.rand(1, 1, 28, 28)])


def test_prove_refuses_data_the_program_does_not_take(program):
    reference = program.module()
    with pytest.raises(TransformError, match="the program itself fails on the data"):
        prove(lift(reference), reference, [torch.rand(2, 1, 28, 28)])  # exported for a batch of 1


class CrepeHead(nn.Module):
    """torchcrepe's head: conv features [n, C, T, 1] permuted to [n, T, C, 1], reshaped (-1, T*C) into
    the classifier. The flatten is time-major, not channel-major."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, (5, 1), stride=(4, 1), padding=(2, 0))
        self.classifier = nn.Linear(8 * 4, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x[:, None, :, None]))
        return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, 8 * 4)))


def test_a_permuted_flatten_stays_a_reshape_that_fails_loudly_after_pruning():
    """Not lifted to flatten(x, 1): Torch-Pruning maps pruned channels through flatten as channel-major
    and would drop the classifier's wrong inputs. Its -1 becomes the input's batch, so that after a
    channel is removed the reshape fails (and names itself) instead of folding samples into rows."""
    torch.manual_seed(0)
    program = torch.export.export(
        CrepeHead().eval(), (torch.rand(2, 16),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    reference = program.module()
    lifted = lift(reference)
    ops = [n.target for n in lifted.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.flatten.using_ints not in ops and torch.ops.aten.reshape.default in ops
    x = torch.rand(3, 16)
    assert prove(lifted, reference, [x]) == 0.0
    with torch.no_grad():
        lifted.conv.weight = nn.Parameter(lifted.conv.weight[:7].clone())  # one channel pruned
        lifted.conv.bias = nn.Parameter(lifted.conv.bias[:7].clone())
        with pytest.raises(RuntimeError, match="invalid for input of size"):
            lifted(x)
