"""The shared flag vocabulary: one name per idea in every script, beside the source projects' own names.

==========================  ===========================================================================
shared name                 meaning (the source names it replaces stay accepted)
==========================  ===========================================================================
``--rounds``                communication rounds; centralized scripts: their length in their own unit
``--local-steps``           optimizer steps per client per round
``--out-dir``               parent folder of run directories
``--partition``             how the data is split over clients
``--participation-rate``    fraction of clients sampled per round
``--clients-per-round``     the same as a count (overrides the rate with count / clients)
``--config FILE.yaml``      flag values from a YAML file (``common.config``)
``--report-to``             experiment trackers (``common.tracking``)
``--runs``                  plot scripts: folder(s) holding run directories
==========================  ===========================================================================

``alias`` adds a shared name for an existing destination (default ``SUPPRESS``: the original flag's default
stands unless the alias is given); ``add_clients_per_round`` / ``resolve_clients_per_round`` turn a count
into the participation rate the scripts use.
"""
from __future__ import annotations

import argparse

from common.errors import check


def alias(group, *names: str, dest: str, of: str, **kwargs) -> None:
    """``names`` as another spelling of the flag ``of`` (destination ``dest``); ``kwargs``: type, choices."""
    group.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=f"the shared name of {of}", **kwargs)


def add_clients_per_round(group) -> None:
    group.add_argument("--clients-per-round", type=int, default=None,
                       help="clients sampled per round, as a count (sets --participation-rate to count / clients)")


def resolve_clients_per_round(args: argparse.Namespace, num_clients: int | None = None) -> None:
    """``--clients-per-round m`` -> ``args.participation_rate = m / K`` (K: ``num_clients`` or
    ``args.num_clients``); it overrides the rate. Call it once K is known (after --quick presets)."""
    m = getattr(args, "clients_per_round", None)
    if m is None:
        return
    k = num_clients if num_clients is not None else args.num_clients
    check(1 <= m <= k, f"--clients-per-round must be between 1 and the {k} clients, got {m}")
    args.participation_rate = m / k
