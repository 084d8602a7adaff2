"""Centralized baseline: one Mamba2 language model trained from scratch with AdamW on the whole training split
(or, with --holdout-fraction, on the blocks a federated arm's clients train on).

    python mamba_fl/central.py --layers 2 --quick
    python mamba_fl/central.py --model-config pure_ssm_4_layer --data wikitext2 --cache_dir data/cache

Each epoch visits every training block once in an order drawn from (seed, epoch), the last, smaller batch kept;
what each evaluation logs is in mamba_fl/README.md. --resume continues mid-epoch and reproduces the uninterrupted run.
"""
from __future__ import annotations

import functools
import math
import time

from common import cli, flags
from mamba_fl import options


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description="Centralized Mamba2 language model (the baseline)", add_help=add_help,
                           epilog=cli.examples(__doc__))
    p.presets = {"quick": options.MODEL_QUICK | {"max_steps": 64, "val_freq": 16}}  # defaults < --quick < YAML < flags
    options.add_model_args(p)
    options.add_data_args(p, batch_size=16, sharding=False)
    g = p.add_argument_group("training")
    g.add_argument("--n-epochs", type=flags.EPOCHS, default=1.0,
                   help="passes over the training split (fractions allowed)")
    g.add_argument("--max-steps", type=flags.POSITIVE_INT, default=None,
                   help="stop after this many steps (default: --n-epochs)")
    flags.alias(g, "--rounds", dest="max_steps", of="--max-steps (a centralized run's length, in steps)",
                type=flags.POSITIVE_INT)
    options.add_optimizer_args(g, who="the")
    g.add_argument("--holdout-fraction", type=flags.Number(float, 0, 1, high_open=True), default=0.0,
                   help="train only on the blocks --holdout-clients clients on contiguous shards keep after each "
                        "holds out this fraction of its own (the federated scripts' --holdout-fraction): the data "
                        "a federated comparison trains on (0: every block)")
    g.add_argument("--holdout-clients", type=flags.POSITIVE_INT, default=4,
                   help="the clients of --holdout-fraction (the federated arm's --num-clients)")
    g.add_argument("--val-freq", type=flags.POSITIVE_INT, default=10, help="steps between evaluations")
    options.add_eval_args(p, deltas_help="save .npz parameter snapshots and deltas (since the previous evaluation)")
    cli.add_run_args(p)
    p.config_legacy = options.config_legacy
    return p


def check_args(args) -> None:
    """The checks of its arguments alone (common.jobs: a grid checks its runs)."""
    from mamba_fl import federated

    federated.finish_args(args)


