"""The torch-free flag tables (common.algorithm_flags) against the registries they describe: the same algorithms,
aggregators, server optimizers, clustering methods and DP choices, each class's own flags declared, the same
defaults where a class keeps one."""
from __future__ import annotations

import argparse

import pytest
import torch

from common import aggregators as AG
from common import algorithm_flags as AF
from common import algorithms as AL
from common import clustering, dp, engine, feddyn, server_opt


def test_the_tables_list_the_registries():
    assert engine  # imported: it registers every algorithm and aggregator module
    assert tuple(AF.ALGORITHMS) == tuple(AL.REGISTRY)
    assert tuple(AF.AGGREGATORS) == tuple(AG.REGISTRY)
    assert AF.CLUSTERINGS == clustering.METHODS
    assert (AF.DP_SAMPLINGS, AF.DP_ACCOUNTANTS) == (dp.SAMPLINGS, dp.ACCOUNTANTS)
    assert AF.FISHER_EPS == AG.Fisher.EPS and AF.FEDDYN_ALPHA == feddyn.DEFAULT_ALPHA
    x = [torch.zeros(3)]
    for name in AF.SERVER_OPTS:  # every one builds (an unknown name is refused)
        server_opt.make_server_optimizer(name, x)
    with pytest.raises(ValueError):
        server_opt.make_server_optimizer("fedsgd", x)


def test_every_class_flag_is_declared():
    p = argparse.ArgumentParser()
    g = AF.add_algorithm_args(p)
    AF.add_fisher_stat_args(g)
    dests = {a.dest for a in p._actions}
    for cls in [*AL.REGISTRY.values(), *AG.REGISTRY.values()]:
        assert set(cls.flags) <= dests, (cls.name, set(cls.flags) - dests)
    assert set(AF.FISHER_STAT_FLAGS) <= dests
