"""Centralized fine-tuning of a DINO ViT-S/16 on CIFAR-100: the upper bound of the federated runs.

    python vit_sparse_fl/train_centralized.py --quick
    python vit_sparse_fl/train_centralized.py --data cifar100 --data-dir data --weights dino --epochs 50

SGD with momentum, linear warmup then cosine decay per step, label smoothing, early stopping after --patience
epochs without a better validation accuracy; checkpoint.pt for --resume (epoch e draws from streams keyed by
(seed, e), so it reproduces the uninterrupted run) and the --keep-best best models as best_epochNNN.pt.
"""
from __future__ import annotations

import os
from pathlib import Path

from common import cli, flags
from vit_sparse_fl import options


def get_args_parser(add_help: bool = True) -> options.ArgumentParser:
    parser = options.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help,
                                    epilog=cli.examples(__doc__), quick=dict(epochs=4, warmup_epochs=1))
    cli.add_run_args(parser)
    g = parser.add_argument_group("schedule")
    g.add_argument("--epochs", type=flags.POSITIVE_INT, default=50, help="training epochs")
    flags.alias(g, "--rounds", dest="epochs", of="--epochs (a centralized run's length, in epochs)",
                type=flags.POSITIVE_INT)
    g.add_argument("--total-steps", type=flags.COUNT, default=0,
                   help="stop after exactly this many SGD steps (the schedule spans them; replaces --epochs): "
                        "to give centralized training the sample-gradient budget of a federated run, "
                        "rounds x clients per round x J (0: --epochs)")
    g.add_argument("--warmup-epochs", type=flags.COUNT, default=5, help="linear warmup epochs before the cosine decay")
    g.add_argument("--min-lr", type=options.NON_NEGATIVE, default=0.0, help="learning rate at the end of the cosine")
    g.add_argument("--patience", type=flags.COUNT, default=10,
                   help="stop after this many epochs without a better validation accuracy (0: never)")
    g.add_argument("--keep-best", type=flags.POSITIVE_INT, default=2, help="how many best-model checkpoints to keep")
    options.add_data_args(parser)
    options.add_model_args(parser, lr=0.01, weight_decay=5e-4)
    return parser


def keep_best(run_path, best: list[dict], epoch: int, acc: float, model, k: int) -> list[dict]:
    """Insert this epoch if it ranks in the top ``k`` by validation accuracy; delete what falls out."""
    import torch

    from common.checkpoint import atomic_path

    if len(best) >= k and acc <= best[-1]["val_accuracy"]:
        return best
    path = os.path.join(run_path, f"best_epoch{epoch:03d}.pt")
    with atomic_path(path) as tmp:  # the usual 0644, not tempfile's 0600
        torch.save({"model": model.state_dict(), "epoch": epoch, "val_accuracy": acc, "config": model.config()}, tmp)
    best = sorted(best + [{"epoch": epoch, "val_accuracy": acc, "path": path}], key=lambda b: -b["val_accuracy"])
    for gone in best[k:]:
        Path(gone["path"]).unlink(missing_ok=True)
    return best[:k]


