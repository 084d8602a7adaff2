"""vit_sparse_fl speed: images/s of local training and of evaluation, and one FedAvg round split into
the clients' compute and everything else (loading the global model, optimizer set-up, aggregation).

    python benchmarks/bench_vit.py                                  # ViT-S/16 and the tiny ViT at 32 px
    python benchmarks/bench_vit.py --archs vit_small --image-size 224 --device cuda --batch-size 64
    python benchmarks/bench_vit.py --quick                          # tiny shapes: checks the script runs

Training images/s: J SGD-momentum steps through ``experiment.train_steps`` on uint8 images held on the
device, including the batched augmentation (crop, flip, resize, normalisation). Evaluation images/s:
``experiment.evaluate`` (inference mode, no augmentation). Both sparse (SparseSGDM with a 10 % mask) and
dense optimizers are timed. Round split: ``federated.plain_rounds`` on random data with K clients,
m of them per round, J local steps; client compute is the time inside the clients' training loops, the
rest is the round's own overhead. Target: everything else under 5 % of the round.
"""
from __future__ import annotations

import argparse
import json
from functools import partial
from typing import TYPE_CHECKING

from benchlib import markdown_table, timeit

from common import cli
from vit_sparse_fl import options

if TYPE_CHECKING:
    import torch

    from vit_sparse_fl import data as cifar


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    parser.add_argument("--archs", nargs="+", default=["vit_tiny", "vit_small"], choices=sorted(options.ARCHS),
                        help="models to time")
    parser.add_argument("--image-size", type=int, default=32, choices=[32, 160, 224], help="model input size")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--local-steps", type=int, default=4, help="J steps per client")
    parser.add_argument("--num-clients", type=int, default=100, help="K clients (for the round split)")
    parser.add_argument("--participation-rate", type=float, default=0.1, help="C: m = C K clients per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: checks the script runs")
    parser.add_argument("--json", default=None, help="also write the results (and the settings) to this JSON file")
    return parser


def local_train(model, optimizer, train: cifar.Split, indices: torch.Tensor, args, device) -> None:
    """One client's J local steps over its shard ``indices`` (long, (n,)), the same batches every call."""
    import torch

    from vit_sparse_fl import data as cifar
    from vit_sparse_fl import experiment as exp

    gen = torch.Generator(device=device).manual_seed(1)
    stream = cifar.batches(train, args.batch_size, args.local_steps, gen, args.image_size, indices=indices)
    exp.train_steps(model, optimizer, stream, label_smoothing=0.1, device=device)


def round_args(args, arch: str) -> argparse.Namespace:
    return argparse.Namespace(
        arch=arch, weights="none", head_dropout=0.1, freeze_layers=0, label_smoothing=0.1, lr=0.01,
        momentum=0.9, weight_decay=1e-4, seed=0, num_clients=args.num_clients,
        participation_rate=args.participation_rate,
        local_steps=args.local_steps, batch_size=args.batch_size, eval_batch_size=4 * args.batch_size,
        image_size=args.image_size, no_augment=False, rounds=args.repeats + 1, eval_every=1, interference_window=0.0)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    import torch  # the run's modules load after parsing: --help and a usage error answer before them

    from common import params as P
    from vit_sparse_fl import data as cifar
    from vit_sparse_fl import experiment as exp
    from vit_sparse_fl import federated, sparse

    if args.quick:
        args.archs, args.local_steps, args.num_clients = ["vit_tiny"], 1, 20
        args.batch_size, args.repeats = 8, 1
    device = cli.resolve_device(args.device)
    rows, results = [], {}
    for arch in args.archs:
        a = round_args(args, arch)
        n_per_client = 2 * args.batch_size
        g = torch.Generator().manual_seed(0)
        n = args.num_clients * n_per_client
        train = cifar.Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                            torch.randint(0, 100, (n,), generator=g)).to(device)
        model, _ = exp.build_model(a, 100, device)
        params = P.trainable(model)
        shards = [torch.arange(i * n_per_client, (i + 1) * n_per_client, device=device)
                  for i in range(args.num_clients)]
        ctx = dict(args=a, device=device, train=train, shards=shards, model=model, params=params,
                   names=[n for n, _ in P.named_trainable(model)], forward=model)  # eager: no --compile here

        # ------------------------------------------------------------ local training / evaluation images/s
        dense_opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
        drawn = sparse.compute_masks(params, "random", 0.9, generator=torch.Generator(device=device))
        masks = [None if n.startswith("head.") else m for n, m in zip(ctx["names"], drawn)]
        sparse_opt = sparse.SparseSGDM(params, masks, lr=1e-3, momentum=0.9, weight_decay=1e-4)
        n_train = args.local_steps * args.batch_size
        # partial() binds this iteration's model and data now, not whatever the names hold when called
        t_dense = timeit(partial(local_train, model, dense_opt, train, shards[0], args, device),
                         repeats=args.repeats, device=device)
        t_sparse = timeit(partial(local_train, model, sparse_opt, train, shards[0], args, device),
                          repeats=args.repeats, device=device)
        evalset = train.subset(torch.arange(min(len(train), 8 * args.batch_size)))
        t_eval = timeit(partial(exp.evaluate, model, evalset, a, device), repeats=args.repeats, device=device)

        # ------------------------------------------------------------ one round: client compute vs the rest
        glob = P.clone(params)
        federated.plain_rounds(ctx, glob)                                           # warm-up
        splits = []
        for r in range(args.repeats):  # the engine's own clocks: the round, not building the task around it
            timing = federated.plain_rounds(ctx, glob, rounds=r + 2, start=r + 1)   # round r + 1 alone
            splits.append((timing["round_seconds"], timing["client_seconds"]))
        total, client = sorted(splits)[len(splits) // 2]
        other = total - client
        res = dict(train_img_s=n_train / t_dense.median_s, sparse_train_img_s=n_train / t_sparse.median_s,
                   eval_img_s=len(evalset) / t_eval.median_s, round_s=total, client_s=client,
                   other_share=other / total)
        results[arch] = res
        rows.append([arch, f"{args.image_size}", f"{res['train_img_s']:.0f}",
                     f"{res['sparse_train_img_s']:.0f}", f"{res['eval_img_s']:.0f}", f"{total:.2f}",
                     f"{client:.2f}", f"{1e3 * other:.1f}", f"{100 * other / total:.1f} %"])
    m = max(1, round(args.participation_rate * args.num_clients))
    print(f"device {device}, batch {args.batch_size}, J={args.local_steps}, K={args.num_clients}, "
          f"m={m} clients/round, {torch.get_num_threads()} threads")
    print(markdown_table(["model", "px", "train img/s (SGD)", "train img/s (SparseSGDM)", "eval img/s",
                          "round s", "client compute s", "other ms", "other share"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "clients_per_round": m,
                       "settings": vars(args), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    cli.run(main)
