"""n copies of one ``nn.LSTM``, each with its own weights and inputs, in one differentiable call (``lstm``), so
a round's clients, stacked (``common.batched``), run their recurrent layers together. Two ways, equal to ``nn.LSTM``
up to float summation order (tests/common/test_stacked_lstm.py):

- grouped: all copies in lockstep, one batched matmul per time step for all of them, in ``nn.LSTM``'s parameter
  layout (gates i, f, g, o; both biases). The recurrence is one ``torch.autograd.Function`` whose backward is
  written out (BPTT): the gate derivatives of every step at once, in the loop only what is sequential (dh, dc:
  about five ops a step), and the recurrent weights' gradient one matmul over all steps, not one per step. Fewer,
  larger kernels than n separate LSTMs: the way for GPUs, where a small LSTM's kernels are launch-bound.
- per copy: each copy through torch's fused LSTM kernel (oneDNN on a CPU) in turn, inside the one graph whose
  backward the caller runs once. On a CPU this is the faster way at every size measured (hidden 32 to 256, 10 and
  50 copies, batch 10, 80 steps): oneDNN fuses each step's gate math, and a copy's recurrent weights stay in cache
  across its 80 steps, where lockstep reads all n copies' (n x 16 H^2 bytes: 10 MiB at H = 256) every step.

Why not ``torch.func.vmap`` over ``nn.LSTM``: vmap has no batching rule for ``aten::lstm`` (an error outside
``grad``; a per-copy loop over the oneDNN kernel inside it).
"""
from __future__ import annotations

import torch
from torch import nn


class _Recurrence(torch.autograd.Function):
    """xp [n, T, B, 4H] (input projections plus both biases), w_hh [n, 4H, H] -> hidden states [n, T, B, H]
    from zero initial states."""

    @staticmethod
    def forward(ctx, xp: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
        n, steps, b, four_h = xp.shape
        h = four_h // 4
        act = torch.empty_like(xp)                   # gates after their nonlinearity: sigmoid i, f, o; tanh g
        cs = xp.new_empty(n, steps, b, h)            # cell states
        tcs, hs = torch.empty_like(cs), torch.empty_like(cs)  # tanh(c), hidden states
        w_t = w_hh.transpose(1, 2)
        # every step's views made once (a view is a dispatcher call: the loop below keeps only the math)
        xp_, act_, cs_, tcs_, hs_ = (t.unbind(1) for t in (xp, act, cs, tcs, hs))
        i_, f_, g_, o_ = (t.unbind(1) for t in act.view(n, steps, b, 4, h).unbind(3))
        for t in range(steps):
            pre = xp_[t] if t == 0 else torch.baddbmm(xp_[t], hs_[t - 1], w_t)
            torch.sigmoid(pre, out=act_[t])
            torch.tanh(pre[..., 2 * h:3 * h], out=g_[t])
            torch.mul(i_[t], g_[t], out=cs_[t])
            if t:
                cs_[t].addcmul_(f_[t], cs_[t - 1])
            torch.tanh(cs_[t], out=tcs_[t])
            torch.mul(o_[t], tcs_[t], out=hs_[t])
        ctx.save_for_backward(w_hh, act, cs, tcs, hs)
        return hs

    @staticmethod
    def backward(ctx, dhs: torch.Tensor):
        w_hh, act, cs, tcs, hs = ctx.saved_tensors
        n, steps, b, h = hs.shape
        i, f, g, o = act.view(n, steps, b, 4, h).unbind(3)
        # every step's local derivatives at once: sigmoid' = s (1 - s), tanh' = 1 - t^2
        slope = (act * (1 - act)).view(n, steps, b, 4, h)
        slope[:, :, :, 2] = 1 - g * g
        # dc's factors in the pre-activation gradients of i, f, g: [g, c_{t-1}, i] times their gate's slope
        from_dc = act.new_zeros(n, steps, b, 3, h)
        torch.mul(g, slope[:, :, :, 0], out=from_dc[:, :, :, 0])
        torch.mul(cs[:, :-1], slope[:, 1:, :, 1], out=from_dc[:, 1:, :, 1])
        torch.mul(i, slope[:, :, :, 2], out=from_dc[:, :, :, 2])
        from_dh = tcs * slope[:, :, :, 3]  # dh's factor in o's
        dh_to_dc = o * (1 - tcs * tcs)      # dh's share of dc
        dxp = torch.empty_like(act)
        d = dxp.view(n, steps, b, 4, h)
        dhs_, f_, from_dc_, from_dh_, dh_to_dc_, dxp_, d_ifg_, d_o_ = (
            t.unbind(1) for t in (dhs, f, from_dc, from_dh, dh_to_dc, dxp, d[:, :, :, :3], d[:, :, :, 3]))
        dh = dc = None
        for t in reversed(range(steps)):
            dh = dhs_[t] if dh is None else torch.baddbmm(dhs_[t], dxp_[t + 1], w_hh)
            dc = dh * dh_to_dc_[t] if dc is None else (dc * f_[t + 1]).addcmul_(dh, dh_to_dc_[t])
            torch.mul(dc.unsqueeze(2), from_dc_[t], out=d_ifg_[t])
            torch.mul(dh, from_dh_[t], out=d_o_[t])
        # dW_hh = sum over steps t >= 1 of dgates_t^T h_{t-1}: one matmul over all steps and samples
        dw = torch.bmm(dxp[:, 1:].reshape(n, -1, 4 * h).transpose(1, 2), hs[:, :-1].reshape(n, -1, h))
        return dxp, dw


def lstm(module: nn.LSTM, params: dict[str, torch.Tensor], x: torch.Tensor,
         grouped: bool | None = None) -> torch.Tensor:
    """n copies of ``module`` (batch_first, one direction, no projection or dropout), each with its own weights
    (``params``: the module's parameter names -> [n, *shape]) on its own inputs x [n, B, T, I] from zero states:
    the last layer's outputs [n, B, T, H]. ``grouped``: lockstep (default on a GPU), else one copy at a time
    through the fused kernel (the module docstring says why each)."""
    plain = module.batch_first and not module.bidirectional and not module.proj_size and module.bias
    if not plain or (module.dropout and module.training):
        raise ValueError("stacked LSTMs: batch_first, one direction, biases, no projection, no dropout")
    if grouped is None:
        grouped = x.device.type == "cuda"
    if not grouped:  # the kernel nn.LSTM.forward calls, given each copy's weights (no module swapping per call)
        cols = [params[name].unbind(0) for name in module._flat_weights_names]
        zeros = x.new_zeros(module.num_layers, x.shape[1], module.hidden_size)
        return torch.stack([torch.lstm(xi, (zeros, zeros), [c[i] for c in cols], True, module.num_layers, 0.0,
                                       module.training, False, True)[0] for i, xi in enumerate(x)])
    h = x.transpose(1, 2)  # time-major per copy: [n, T, B, I]
    for k in range(module.num_layers):
        w_ih, w_hh, b_ih, b_hh = (params[f"{w}_l{k}"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        n, steps, b, width = h.shape
        xp = torch.baddbmm((b_ih + b_hh).unsqueeze(1), h.reshape(n, steps * b, width), w_ih.transpose(1, 2))
        h = _Recurrence.apply(xp.view(n, steps, b, -1), w_hh)
    return h.transpose(1, 2)