def check_args(args) -> None:
    """Validation of everything that can be checked before loading data."""
    from vit_sparse_fl import experiment as exp

    exp.validate_model_args(args)
    cli.check(args.warmup_epochs < args.epochs, f"--warmup-epochs must be in [0, --epochs), got {args.warmup_epochs} "
                                                f"with --epochs {args.epochs}")
    cli.check(args.min_lr <= args.lr, f"--min-lr must be in [0, --lr], got {args.min_lr}")


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    # the run's modules load once the arguments are parsed (--help and a usage error need none of them)
    import torch
    from tqdm import tqdm

    from common import compiled, engine
    from common import seed as seeding
    from common.runlog import RunDir
    from vit_sparse_fl import data as cifar
    from vit_sparse_fl import experiment as exp

    check_args(args)

    seeding.seed_everything(args.seed)
    device = cli.resolve_device(args.device)
    train, val, test, num_classes = cifar.load_cifar100(args, device)
    data_fp = cifar.fingerprint(args, train, val, test)
    if args.arch != "encoder":
        exp.check_memory(args, num_classes, device, len(train))
    model, source = exp.build_model(args, num_classes, device)
    fwd = compiled.maybe_compile(model, args)  # forward passes only; `model` for parameters and state
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                foreach=True)                # same arithmetic as the loop, one call per op
    steps_per_epoch = max(1, len(train) // args.batch_size)
    epochs = args.epochs
    if args.total_steps:                                     # a step budget: the last epoch is cut short
        epochs = -(-args.total_steps // steps_per_epoch)
        cli.check(args.warmup_epochs < epochs, f"--warmup-epochs {args.warmup_epochs} leaves no steps "
                                               f"of the {args.total_steps}-step budget")
    total_steps = args.total_steps or epochs * steps_per_epoch
    data = "" if args.data == "synthetic" else f"_{args.data}"  # the embedded data keeps the short name
    run = RunDir(args.out_dir, args.run_name or f"centralized{data}_E{epochs}_lr{args.lr:g}"
                 f"{'_quick' if args.quick else ''}_s{args.seed}",
                 vars(args), resume=args.resume, kind="vit_sparse_fl/train_centralized", data=data_fp,
                 spans_length="the warm-up and cosine learning rate over --epochs")
    start, best_acc, stale, best = 0, -1.0, 0, []
    state = run.load_checkpoint() if args.resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best_acc, stale, best = state["epoch"], state["best_acc"], state["stale"], state["best"]
        seeding.set_rng_state(state["rng"])

    bar = tqdm(range(start, epochs), disable=args.quiet, desc="centralized", dynamic_ncols=True)
    stopped_early = False
    for epoch in bar:
        gen = seeding.client_generator(args.seed, epoch, 0, device, purpose="centralized")
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        stream = cifar.batches(train, args.batch_size, steps, gen, args.image_size, augment_train=not args.no_augment)
        loss_sum = torch.zeros((), device=device)  # read once per epoch: no host sync per step
        with seeding.client_rng(args.seed, epoch, 0, purpose="centralized_dropout"):
            for i, batch in enumerate(stream):   # one step per batch so the schedule is per step
                step = epoch * steps_per_epoch + i
                lr = engine.cosine_lr(step, total_steps, args.lr, args.warmup_epochs * steps_per_epoch, args.min_lr)
                loss = exp.train_steps(fwd, optimizer, [batch], label_smoothing=args.label_smoothing,
                                          device=device, lr=lr)
                loss_sum += loss
        ev = exp.evaluate(fwd, val, args, device)
        done = epoch * steps_per_epoch + steps
        run.check_finite(f"epoch {epoch + 1} (step {done})", training_loss=loss_sum, parameters=params)
        row = {"epoch": epoch + 1, "step": done, "lr": lr, "train_loss": loss_sum.item() / steps,
               "val_loss": ev["loss"], "val_accuracy": ev["accuracy"]}
        run.log(row)
        bar.set_postfix(val_acc=f"{ev['accuracy']:.3f}", loss=f"{row['train_loss']:.3f}")
        best_acc, stale = (ev["accuracy"], 0) if ev["accuracy"] > best_acc else (best_acc, stale + 1)
        best = keep_best(str(run.path), best, epoch + 1, ev["accuracy"], model, args.keep_best)
        run.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "epoch": epoch + 1, "best_acc": best_acc, "stale": stale, "best": best}, periodic=True)
        if args.patience and stale >= args.patience:
            stopped_early = True
            break

    rows = run.rows()
    final_test = exp.evaluate(fwd, test, args, device)
    exp.save_model(model, run.path, args,  # the final model
                   info={"method": "centralized", "epoch": len(rows), "test_accuracy": final_test["accuracy"]})
    # the test accuracy of the best epoch: the first epoch always enters ``best`` (--keep-best >= 1)
    model.load_state_dict(torch.load(best[0]["path"], map_location=device, weights_only=True)["model"])
    best_test = exp.evaluate(fwd, test, args, device)
    steps_done = rows[-1]["step"]
    summary = {"method": "centralized", "seed": args.seed, "weights": source, "epochs_done": len(rows),
               "steps_done": steps_done, "sample_gradients": steps_done * args.batch_size,
               "num_classes": num_classes, "chance_accuracy": 1.0 / num_classes, "test_images": final_test["n"],
               **exp.plateau(rows, "step", total_steps), "stopped_early": stopped_early,
               "final_val_accuracy": rows[-1]["val_accuracy"], "best_val_accuracy": best_acc,
               "best_epoch": best[0]["epoch"], "test_accuracy": best_test["accuracy"],
               "final_test_accuracy": final_test["accuracy"],
               "best_checkpoints": [os.path.basename(b["path"]) for b in best]}
    summary = run.write_summary(summary)
    exp.save_model(model, run.path, args, name="best_model",  # beside the final one
                   info={"method": "centralized", "epoch": best[0]["epoch"], "test_accuracy": best_test["accuracy"]})
    return exp.end_run(run, args, summary, "test accuracy (best epoch)",
                       f"final epoch's test accuracy {summary['final_test_accuracy']}")


if __name__ == "__main__":
    cli.run(main)
