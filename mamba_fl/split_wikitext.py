"""Split one raw WikiText file into training and validation files at article boundaries.

    python mamba_fl/split_wikitext.py --raw wikitext-2-raw/wiki.test.raw --out-dir data/wikitext2_test_split
    python mamba_fl/central.py --data-dir data/wikitext2_test_split --layers 1

For readers who have only one split of WikiText-2 (e.g. ``wiki.test.raw`` of the raw distribution): the file
is cut into articles at its top-level headings (`` = Title = `` lines), the first articles become
``wiki.train.raw`` and the last ``--valid-fraction`` of the articles (at least one) ``wiki.valid.raw``, both
in the raw format, so ``--data-dir`` reads them like the real splits. Contiguous, not shuffled: the
validation articles are ones the model never saw, as in the official splits. ``split.json`` records the
source file, its size and SHA-256, and the article counts.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common import cli
from mamba_fl.lmdata import _HEADING, SPLIT_FILES


def articles(lines: list[str]) -> list[list[str]]:
    """Lines grouped into articles, each starting at a top-level heading (text before the first heading is
    kept with the first article)."""
    out: list[list[str]] = [[]]
    seen_heading = False
    for line in lines:
        if _HEADING.match(line.rstrip("\n")):
            if seen_heading:
                out.append([])
            seen_heading = True
        out[-1].append(line)
    return out if out[0] else []


def split(raw: str, valid_fraction: float) -> tuple[str, str, int, int]:
    """(train text, valid text, train articles, valid articles)."""
    arts = articles(raw.splitlines(keepends=True))
    cli.check(len(arts) >= 2, f"found {len(arts)} article(s) (lines like ' = Title = '); need at least 2 to split")
    n_valid = min(len(arts) - 1, max(1, round(valid_fraction * len(arts))))
    cut = len(arts) - n_valid
    return "".join(sum(arts[:cut], [])), "".join(sum(arts[cut:], [])), cut, n_valid


def main(argv=None) -> dict:
    p = cli.ArgumentParser(description="Split a raw WikiText file into wiki.train.raw / wiki.valid.raw by article")
    p.add_argument("--raw", required=True, help="a raw WikiText file, e.g. wiki.test.raw")
    p.add_argument("--out-dir", required=True, help="folder to write wiki.train.raw, wiki.valid.raw and split.json")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="fraction of the articles (the last ones) to validate on")
    p.add_argument("--overwrite", action="store_true", help="replace existing split files in --out-dir")
    args = cli.parse(p, argv)
    cli.check(0.0 < args.valid_fraction < 1.0, f"--valid-fraction must be in (0, 1), got {args.valid_fraction}")
    src = Path(args.raw)
    cli.check(src.is_file(), f"--raw {src}: no such file")
    data = src.read_bytes()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise cli.UsageError(f"--raw {src} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    train, valid, n_train, n_valid = split(raw, args.valid_fraction)
    out = Path(args.out_dir)
    cli.check(not out.exists() or out.is_dir(), f"--out-dir {out} exists and is not a folder")
    targets = [out / SPLIT_FILES["train"], out / SPLIT_FILES["valid"]]
    cli.check(args.overwrite or not any(t.exists() for t in targets),
              f"{out} already holds a split; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    targets[0].write_text(train, encoding="utf-8")
    targets[1].write_text(valid, encoding="utf-8")
    info = {"source": str(src.resolve()), "source_bytes": len(data), "source_sha256": hashlib.sha256(data).hexdigest(),
            "valid_fraction": args.valid_fraction, "train_articles": n_train, "valid_articles": n_valid,
            "train_lines": train.count("\n"), "valid_lines": valid.count("\n")}
    (out / "split.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"{out}: {n_train} training and {n_valid} validation articles "
          f"({info['train_lines']} / {info['valid_lines']} lines)")
    return info


if __name__ == "__main__":
    cli.run(main)
