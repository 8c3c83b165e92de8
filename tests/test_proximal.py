"""FedProx's proximal gradient, against hand-computed values and autograd on the penalty."""

from __future__ import annotations

import pytest
import torch

from fellrec.models.proximal import add_proximal_gradient


def test_the_proximal_gradient_is_the_gradient_of_the_fedprox_penalty():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    v = torch.nn.Parameter(torch.tensor([[3.0]]))
    w.grad = torch.tensor([0.5, 0.0])  # v has no gradient yet
    anchor = torch.tensor([0.0, 1.0, 1.0])
    add_proximal_gradient([w, v], anchor, mu=0.1)
    assert w.grad.tolist() == pytest.approx([0.6, 0.1])  # 0.5 + 0.1 * (1 - 0), 0.1 * (2 - 1)
    assert v.grad.item() == pytest.approx(0.2)  # 0.1 * (3 - 1)
    # The same as autograd's gradient of the penalty mu/2 ||w - anchor||^2 on the flat vector.
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (0.1 / 2 * (x - anchor).pow(2).sum()).backward()
    added = torch.cat([w.grad - torch.tensor([0.5, 0.0]), v.grad.reshape(-1)])
    torch.testing.assert_close(x.grad, added)
