"""Federated next-character prediction on LEAF's Shakespeare: each speaking role a client (common.shakespeare),
the LEAF / McMahan et al. 2017 character LSTM or this project's tiny causal LM, through the round engine.

    python llm_noniid/shakespeare.py --quick
    python -m common.shakespeare --out data/shakespeare
    python llm_noniid/shakespeare.py --data-dir data/shakespeare --clients-per-round 10 --rounds 20 \\
        --learning-rate 0.8 --batch-size 10 --local-epochs 1 --max-eval-samples 20000

A task of its own rather than train.py's ``--data``: LEAF's task is one prediction per 80-character window, scored
by accuracy, on ~1,100 clients fixed by the data, where train.py tokenizes a text pool, partitions it into a few
clients, scores perplexity of whole sequences and keeps per-client tensors and drift sums whose cost grows with the
clients. Here a client's windows are cut from one shared character stream per batch, so a round costs its clients'
samples whatever the population.

``--population N``: N synthetic clients instead of the roles, for populations larger than the 1,166 real ones (a
cross-device setting, DP's sampling). Client i is a contiguous slice of ONE real role's training samples, its role
drawn in proportion to the role's size and its length from the real roles' sizes (``common.shakespeare.population``,
seeded by --population-seed): several synthetic clients share a speaker and may overlap, so this is a population of
the real roles' sizes and styles, not more data. Evaluation stays on the real test split. A client costs three
integers; a round costs its clients' samples.

``--batch-size 0`` is B = inf: a client's whole training set in one batch, so ``--local-epochs 1 --batch-size 0`` is
McMahan et al.'s FedSGD (one full-batch gradient step per client, the server's weighted average of the steps is
one step on the cohort's gradient). ``--max-client-samples N`` keeps at most N of each role's training samples (a
seeded subset, the same for every --seed): a smaller round for a CPU, at the cost of less data per role.

``--eval-split validation``: 10% of every role's training samples held out at random (seeded) and scored instead
of the test split (the rest trains, and a population is cut from the rest): for choosing settings without looking
at the test numbers. Writes <out-dir>/<run-name>/ with args.json, metrics.jsonl (one row per evaluation:
test accuracy and loss), summary.json (final and best accuracy beside the majority-character and uniform
references), checkpoint.pt.
"""
from __future__ import annotations

from pathlib import Path

from common import algorithm_flags, cli, flags

SAMPLE = Path(__file__).resolve().parents[1] / "common" / "data" / "shakespeare_sample"
# --quick: the committed 12-role sample, 10 of them a round; the LSTM learns past the majority character in seconds
QUICK = dict(data_dir=str(SAMPLE), rounds=6, clients_per_round=10, local_epochs=1, batch_size=10,
             learning_rate=2.0, hidden=64, max_eval_samples=0)


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.presets = {"quick": QUICK}
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="a folder built by `python -m common.shakespeare --out DIR` "
                   "(--quick: the committed 12-role sample, common/data/shakespeare_sample)")
    g.add_argument("--max-clients", type=flags.COUNT, default=0, help="only the first N roles (0: every role)")
    g.add_argument("--population", type=flags.COUNT, default=0, help="N synthetic clients, each a contiguous "
                   "slice of one real role's training samples (several share a speaker); 0: the roles themselves")
    g.add_argument("--population-seed", type=flags.SEED, default=0, help="seed of the synthetic population (fixed "
                   "across --seed: the data, not the run)")
    g.add_argument("--eval-split", choices=("test", "validation"), default="test", help="test: the roles' test "
                   "split | validation: 10%% of each role's training samples held out (choose settings on it)")
    g.add_argument("--max-client-samples", type=flags.COUNT, default=0, help="each role keeps at most N of its "
                   "training samples, a seeded random subset fixed across --seed and rounds (0: all; shrinks a "
                   "round's work for a CPU: the paper's roles hold ~3,600)")
    g.add_argument("--max-eval-samples", type=flags.COUNT, default=20000, help="test samples scored, a seeded "
                   "subset of every role's test samples (0: all; the full build holds ~845,000)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="lstm", help="lstm (LEAF / McMahan et al. 2017: 8-dim embedding, 2-layer LSTM "
                   "of 256 units) | tiny-gpt2 (llm_noniid's random 2-layer GPT-2, over characters)")
    g.add_argument("--embed-dim", type=flags.POSITIVE_INT, default=8, help="lstm: character embedding size")
    g.add_argument("--hidden", type=flags.POSITIVE_INT, default=256, help="lstm: units per LSTM layer")
    g.add_argument("--layers", type=flags.POSITIVE_INT, default=2, help="lstm: LSTM layers")
    g = p.add_argument_group("local training")
    g.add_argument("--local-epochs", type=flags.POSITIVE_INT, default=1, help="E: passes over the client's samples")
    g.add_argument("--batch-size", type=flags.COUNT, default=10, help="B: local batch size (samples); 0: B = inf, "
                   "the client's whole training set in one batch (with E = 1: FedSGD, McMahan et al. 2017)")
    g.add_argument("--max-local-steps", type=flags.COUNT, default=0, help="cap on local SGD steps (0: no cap)")
    g.add_argument("--learning-rate", type=flags.POSITIVE, default=0.8, help="local SGD learning rate (LEAF: 0.8)")
    g = p.add_argument_group("federation")
    g.add_argument("--rounds", type=flags.POSITIVE_INT, default=20, help="communication rounds")
    g.add_argument("--clients-per-round", type=flags.POSITIVE_INT, default=10, help="clients sampled each round")
    g.add_argument("--eval-every", type=flags.POSITIVE_INT, default=1, help="evaluate every N rounds")
    algorithm_flags.add_client_batching_arg(g)
    algorithm_flags.add_algorithm_args(p, client_opt_state=None, clustering="one global model is scored here")
    cli.add_run_args(p, out_dir="runs/shakespeare")
    return p


def check_args(args) -> None:
    """The checks of its arguments alone (``shakespeare_task.validate``; common.jobs: a grid checks its runs)."""
    from llm_noniid import shakespeare_task

    shakespeare_task.validate(args)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    from llm_noniid import shakespeare_task  # torch and the run's modules load once the arguments are parsed

    shakespeare_task.validate(args)
    return shakespeare_task.run(args)


if __name__ == "__main__":
    cli.run(main)