def main(argv=None) -> dict:
    args = cli.parse(get_args_parser(), argv)
    # the run's modules load once the arguments are parsed (--help and a usage error need none of them)
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from common import params, runlog, seed, shard
    from mamba_fl import federated, lmdata
    from mamba_fl import model as mmodel

    federated.finish_args(args)
    device = cli.resolve_device(args.device)
    mmodel.quiet_kernel_warnings()
    data = lmdata.load_lm_data(args, device)
    pool = torch.arange(data.train.shape[0])  # the blocks trained on
    if args.holdout_fraction > 0:  # those the federated arm's clients keep
        pool = torch.as_tensor(np.concatenate([lmdata.split_holdout(idx, args.holdout_fraction)[0] for idx in
                                               shard.contiguous(len(pool), args.holdout_clients)]))
    n = len(pool)
    per_epoch = math.ceil(n / args.batch_size)  # the last, smaller batch is kept
    total = args.max_steps or max(1, math.ceil(args.n_epochs * per_epoch))
    args.kernel_path = mmodel.select_kernels(device, args.kernels)
    name = args.run_name or runlog.run_name("central", args.model_config, b=args.batch_size, steps=total,
                                            lr=args.lr, sgd=args.optimizer == "sgd", data=lmdata.source_tag(args),
                                            quick=args.quick, s=args.seed)
    mmodel.check_memory(args, data.vocab_size, device, max(data.train.shape[0], data.valid.shape[0]))
    rd = runlog.RunDir(args.out_dir, name, args, kind="mamba_fl/central", resume=args.resume, device=device,
                       ignore_on_resume=federated.IGNORE_ON_RESUME, data=data.fingerprint)

    ctx, valid, refs, snaps = federated.build_run(args, data, device, rd)
    model, fwd, plist = ctx.model, ctx.forward_model, ctx.params
    opt = mmodel.make_optimizer(args, plist)
    step, tokens, best, prev_grad, last = 0, 0, float("inf"), None, {}
    stopper = mmodel.make_stopper(args)
    stateful = {"model": model, "opt": opt, "early_stop": stopper, "snapshots": snaps}  # None: not in this run
    state = rd.load_checkpoint()
    if state is not None:
        for k, x in stateful.items():
            if x is not None:
                x.load_state_dict(state[k])
        step, tokens, best, last = state["step"], state["tokens"], state["best"], state["last"]
        prev_grad = state["prev_grad"].to(device) if state["prev_grad"] is not None else None
        seed.set_rng_state(state["rng"])
    elif snaps is not None:
        snaps.write_server(plist, "step_000000")

    # running sums stay on the device: no host-device sync per step
    loss_sum, cos_sum, n_since, t_train = torch.zeros((), device=device), torch.zeros((), device=device), 0, 0.0
    bar = tqdm(total=total, initial=step, desc="central", disable=args.quiet)

    @functools.lru_cache(maxsize=1)
    def order(epoch):  # the epoch's order depends on (seed, epoch) only, so resume finds it again
        return pool[torch.randperm(n, generator=seed.client_generator(args.seed, epoch, 0, purpose="central"))]

    def grad_cosine(ps):  # cosine between consecutive steps' gradients: one flat copy per step, dot products on device
        nonlocal prev_grad
        grad = params.flatten([p.grad for p in ps], dtype=torch.float32)
        if prev_grad is not None:
            cos_sum.add_(torch.nn.functional.cosine_similarity(grad, prev_grad, dim=0))
        prev_grad = grad

    while step < total and not (stopper and stopper.stopped_at):
        epoch, pos = divmod(step, per_epoch)
        idx = order(epoch)[pos * args.batch_size:(pos + 1) * args.batch_size]  # the step's blocks are one batch
        t0 = time.perf_counter()
        loss_sum += federated.train_steps(fwd, opt, data.train, [idx], data.tokenizer.pad_token_id, device,
                                          adjust=grad_cosine)
        n_since += 1
        step += 1
        tokens += int(idx.numel()) * args.sequence_length
        t_train += time.perf_counter() - t0
        bar.update(1)

        if step % args.val_freq == 0 or step == total:
            row = {"step": step, "epoch": step / per_epoch, "tokens": tokens, "train_loss": loss_sum.item() / n_since,
                   "grad_cosine": cos_sum.item() / n_since} | federated.evaluate_global(ctx, valid)
            rd.check_finite(f"step {step}", training_loss=loss_sum, validation_loss=row["val_loss"], parameters=plist)
            best = min(best, row["val_ppl"])
            last = {k: v for k, v in row.items() if k != "sample"}
            rd.log(row)
            loss_sum.zero_()
            cos_sum.zero_()
            n_since = 0
            bar.set_postfix(val_ppl=f"{row['val_ppl']:.2f}")
            if snaps is not None:
                snaps.write_server(plist, f"step_{step:06d}")
            if stopper is not None:
                stopper.update(row["val_ppl"], step, plist)
            rd.save_checkpoint({"step": step, "tokens": tokens, "best": best, "last": last,
                                "prev_grad": prev_grad.cpu() if prev_grad is not None else None,
                                **{k: x.state_dict() for k, x in stateful.items() if x is not None}}, periodic=True)
    bar.close()
    extra = lmdata.reported_model(args, stopper, plist, data, fwd, device)  # the best-validation model, tested
    summary = federated.publish(rd, model, data, refs, {
        "method": "central", "config": args.model_config, "layers": args.layers, "steps_done": step,
        "final_val_ppl": last.get("val_ppl"), "final_val_loss": last.get("val_loss"),
        "final_val_ppl_word": last.get("val_ppl_word"), "best_val_ppl": best, "optimizer_steps": step,
        **refs, "words_per_token": data.words_per_token, "vocab_size": data.vocab_size, "kernel_path": args.kernel_path,
        "train_tokens": tokens, "train_seconds": round(t_train, 3), **extra,
    })
    rd.release()
    return summary


if __name__ == "__main__":
    cli.run(main)
