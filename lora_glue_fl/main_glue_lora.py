"""Centralized LoRA fine-tuning of an encoder on one GLUE task (the federated runs' reference point).

    python lora_glue_fl/main_glue_lora.py --quick
    python lora_glue_fl/main_glue_lora.py --model_size base --task_name sst2 --do_train --do_eval \\
        --lora_r 8 --lora_alpha 8 --target_modules query value --num_train_epochs 3

LoRA on --target_modules and the classifier head train, the base frozen; evaluated after every epoch. Writes
<run dir>/adapter (peft format, or --adapter_output_dir) and <run dir>/model (the adapter merged in, with the
tokenizer). baseline_run.py trains every parameter instead. Neither --do_train nor --do_eval: both.
--resume: a finished run returns its summary; an unfinished one starts over (one training schedule).
"""
from __future__ import annotations

import argparse
import json
import math

from common import cli, flags
from lora_glue_fl import options


def get_args_parser(add_help: bool = True, lora: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    p.presets = {"quick": QUICK_LORA if lora else QUICK}
    options.add_task_arg(p)
    options.add_data_args(p)
    p.add_argument("--max_train_samples", type=flags.POSITIVE_INT, default=None,
                   help="train on the first N examples only")
    p.add_argument("--max_eval_samples", type=flags.POSITIVE_INT, default=None,
                   help="evaluate on the first N examples only")
    options.add_model_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--do_train", action="store_true", help="fine-tune on the training split")
    g.add_argument("--do_eval", action="store_true", help="evaluate on the validation split(s) (zero-shot if "
                                                          "not training)")
    g.add_argument("--per_device_train_batch_size", type=flags.POSITIVE_INT, default=32, help="training batch size")
    g.add_argument("--per_device_eval_batch_size", type=flags.POSITIVE_INT, default=32, help="evaluation batch size")
    g.add_argument("--learning_rate", type=flags.POSITIVE, default=2e-4 if lora else 2e-5,
                   help="AdamW learning rate, linear decay to 0" + (" (LoRA takes larger rates)" if lora else ""))
    g.add_argument("--num_train_epochs", type=flags.EPOCHS, default=3.0, help="epochs (may be fractional)")
    g.add_argument("--eval_every_epochs", type=flags.EPOCHS, default=1.0,
                   help="evaluate every this many epochs (and after the last step); with a selection split "
                        "(selection.tsv in --data_dir) that split is scored then and the validation split only "
                        "after the last step")
    flags.alias(g, "--rounds", dest="num_train_epochs", of="--num_train_epochs (a centralized run's length, in "
                "epochs)", type=flags.EPOCHS)
    if lora:
        g = options.add_lora_args(p, "adapter rank", "lora_alpha (scaling alpha / r)")
        g.add_argument("--adapter_output_dir", type=flags.FOLDER, default=None,
                       help="where the adapter goes (default <run dir>/adapter)")
    cli.add_run_args(p, seed=42)
    p.add_argument("--output_dir", dest="out_dir", default=argparse.SUPPRESS, help="the source's name for --out-dir")
    return p


def resolve_args(args) -> None:
    """Neither --do_train nor --do_eval: both (as args.json records them; ``common.jobs`` reads it too)."""
    if not (args.do_train or args.do_eval):
        args.do_train = args.do_eval = True


def check_args(args) -> None:
    """The checks of the arguments alone (``common.jobs`` checks a grid's runs with them)."""
    from lora_glue_fl import checks, glue_tasks

    checks.common_args(args)
    glue_tasks.resolve_task(args)


def run(args, lora: bool = True) -> dict:
    """Train (LoRA or full) and/or evaluate; returns the summary."""
    # the run's modules load once the arguments are parsed (--help and a usage error need none of them)
    from tqdm.auto import tqdm

    from common import checkpoint, compiled, export, report, runlog
    from common import seed as seeding
    from lora_glue_fl import adapters, checks, glue_tasks, modeling

    resolve_args(args)
    check_args(args)
    if lora and args.adapter_output_dir:
        cli.check_out_dir(args.adapter_output_dir, "--adapter_output_dir")
    task = glue_tasks.resolve_task(args)
    device = cli.resolve_device(args.device)
    name = args.run_name or runlog.run_name("central_lora" if lora else "full_ft", args.task_name,
                                            checks.source_tag(args), r=args.lora_r if lora else None,
                                            e=args.num_train_epochs, lr=args.learning_rate, quick=args.quick,
                                            s=args.seed)
    rd = runlog.RunDir(args.out_dir, name, args, kind="lora_glue_fl/main_glue_lora", resume=args.resume, device=device)
    done = rd.load_checkpoint()  # saved once, after the model: a run stopped before it starts over
    if done is not None and done.get("finished"):
        if (rd.path / runlog.SUMMARY_FILE).is_file():
            return json.loads((rd.path / runlog.SUMMARY_FILE).read_text())
        if "summary" in done:  # stopped between its last checkpoint and its summary
            return rd.write_summary(done["summary"])

    seeding.seed_everything(args.seed)
    if args.quiet:
        modeling.quiet_hf()
    splits = glue_tasks.load_glue(args.task_name, args.data, args.data_dir, args.cache_dir)
    train = splits["train"].head(args.max_train_samples)
    rd.set_data(checks.fingerprint(args.task_name, args.data, args.data_dir, {**splits, "train": train}))
    tokenizer = modeling.build_tokenizer(args, train)
    model = modeling.build_model(args, tokenizer, task.num_labels, args.seed, train)
    if lora:
        checks.rank_fits(model, args.lora_r, "--lora_r")
    types = modeling.uses_token_types(model)
    # the selection split is tracked every evaluation, the validation split then scored once, at the end
    evals, eval_enc, select, select_enc = modeling.encode_evals(tokenizer, splits, task, args, types)
    rd.claim()  # every input is validated: from here on the run directory is this run's
    if lora:
        base_path = modeling.adapter_base(args, rd, model, tokenizer)
        model = modeling.attach_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.target_modules,
                                     args.train_pooler, seed=seeding.stream_seed(args.seed, "lora-init"))
    model.to(device)
    fwd = compiled.maybe_compile(model, args)  # forward passes only; `model` for parameters and saving
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    if not args.quiet:
        print(f"{modeling.model_id(args)} | trainable params: {n_train:,} / {n_total:,}")

    main_metric, history = task.main_metric, []
    if args.do_train:
        train_enc = modeling.encode(tokenizer, train, args.max_seq_length, types)
        per_epoch = math.ceil(len(train) / args.per_device_train_batch_size)
        steps = max(1, math.ceil(args.num_train_epochs * per_epoch))
        bar = tqdm(total=steps, desc="steps", disable=args.quiet)  # train_local's step count

        def on_epoch(epoch, loss):
            rd.check_finite(f"epoch {round(epoch, 4)}", training_loss=loss,
                            parameters=[p for p in model.parameters() if p.requires_grad])
            row = {"epoch": round(epoch, 4), "train_loss": loss}
            if select_enc is not None:
                row.update(modeling.evaluate(args.task_name, fwd, select_enc, device, args.per_device_eval_batch_size,
                                             prefix=modeling.SELECTION_PREFIX))
            if args.do_eval and (select_enc is None or round(epoch * per_epoch) == steps):
                row.update(modeling.evaluate(args.task_name, fwd, eval_enc, device, args.per_device_eval_batch_size))
                bar.set_postfix({main_metric: f"{row[main_metric]:.4f}"})
            rd.log(row)
            history.append(row)

        modeling.train_local(model, train_enc, range(len(train)), epochs=args.num_train_epochs,
                             batch_size=args.per_device_train_batch_size, lr=args.learning_rate, seed=args.seed,
                             round_idx=0, client=0, device=device, on_epoch=on_epoch, forward=fwd,
                             on_step=lambda: bar.update(1), eval_period=args.eval_every_epochs)
        bar.close()
        if lora:
            out = args.adapter_output_dir or rd.artifact("adapter")
            adapters.save(adapters.from_model(model), out, base_path)
    elif args.do_eval:  # zero-shot
        row = {"epoch": 0, **modeling.evaluate(args.task_name, fwd, eval_enc, device, args.per_device_eval_batch_size)}
        rd.log(row)
        history.append(row)

    final = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
    chooser = modeling.SELECTION_PREFIX + main_metric if select_enc is not None else main_metric
    best = max((h for h in history if chooser in h), key=lambda h: h[chooser], default={})
    summary = {"task": args.task_name, "method": "central_lora" if lora else "full_finetune",
               "model": modeling.model_id(args), "trainable_params": n_train, "total_params": n_total,
               "train_examples": len(train), "main_metric": main_metric, "final": final,
               **glue_tasks.baselines(args.task_name, train.label, evals, select),
               "best": {"epoch": best.get("epoch"), chooser: best.get(chooser)}}
    if args.do_train:  # <run>/model: AutoModelForSequenceClassification.from_pretrained reads it
        info = {"method": summary["method"], "task": args.task_name, "final": final}
        export.save_model_dir(rd.path, export.merged(model), tokenizer, info=info)
    rd.save_checkpoint({"finished": True, "summary": checkpoint.round_trip_json(summary)})
    summary = rd.write_summary(summary)
    report.print_ending(rd.path, f"final validation {main_metric}", final.get(main_metric),
                        {"majority baseline": summary["majority"].get(main_metric)},
                        scored=modeling.scored(splits, evals, task),
                        figures=f"python plots/plot_lora_glue.py --runs {args.out_dir}",
                        loader="AutoModelForSequenceClassification.from_pretrained" if args.do_train else None)
    rd.release()
    return summary


# --quick: tiny model, short sequences, few examples (defaults < --quick < YAML < command line)
QUICK = dict(model_size="tiny", max_seq_length=48, num_train_epochs=1.0, max_train_samples=240, max_eval_samples=64,
             tokenizer_vocab_size=1000)
QUICK_LORA = QUICK | dict(lora_r=4, lora_alpha=4.0)


def main(argv=None) -> dict:
    return run(cli.parse(get_args_parser(), argv), lora=True)


if __name__ == "__main__":
    cli.run(main)
