"""common.stacked_lstm: n copies of an nn.LSTM in one call (grouped lockstep and one copy at a time) against n
separate nn.LSTMs: outputs, the inputs' and every weight's gradient."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common import stacked_lstm as SL


def separate_and_stacked(steps: int, dtype=torch.float64, n: int = 3):
    """n LSTMs with their own weights, run one by one and stacked, on the same inputs and a loss touching every
    step's output: (want, got) each (outputs, input grads, {name: weight grads})."""
    torch.manual_seed(0)
    b, width, h, layers = 4, 5, 6, 2
    models = [nn.LSTM(width, h, layers, batch_first=True).to(dtype) for _ in range(n)]
    x = torch.randn(n, b, steps, width, dtype=dtype)
    probe = torch.randn(n, b, steps, h, dtype=dtype)
    outs, dxs, grads = [], [], []
    for m, xi, pi in zip(models, x, probe):
        xi = xi.clone().requires_grad_()
        out, _ = m(xi)
        (out * pi).sum().backward()
        outs.append(out.detach())
        dxs.append(xi.grad)
        grads.append({k: p.grad for k, p in m.named_parameters()})
    want = (torch.stack(outs), torch.stack(dxs), {k: torch.stack([g[k] for g in grads]) for k in grads[0]})
    got = []
    for grouped in (True, False):
        stacked = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]).requires_grad_()
                   for k, _ in models[0].named_parameters()}
        xs = x.clone().requires_grad_()
        out = SL.lstm(models[0], stacked, xs, grouped=grouped)
        (out * probe).sum().backward()
        got.append((out.detach(), xs.grad, {k: v.grad for k, v in stacked.items()}))
    return want, got


@pytest.mark.parametrize("steps", [1, 7])
def test_stacked_lstms_equal_separate_nn_lstms_forward_and_backward(steps):
    want, got = separate_and_stacked(steps)
    for out, dx, grads in got:  # grouped, then one copy at a time
        torch.testing.assert_close(out, want[0])
        torch.testing.assert_close(dx, want[1])
        for k, g in grads.items():
            torch.testing.assert_close(g, want[2][k], msg=k)


def test_float32_grouped_matches_nn_lstm_to_float_tolerance():
    want, ((out, dx, grads), _) = separate_and_stacked(20, torch.float32, n=2)
    torch.testing.assert_close(out, want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["weight_hh_l0"], want[2]["weight_hh_l0"], rtol=1e-4, atol=1e-6)


def test_an_lstm_it_does_not_reproduce_is_refused():
    m = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="one direction"):
        SL.lstm(m, {k: p[None] for k, p in m.named_parameters()}, torch.zeros(1, 2, 5, 3))
