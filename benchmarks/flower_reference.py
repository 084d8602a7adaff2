"""Writes tests/data/flower_reference.json: Flower's own strategies run on fixed small inputs, so the tests of
``common.server_opt`` and ``common.robust`` compare against Flower's updates without Flower installed.

    python3 -m venv /work/flwr-venv && /work/flwr-venv/bin/pip install torch==2.13.0 flwr numpy
    /work/flwr-venv/bin/python benchmarks/flower_reference.py            # rewrites the fixture

Needs only numpy and flwr (no project import). Every input is float64 from a seeded numpy generator and is
stored in the fixture next to Flower's outputs (JSON floats round-trip exactly), with Flower's version:

  server    FedAdam, FedYogi, FedAdagrad ``aggregate_fit`` over 4 rounds, one client per round (FedAvg of one
            result is that result exactly, so the adaptive step sees the stored "average").
  robust    FedMedian, FedTrimmedAvg (beta 0.2 and 0.34), Krum (f = 1) and Multi-Krum (f = 1, keep 3) on rounds
            of 5, 6 and 7 clients with unequal num_examples, the last client of each round an outlier
            (x 8 + 5), so Krum must pass it over.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SHAPES = [(4, 3), (5,), (2, 3, 2), (1,)]
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "flower_reference.json"

SERVER = {  # Flower constructor arguments of each adaptive strategy
    "fedadam": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedyogi": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedadagrad": {"eta": 0.1, "tau": 1e-3},
}
ROBUST = {  # name -> (Flower strategy, its arguments)
    "median": ("FedMedian", {}),
    "trimmed_mean_0.2": ("FedTrimmedAvg", {"beta": 0.2}),
    "trimmed_mean_0.34": ("FedTrimmedAvg", {"beta": 0.34}),
    "krum_f1": ("Krum", {"num_malicious_clients": 1, "num_clients_to_keep": 0}),
    "multikrum_f1_keep3": ("Krum", {"num_malicious_clients": 1, "num_clients_to_keep": 3}),
}


def model(rng) -> list[np.ndarray]:
    return [rng.standard_normal(s) for s in SHAPES]


def fit_results(models: list[list[np.ndarray]], examples: list[int]):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    return [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(m), n, {})) for m, n in zip(models, examples)]


def server_cases(rng) -> dict:
    import flwr.server.strategy as S
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    theta, avgs = model(rng), [model(rng) for _ in range(4)]
    out = {"theta": _lists(theta), "averages": [_lists(a) for a in avgs], "cases": {}}
    for name, kwargs in SERVER.items():
        cls = {"fedadam": S.FedAdam, "fedyogi": S.FedYogi, "fedadagrad": S.FedAdagrad}[name]
        strategy = cls(initial_parameters=ndarrays_to_parameters([t.copy() for t in theta]), **kwargs)
        rounds = []
        for server_round, avg in enumerate(avgs, start=1):
            params, _ = strategy.aggregate_fit(server_round, fit_results([avg], [1]), [])
            rounds.append(_lists(parameters_to_ndarrays(params)))
        out["cases"][name] = {"kwargs": kwargs, "rounds": rounds}
    return out


def robust_cases(rng) -> dict:
    import flwr.server.strategy as S
    from flwr.common import parameters_to_ndarrays
    rounds = []
    for n in (5, 6, 7):
        models = [model(rng) for _ in range(n)]
        models[-1] = [8.0 * t + 5.0 for t in models[-1]]  # an outlier
        examples = [int(v) for v in rng.integers(1, 50, size=n)]
        results = {}
        for name, (cls_name, kwargs) in ROBUST.items():
            params, _ = getattr(S, cls_name)(**kwargs).aggregate_fit(1, fit_results(models, examples), [])
            results[name] = _lists(parameters_to_ndarrays(params))
        rounds.append({"clients": [_lists(m) for m in models], "num_examples": examples, "results": results})
    return {"strategies": {k: {"flower": c, "kwargs": kw} for k, (c, kw) in ROBUST.items()}, "rounds": rounds}


def _lists(arrays) -> list:
    return [np.asarray(a, dtype=np.float64).tolist() for a in arrays]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where the fixture goes")
    parser.add_argument("--seed", type=int, default=77, help="the inputs' numpy seed")
    args = parser.parse_args(argv)
    import flwr
    rng = np.random.default_rng(args.seed)
    data = {"flwr_version": flwr.__version__, "numpy_version": np.__version__, "seed": args.seed,
            "shapes": [list(s) for s in SHAPES], "server": server_cases(rng), "robust": robust_cases(rng)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} (flwr {flwr.__version__})")
    return data


if __name__ == "__main__":
    main()
