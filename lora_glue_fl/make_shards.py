"""Split a GLUE training set over K clients and write the shard manifests fedavg_rounds.py reads.

    python lora_glue_fl/make_shards.py --quick                                  # embedded SST-2-like task
    python lora_glue_fl/make_shards.py --task_name sst2 --k 10 --mode iid --out_dir shards/sst2_iid_k10
    python lora_glue_fl/make_shards.py --task_name mrpc --data_dir ../shared/data/glue_mrpc --k 4 \\
        --mode category --category_key label --out_dir shards/mrpc_cat_k4
    python lora_glue_fl/make_shards.py --task_name sst2 --k 2 --mode category_overlap --category_key label \\
        --overlap_ratio 0.15 --seed 123 --out_dir shards/sst2_catov_k2       # the source's create_clients.py
    python lora_glue_fl/make_shards.py --task_name sst2 --k 4 --mode dirichlet --alpha 0.1 --min_per_label 10 \\
        --out_dir shards/sst2_dir0.1_k4

Modes: lora_glue_fl/glue_shards.py. Writes <out_dir>/client_<i>.json ({"dataset", "indices"}, i from 1),
summary.json and label_histograms.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import cli, flags
from lora_glue_fl import options


def get_args_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help, epilog=cli.examples(__doc__))
    options.add_task_arg(p)
    p.add_argument("--k", type=flags.POSITIVE_INT, default=10, help="number of clients")
    p.add_argument("--mode", choices=options.SHARD_MODES, default="iid", help="how to split (see the module doc)")
    flags.alias(p, "--partition", dest="mode", of="--mode", choices=options.SHARD_MODES)
    flags.alias(p, "--num-clients", dest="k", of="--k", type=flags.POSITIVE_INT)
    p.add_argument("--overlap_ratio", type=flags.Number(float, 0, 1, high_open=True), default=0.0,
                   help="overlap / category_overlap: fraction of each client's data shared with all, in [0, 1)")
    p.add_argument("--category_key", default=None,
                   help="category / category_overlap: label (or labels; STS-B scores binned) or genre (MNLI, STS-B)")
    p.add_argument("--alpha", type=flags.POSITIVE, default=1.0,
                   help="dirichlet: concentration of the per-label client proportions (0.1: strong skew, 1: mild)")
    p.add_argument("--min_per_label", type=flags.COUNT, default=1,
                   help="dirichlet: redraw until every client holds at least this many examples of every label")
    p.add_argument("--no_bin_stsb", dest="bin_stsb", action="store_false",
                   help="stratify / categorise STS-B by raw score instead of bins of width 0.2")
    p.add_argument("--seed", type=flags.SEED, default=42, help="shuffling seed")
    options.add_data_args(p)
    p.add_argument("--cache_dir", type=flags.FOLDER, default=None, help="Hugging Face datasets cache")
    p.add_argument("--out_dir", type=flags.FOLDER, default=None,
                   help="where the manifests go (default: shards/<task>_<mode>_k<K>)")
    p.add_argument("--quick", action="store_true", help="embedded data (the other flags still apply)")
    p.add_argument("--no_plot", action="store_true", help="skip label_histograms.png")
    return p


def plot_histograms(info: dict, path: Path) -> None:
    """Stacked bars: examples per client, coloured by label (STS-B: score bin)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hists = info["label_histograms"]
    labels = sorted({c for h in hists for c in h}, key=lambda c: float(c))
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(hists) + 2), 3))
    bottom, xs = [0] * len(hists), list(range(1, len(hists) + 1))
    for c in labels:
        ys = [h.get(c, 0) for h in hists]
        ax.bar(xs, ys, bottom=bottom, label=c)
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set(xlabel="client", ylabel="examples", title=f"{info['task']} {info['mode']} (K={len(hists)})")
    if len(labels) <= 12:
        ax.legend(title="label", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def client_splits(argv) -> tuple[argparse.Namespace, Path, dict]:
    """(flags, output folder, the split): every check made, nothing written (a grid checks its shards with it)."""
    args = cli.parse(get_args_parser(), argv)
    from lora_glue_fl import glue_shards, glue_tasks  # the data modules load torch: after parsing

    glue_tasks.resolve_task(args)
    out = Path(args.out_dir or f"shards/{args.task_name}_{args.mode}_k{args.k}")
    cli.check_out_dir(out, "--out_dir")  # the default too: never a file, a link loop or a run directory
    train = glue_tasks.load_glue(args.task_name, args.data, args.data_dir, args.cache_dir)["train"]
    info = glue_shards.make_client_splits(train, args.task_name, args.k, args.mode, args.seed, args.overlap_ratio,
                                          args.category_key, args.bin_stsb, args.alpha, args.min_per_label)
    return args, out, info


def main(argv=None) -> dict:
    args, out, info = client_splits(argv)
    from lora_glue_fl import glue_shards

    glue_shards.save_shard_manifests(out, info)
    if not args.no_plot:
        plot_histograms(info, out / "label_histograms.png")
    print(f"{args.task_name} {args.mode}: {args.k} clients, sizes {info['size_per_client']} -> {out}")
    return {"out_dir": str(out), "size_per_client": info["size_per_client"], "total_train": info["total_train"],
            "label_histograms": info["label_histograms"]}


if __name__ == "__main__":
    cli.run(main)
