"""Split raw WikiText files into training, validation (and test) files at article boundaries, for ``--data-dir``.

    python mamba_fl/split_wikitext.py --raw wikitext2_tokenized/valid.txt wikitext2_tokenized/test.txt \\
        --valid-fraction 0.1 --test-fraction 0.1 --shuffle-seed 0 --out-dir data/wikitext2_real
    python mamba_fl/central.py --data-dir data/wikitext2_real --layers 1

Articles start at top-level headings (`` = Title = `` lines). Without ``--shuffle-seed`` the cut is contiguous (the
last articles validate, the very last test); with it, the articles are dealt out in a seeded random order (each
split keeps the files' order). ``split.json`` records each source file (size, SHA-256) and every split's titles.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common import cli, flags, runlog


def title(article: list[str]) -> str:
    from mamba_fl.lmdata import _HEADING

    return next((line.strip().strip("=").strip() for line in article if _HEADING.match(line.rstrip("\n"))), "")


def split(arts: list[list[str]], valid_fraction: float, test_fraction: float, shuffle_seed: int | None) -> dict:
    """{split: indices of its articles, in the files' order}: at least one article in every split asked for."""
    import numpy as np

    n = len(arts)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_valid = max(1, round(valid_fraction * n))
    cut = n - n_valid - n_test
    cli.check(cut >= 1, f"found {n} article(s) (lines like ' = Title = '); need at least {n_valid + n_test + 1} "
                        "for these fractions")
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    parts = {"train": order[:cut], "valid": order[cut:cut + n_valid], "test": order[cut + n_valid:]}
    return {k: sorted(int(i) for i in v) for k, v in parts.items() if len(v)}


def main(argv=None) -> dict:
    p = cli.ArgumentParser(description="Split raw WikiText files into wiki.train.raw / wiki.valid.raw "
                                       "(/ wiki.test.raw) by article", epilog=cli.examples(__doc__))
    p.add_argument("--raw", required=True, nargs="+",
                   help="raw WikiText files (e.g. wiki.test.raw, or the tokenized valid and test files); their "
                        "articles are pooled in this order")
    p.add_argument("--out-dir", type=flags.FOLDER, required=True, help="folder to write the split files and split.json")
    p.add_argument("--valid-fraction", type=flags.Number(float, 0, 1, low_open=True, high_open=True), default=0.1,
                   help="fraction of the articles to validate on")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="fraction of the articles held out as wiki.test.raw (0: no test file)")
    p.add_argument("--shuffle-seed", type=flags.SEED, default=None,
                   help="deal the articles to the splits in this seed's random order (default: contiguous, the "
                        "last articles validate)")
    p.add_argument("--overwrite", action="store_true", help="replace existing split files in --out-dir")
    args = cli.parse(p, argv)
    from mamba_fl.lmdata import SPLIT_FILES, TEST_FILE, articles  # the data module loads torch: after parsing

    cli.check(0.0 <= args.test_fraction < 1.0 - args.valid_fraction,
              f"--test-fraction must be in [0, 1 - --valid-fraction), got {args.test_fraction}")
    arts, sources = [], []
    for name in args.raw:
        src = Path(name)
        cli.check(src.is_file(), f"--raw {src}: no such file")
        data = src.read_bytes()
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise cli.UsageError(f"--raw {src} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        found = articles(raw.splitlines(keepends=True))
        arts += found
        sources.append({"file": runlog.portable(str(src.resolve())), "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(), "articles": len(found)})
    cli.check(len(arts) >= 2, f"found {len(arts)} article(s) (lines like ' = Title = '); need at least 2 to split")
    parts = split(arts, args.valid_fraction, args.test_fraction, args.shuffle_seed)
    files = SPLIT_FILES | {"test": TEST_FILE}
    out = Path(args.out_dir)
    cli.check(not out.exists() or out.is_dir(), f"--out-dir {out} exists and is not a folder")
    cli.check(args.overwrite or not any((out / f).exists() for f in files.values()),
              f"{out} already holds a split; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / TEST_FILE).unlink(missing_ok=True)  # an --overwrite without a test split leaves no old one behind
    info = {"sources": sources, "valid_fraction": args.valid_fraction, "test_fraction": args.test_fraction,
            "shuffle_seed": args.shuffle_seed}
    for part, idx in parts.items():
        text = "".join(line for i in idx for line in arts[i])
        (out / files[part]).write_text(text, encoding="utf-8")
        info |= {f"{part}_articles": len(idx), f"{part}_lines": text.count("\n"), f"{part}_words": len(text.split()),
                 f"{part}_titles": [title(arts[i]) for i in idx]}
    (out / "split.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"{out}: " + ", ".join(f"{info[f'{k}_articles']} {k} articles ({info[f'{k}_words']:,} words)"
                                 for k in parts))
    return info


if __name__ == "__main__":
    cli.run(main)
