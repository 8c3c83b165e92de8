"""FedProx's proximal gradient, against hand-computed values and the penalty's own gradient."""

from __future__ import annotations

import pytest
import torch

from fellrec.federation.aggregation import fedprox_penalty
from fellrec.models.proximal import add_proximal_gradient


def test_the_proximal_gradient_is_the_gradient_of_fedprox_penalty():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    v = torch.nn.Parameter(torch.tensor([[3.0]]))
    w.grad = torch.tensor([0.5, 0.0])  # v has no gradient yet
    anchor = torch.tensor([0.0, 1.0, 1.0])
    add_proximal_gradient([w, v], anchor, mu=0.1)
    assert w.grad.tolist() == pytest.approx([0.6, 0.1])  # 0.5 + 0.1 * (1 - 0), 0.1 * (2 - 1)
    assert v.grad.item() == pytest.approx(0.2)  # 0.1 * (3 - 1)
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    fedprox_penalty([x], [anchor], 0.1).backward()
    assert x.grad.tolist() == pytest.approx([0.1, 0.1, 0.2])
