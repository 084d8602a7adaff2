"""SCAFFOLD option II control variates against the update rules by hand."""
from __future__ import annotations

import pytest
import torch
from tensorcases import SHAPES, clients, close

from common import scaffold as SC


def test_scaffold_option_two_by_hand():
    n_clients, k_steps, lr_l, lr_g = 5, 3, 0.1, 0.7
    x = clients(1, seed=8)[0]
    sc = SC.Scaffold(x, num_clients=n_clients, server_lr=lr_g)
    c_ref = [torch.zeros(s) for s in SHAPES]
    ci_ref = {i: [torch.zeros(s) for s in SHAPES] for i in range(n_clients)}
    for rnd, sampled in enumerate([[0, 2, 3], [2, 4]]):
        ys = clients(len(sampled), seed=20 + rnd)
        close(sc.correction(sampled[0]), [c - ci for c, ci in zip(c_ref, ci_ref[sampled[0]])])
        dys, dcs = [], []
        for i, y in zip(sampled, ys):
            dy, dc = sc.client_update(i, x, y, k_steps, lr_l)
            new_ci = [ci - c + (xx - yy) / (k_steps * lr_l) for ci, c, xx, yy in zip(ci_ref[i], c_ref, x, y)]
            dys.append([yy - xx for yy, xx in zip(y, x)])
            dcs.append([a - b for a, b in zip(new_ci, ci_ref[i])])
            ci_ref[i] = new_ci
            close(dy, dys[-1], tol=1e-5)
            close(dc, dcs[-1], tol=1e-5)
        x_ref = [xx + lr_g * torch.stack([d[j] for d in dys]).mean(0) for j, xx in enumerate(x)]
        c_ref = [c + torch.stack([d[j] for d in dcs]).sum(0) / n_clients for j, c in enumerate(c_ref)]
        sc.server_update(x)
        close(x, x_ref, tol=1e-5)
        close(sc.c, c_ref, tol=1e-5)
    for i in range(n_clients):  # every client's control persists (never sampled: zero)
        close(sc.control(i), ci_ref[i], tol=1e-5)
    state = sc.state_dict()
    assert state["c_i"]["clients"] == [0, 2, 3, 4] and len(state["c"]) == len(SHAPES)  # client 1: no row
    other = SC.Scaffold(x, num_clients=n_clients, server_lr=lr_g)
    other.load_state_dict(state)
    close(other.correction(2), sc.correction(2), tol=0)
    with pytest.raises(ValueError, match="no client_update"):
        other.server_update(x)

