"""--compile: the compiled forward shares the model's parameters (in-place loads are seen), the original
module keeps its state_dict keys, and the flag changes nothing without --compile."""
from __future__ import annotations

import torch
from torch import nn

from common import cli, compiled


def parser():
    p = cli.ArgumentParser()
    cli.add_run_args(p)
    return p


def test_flags_both_spellings_and_off_by_default():
    args = parser().parse_args([])
    assert (args.compile, args.compile_mode, args.compile_backend) == (False, "default", "inductor")
    model = nn.Linear(3, 2)
    assert compiled.maybe_compile(model, args) is model
    args = parser().parse_args(["--compile", "--compile_mode", "max-autotune", "--compile-backend", "aot_eager"])
    assert (args.compile, args.compile_mode, args.compile_backend) == (True, "max-autotune", "aot_eager")


def test_compiled_forward_shares_parameters_and_state_dict_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
    args = parser().parse_args(["--compile", "--compile-backend", "aot_eager"])
    fwd = compiled.maybe_compile(model, args)
    assert fwd is not model
    x = torch.randn(5, 4)
    torch.testing.assert_close(fwd(x), model(x))
    with torch.no_grad():  # a round loads the global parameters in place: the compiled graph must see them
        for p in model.parameters():
            p.mul_(-0.5)
    torch.testing.assert_close(fwd(x), model(x))
    loss = fwd(x).square().sum()
    loss.backward()  # gradients reach the original module's parameters
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
